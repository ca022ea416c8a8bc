"""Discovery: waiting for a buffer to be registered, listing and attaching by labels.

Exporters and waiting importers are separate processes (``broker.spawn_code``);
the broker waits for the registration itself, so a waiting attach returns as
soon as the buffer is there and asks only once.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

import bufbroker
from bufbroker.v1 import broker_pb2 as pb
from tests.conftest import json_line
from tests.integration.test_operations import _free_port

# Prints {"waiting": t} once connected, then attaches (TARGET or LABELS, waiting WAIT s) and prints
# {"attached": buffer id, "at": t, "head": its first bytes} or {"error": class, "message", "at": t}.
# VIA "call-channel" sends the attach on a call channel instead of the SDK's gRPC call.
WAITING_IMPORTER = r"""
import json, sys, time
import bufbroker
from bufbroker.v1 import broker_pb2 as pb

with bufbroker.connect(sys.argv[1]) as session:
    print(json.dumps({"waiting": time.monotonic()}), flush=True)
    try:
        if VIA == "call-channel":
            request = pb.AttachRequest(buffer_name=TARGET, wait_seconds=WAIT, labels=LABELS or {})
            response, _ = session._transport.fast_call("Attach", request)
            at, buffer_id, head = time.monotonic(), response.buffer_id, ""
            session.call("Detach", pb.DetachRequest(attachment_id=response.attachment_id))
        else:
            attachment = session.attach(TARGET or None, labels=LABELS, wait=WAIT)
            at, buffer_id = time.monotonic(), attachment.buffer_id
            with attachment.map() as mapping:
                head = b"".join(bytes(v) for v in mapping.views())[:16].rstrip(b"\0").decode()
            attachment.detach()
    except bufbroker.BrokerError as error:
        print(json.dumps({"error": type(error).__name__, "message": error.message, "at": time.monotonic()}), flush=True)
    else:
        print(json.dumps({"attached": buffer_id, "at": at, "head": head}), flush=True)
    sys.stdin.read()
"""

# Registers BUFFERS [(name, labels)] in order, each holding its name, prints
# {"ids": [...], "at": t} (t: after the last registration), then waits for stdin to close.
EXPORTER = r"""
import json, sys, time
import bufbroker

with bufbroker.connect(sys.argv[1]) as session:
    ids = []
    for name, labels in BUFFERS:
        buffer = session.export(4096, name=name or None, labels=labels)
        view = buffer.memoryview()
        view[: len(name)] = name.encode()
        view.release()
        ids.append(buffer.id)
    print(json.dumps({"ids": ids, "at": time.monotonic()}), flush=True)
    sys.stdin.read()
