"""Bounded work per request: one request must not freeze the broker's event loop.

Each attack runs against a real broker while an honest client (its own
process) attaches and maps beside it in a loop. Every attack must be refused
with the name of the setting that bounds it, no honest attach+map may wait
250 ms or more, and the broker's fd count returns to its baseline.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
import pytest

import bufbroker
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mpb
from tests.adversarial.honest import HONEST_IMPORTER
from tests.conftest import BrokerProcess
from tests.raw_client import RawClient, call_on

HONEST_LIMIT = 0.250  # seconds, for one attach+map
ATTACK_SECONDS = 1.5
GIB = 1 << 30


def beside_an_honest_client(
    broker: BrokerProcess, attack: Callable[[], str], setting: str, reliability=None, what: str = ""
) -> int:
    """Run ``attack`` (it returns the refusal's text) again and again beside the honest client.

    With ``reliability``, the figures go to docs/RELIABILITY.md as ``what``.
    """
    honest = broker.spawn_code(HONEST_IMPORTER)
    assert honest.stdout.readline().strip() == "ready"
    attacks = 0
    deadline = time.monotonic() + ATTACK_SECONDS
    while time.monotonic() < deadline:
        refusal = attack()
        assert f"setting {setting}" in refusal, refusal
        attacks += 1
    out, _ = honest.communicate("stop", timeout=30)  # its stdin closes: it stops
    assert honest.returncode == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["count"] > 10, f"the honest client got too few attach+maps done: {result}"
    assert result["longest"] < HONEST_LIMIT, (
        f"an honest attach+map waited {result['longest'] * 1000:.0f} ms during {attacks} attacks ({setting})"
    )
    if reliability is not None:
        reliability.record(
            "bounded requests",
            cases=attacks,
            faults=attacks,
            note=f"{what}: {attacks} refused naming {setting}; honest attach+map longest "
            f"{result['longest'] * 1000:.1f} ms over {result['count']}",
        )
    return attacks


def back_to_baseline(broker: BrokerProcess) -> None:
    """Once the attacker is gone, the broker holds the fds it held before."""
    assert broker.wait_for_fds(broker.baseline_fds) == broker.baseline_fds, "broker fds did not return to baseline"


def rpc_refusal(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    except bufbroker.BrokerError as error:
        return f"{type(error).__name__}: {error}"
    pytest.fail("the attack was accepted")


def test_an_800_by_800_explain_is_refused_beside_an_honest_client(broker: BrokerProcess, reliability):
    request = pb.ExplainRequest(
        offers=[mpb.Offer(segments=mpb.SegmentsOffer()) for _ in range(800)],
        accept=[mpb.Match(udmabuf=mpb.UdmabufMatch()) for _ in range(800)],
    )
    assert len(request.SerializeToString()) < 16384  # a few KB of request
    with RawClient(broker.socket_dir) as raw:

        def attack() -> str:
            refusal = rpc_refusal(lambda: raw.call("Explain", request))
            assert refusal.startswith("INVALID_ARGUMENT: 800 accept entries; at most 32"), refusal
            return refusal

        beside_an_honest_client(broker, attack, "max_accept_entries", reliability, "800 x 800 Explain over gRPC (8 KB)")
    back_to_baseline(broker)


def test_an_800_entry_attach_on_a_call_channel_is_refused_beside_an_honest_client(broker: BrokerProcess, reliability):
    with broker.connect() as exporter, RawClient(broker.socket_dir) as raw:
        exporter.export(4096, name="target", offers=["segments"] * 30)
        channel = raw.open_call_channel()
        request = pb.AttachRequest(
            buffer_name="target", accept=[mpb.Match(udmabuf=mpb.UdmabufMatch()) for _ in range(800)]
        )

        def attack() -> str:
            reply, fds = call_on(channel, "attach", request)
            assert not fds and reply.HasField("error"), reply
            return f"{reply.error.code}: {reply.error.message}"

        try:
            beside_an_honest_client(
                broker, attack, "max_accept_entries", reliability, "800-entry Attach on a call channel"
            )
        finally:
            channel.close()
    back_to_baseline(broker)


def test_huge_label_sets_are_refused_beside_an_honest_client(broker: BrokerProcess, reliability):
    many = {f"k{n}": "v" for n in range(10_000)}
    heavy = {f"k{n}": "x" * 16_000 for n in range(60)}
    with broker.connect() as attacker:
        turn = iter(range(10**9))

        def attack() -> str:
            if next(turn) % 2:
                refusal = rpc_refusal(lambda: attacker.export(4096, labels=heavy))
                assert "setting max_label_bytes" in refusal, refusal
                return refusal
            return rpc_refusal(lambda: attacker.export(4096, labels=many))

        # max_labels, max_label_bytes
        beside_an_honest_client(broker, attack, "max_label", reliability, "10,000 labels / 60 x 16 KB labels")
        assert attacker.stats().buffers == 0
    back_to_baseline(broker)


def test_a_name_with_a_bidi_override_is_refused_saying_which_character(broker: BrokerProcess, reliability):
    with broker.connect() as attacker:

        def attack() -> str:
            refusal = rpc_refusal(lambda: attacker.export(4096, name="invoice\u202efdp.exe"))
            assert "U+202E" in refusal and "at index 7" in refusal, refusal
            long = rpc_refusal(lambda: attacker.export(4096, name="n" * 100_000))
            assert "100000 characters; at most 256 (setting max_name_length)" in long, long
            return long

        beside_an_honest_client(
            broker, attack, "max_name_length", reliability, "bidi-override and 100,000-character names"
        )
    back_to_baseline(broker)


def test_a_4_gib_sparse_buffer_attached_by_a_copy_importer_is_refused(broker: BrokerProcess, reliability):
    fd = os.memfd_create("sparse", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 4 * GIB)  # sparse: no page is ever touched
        halves = bufbroker.Segments(extents=[bufbroker.Extent(0, 2 * GIB), bufbroker.Extent(2 * GIB, 2 * GIB)])
        with broker.connect() as exporter, broker.connect() as importer:
            exporter.export(fd=fd, name="huge", offers=[halves])
            rss_before = _rss(broker.pid)

            def attack() -> str:
                copy = bufbroker.Memfd(allow_copy=True)
                refusal = rpc_refusal(lambda: importer.attach("huge", accept=[copy], map=True))
                assert refusal.startswith("ResourceExhausted"), refusal
                assert f"copy of {4 * GIB} bytes; at most {64 << 20}" in refusal, refusal
                return refusal

            beside_an_honest_client(
                broker, attack, "max_copy_bytes", reliability, "copy-importer maps of a 4 GiB sparse buffer"
            )
            assert importer.stats().attachments == 0, "the refused attach+map left its attachment behind"
            assert _rss(broker.pid) < rss_before + (64 << 20), "the broker copied the buffer anyway"
    finally:
        os.close(fd)
    back_to_baseline(broker)


def test_max_copy_bytes_is_the_operators_to_set(broker_factory):
    broker = broker_factory("--max-copy-bytes", str(4 << 20))
    copy = bufbroker.Memfd(allow_copy=True)
    with broker.connect() as exporter, broker.connect() as importer:
        for name, half in (("fits", 2 << 20), ("over", 4 << 20)):
            extents = [bufbroker.Extent(0, half), bufbroker.Extent(half, half)]
            exporter.export(2 * half, name=name, offers=[bufbroker.Segments(extents=extents)])
        attachment = importer.attach("fits", accept=[copy], map=True)
        assert attachment.map_type == "memfd" and attachment.mapping.size == 4 << 20
        attachment.mapping.close()
        attachment.detach()
        refusal = rpc_refusal(lambda: importer.attach("over", accept=[copy], map=True))
        assert f"copy of {8 << 20} bytes; at most {4 << 20} (setting max_copy_bytes)" in refusal, refusal
    back_to_baseline(broker)


STRANGER = """
import json, os, sys
import bufbroker, bufbroker.attachment, bufbroker.buffers, encodings.idna  # before the uid drop
os.setgroups([]); os.setgid(0); os.setuid(65534)  # group 0: the socket dir
out = {}
with bufbroker.connect(sys.argv[1], reconnect=False) as stranger:
    for name in ("private-cam", "no-such-cam"):
        try:
            stranger.explain(name, accept=["memfd"])
            out[name] = "answered"
        except bufbroker.BrokerError as error:
            out[name] = f"{type(error).__name__}: {error}"
print(json.dumps(out), flush=True)
"""


def test_explain_of_a_buffer_the_asker_may_not_see_looks_like_a_missing_one(open_base, broker_factory):
    broker = broker_factory(base=open_base)
    with broker.connect() as exporter:
        exporter.export(4096, name="private-cam", allow=["uid:4242"])
        if os.geteuid() == 0:  # root sees every buffer: ask as nobody
            child = broker.spawn_code(STRANGER)
            out, _ = child.communicate(timeout=30)
            assert child.returncode == 0, out
            answers = json.loads(out.strip().splitlines()[-1])
        else:  # the same uid, but neither the exporter nor on its allow list
            with broker.connect() as stranger:
                answers = {
                    name: rpc_refusal(lambda name=name: stranger.explain(name, accept=["memfd"]))
                    for name in ("private-cam", "no-such-cam")
                }
    hidden, missing = answers["private-cam"], answers["no-such-cam"]
    assert hidden.startswith("NotFound"), hidden
    assert hidden == missing.replace("no-such-cam", "private-cam")
    assert "uid:4242" not in hidden and "allow" not in hidden


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_http_explain_uses_the_same_settings(broker_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = broker_factory("--http", f"127.0.0.1:{port}", "--max-accept-entries", "4")

    def explain(entries: int) -> tuple[int, dict]:
        body = json.dumps({"offers": ["memfd"], "accept": ["memfd"] * entries}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/explain", body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    status, answer = explain(4)
    assert status == 200 and answer["map_type"] == "memfd"
    status, problem = explain(5)
    assert status == 400 and "5 accept entries; at most 4 (setting max_accept_entries)" in json.dumps(problem)
    back_to_baseline(broker)