"""


def waiting_importer(broker, target="", wait=10.0, labels=None, via="grpc"):
    code = f"TARGET, WAIT, LABELS, VIA = {target!r}, {wait!r}, {labels!r}, {via!r}\n" + WAITING_IMPORTER
    process = broker.spawn_code(code)
    assert "waiting" in json_line(process)
    return process


def exporter(broker, *buffers: tuple[str, dict]):
    process = broker.spawn_code(f"BUFFERS = {list(buffers)!r}\n" + EXPORTER)
    return process, json_line(process)


def rpc_count(port: int, service: str, method: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for labels, value in re.findall(r"^bufbroker_rpcs_total\{(.*)\} (\S+)$", text, re.MULTILINE):
        if f'service="{service}"' in labels and f'method="{method}"' in labels:
            total += float(value)
    return total


# --- waiting for a name ----------------------------------------------------------------


def test_attach_with_wait_returns_as_the_exporter_registers_and_asks_once(broker_factory):
    port = _free_port()
    broker = broker_factory("--http", f"127.0.0.1:{port}")
    grpc_attaches = rpc_count(port, "bufbroker.v1.Broker", "Attach")
    channel_attaches = rpc_count(port, "bufbroker.v1.CallChannel", "Attach")
    importer = waiting_importer(broker, "cam0/frame", wait=10)
    time.sleep(0.5)
    assert importer.poll() is None
    _, registered = exporter(broker, ("cam0/frame", {}))
    attached = json_line(importer)
    assert attached.get("attached") == registered["ids"][0], attached
    assert attached["head"] == "cam0/frame"
    # Woken by the registration itself: no poll interval between the two.
    assert abs(attached["at"] - registered["at"]) < 0.3, attached["at"] - registered["at"]
    # One Attach, answered when the buffer came: no retries on NotFound.
    assert rpc_count(port, "bufbroker.v1.Broker", "Attach") - grpc_attaches == 1
    assert rpc_count(port, "bufbroker.v1.CallChannel", "Attach") - channel_attaches == 0


def test_attach_with_wait_on_a_call_channel_returns_as_the_exporter_registers(broker):
    importer = waiting_importer(broker, "cam1/frame", wait=10, via="call-channel")
    time.sleep(0.5)
    _, registered = exporter(broker, ("cam1/frame", {}))
    attached = json_line(importer)
    assert attached.get("attached") == registered["ids"][0], attached
    assert abs(attached["at"] - registered["at"]) < 0.3, attached["at"] - registered["at"]


def test_a_wait_that_runs_out_is_not_found_saying_how_long_it_waited(broker):
    with broker.connect() as session:
        started = time.monotonic()
        with pytest.raises(bufbroker.NotFound) as raised:
            session.attach("nobody", wait=0.5)
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 2.0
        assert "no buffer named 'nobody'" in raised.value.message
        assert "waited 0.5 s" in raised.value.message
        started = time.monotonic()
        with pytest.raises(bufbroker.NotFound) as at_once:
            session.attach("nobody")
        assert time.monotonic() - started < 0.3 and "waited" not in at_once.value.message


@pytest.mark.parametrize("via", ["grpc", "call-channel"])
@pytest.mark.parametrize("wait", [301.0, -1.0])
def test_a_wait_beyond_the_limit_is_refused_naming_it(broker, via, wait):
    with broker.connect() as session:
        session.export(4096, name="there")  # refused even when the buffer exists
        request = pb.AttachRequest(buffer_name="there", wait_seconds=wait)
        started = time.monotonic()
        with pytest.raises(bufbroker.InvalidArgument) as raised:
            if via == "grpc":
                session.call("Attach", request)
            else:
                session._transport.fast_call("Attach", request)
        assert time.monotonic() - started < 1.0
        assert "0 to 300 s" in raised.value.message and f"{wait:g}" in raised.value.message
        with pytest.raises(bufbroker.InvalidArgument):
            session.attach("there", wait=wait)


def test_the_broker_stays_responsive_while_attaches_wait(broker):
    with broker.connect() as exporting, broker.connect() as importing:
        exporting.export(4096, name="here")
        waiters = [
            waiting_importer(broker, "late/grpc", wait=20),
            waiting_importer(broker, "late/channel", wait=20, via="call-channel"),
        ]
        slowest, until = 0.0, time.monotonic() + 1.5  # from the waiters' first moments on
        while time.monotonic() < until:
            started = time.monotonic()
            attachment = importing.attach("here", map=True)
            attachment.detach()
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.5, f"an attach+map took {slowest:.3f} s while others waited"
        assert all(w.poll() is None for w in waiters)
        _, registered = exporter(broker, ("late/grpc", {}), ("late/channel", {}))
        results = [json_line(w) for w in waiters]
    assert [r.get("attached") for r in results] == registered["ids"], results


def test_an_importer_that_dies_while_waiting_leaves_nothing_behind(broker):
    for via in ("grpc", "call-channel"):
        importer = waiting_importer(broker, "never", wait=30, via=via)
        time.sleep(0.2)
        importer.kill()
        importer.wait()
    # The fixture checks the broker's fds and ledger at teardown; the broker still answers.
    with broker.connect() as session:
        session.export(4096, name="never")
        assert [b.name for b in session.buffers(name="never")] == ["never"]


# --- labels ------------------------------------------------------------------------------

CAMERAS = (
    ("cam0-frame", {"camera": "0", "kind": "frame"}),
    ("cam0-ctl", {"camera": "0", "kind": "ctl"}),
    ("cam1-frame", {"camera": "1", "kind": "frame"}),
)


def test_buffers_lists_only_those_with_every_label(broker):
    exporter(broker, *CAMERAS)
    with broker.connect() as session:

        def names(**query) -> list[str]:
            return sorted(b.name for b in session.buffers(**query))

        assert names() == ["cam0-ctl", "cam0-frame", "cam1-frame"]
        assert names(labels={"camera": "0"}) == ["cam0-ctl", "cam0-frame"]
        assert names(labels={"camera": "0", "kind": "frame"}) == ["cam0-frame"]
        assert names(labels={"kind": "frame"}) == ["cam0-frame", "cam1-frame"]
        assert names(labels={"camera": "2"}) == []
        assert names(name="cam1-frame", labels={"camera": "1"}) == ["cam1-frame"]
        assert names(name="cam1-frame", labels={"camera": "0"}) == []


def test_attach_by_labels_needs_exactly_one_match(broker):
    _, registered = exporter(broker, *CAMERAS)
    with broker.connect() as session:
        one = session.attach(labels={"camera": "1"})
        assert one.buffer_id == registered["ids"][2]
        with one.map() as mapping:
            assert b"".join(bytes(v) for v in mapping.views()).startswith(b"cam1-frame")
        one.detach()
        with pytest.raises(bufbroker.FailedPrecondition) as several:
            session.attach(labels={"kind": "frame"})
        message = several.value.message
        assert "2 buffers carry the labels {kind=frame}" in message
        assert "'cam0-frame'" in message and "'cam1-frame'" in message and "cam0-ctl" not in message
        with pytest.raises(bufbroker.NotFound) as none:
            session.attach(labels={"camera": "9"})
        assert "{camera=9}" in none.value.message
        with pytest.raises(bufbroker.InvalidArgument, match="not both"):
            session.call("Attach", pb.AttachRequest(buffer_name="cam0-ctl", labels={"camera": "0"}))
        with pytest.raises(TypeError):
            session.attach("cam0-ctl", labels={"camera": "0"})
        assert session.stats().attachments == 0


def test_attach_by_labels_waits_for_a_matching_buffer(broker):
    importer = waiting_importer(broker, labels={"camera": "7"}, wait=10)
    time.sleep(0.3)
    _, registered = exporter(broker, ("other", {"camera": "6"}), ("wanted", {"camera": "7"}))
    attached = json_line(importer)
    assert attached.get("attached") == registered["ids"][1], attached
    assert attached["head"] == "wanted"
