"""kill -9 of an exporter, an importer and the broker at protocol steps.

After each: the broker (if it survived) is back at its fd count within a
second, other clients are unaffected, and no exported byte is lost to an
importer that still holds a mapping. (tests/integration/test_lifecycle.py
covers an importer killed after attach / with fds in flight / mapped, and
test_restart.py a broker restart with reconnecting clients.)
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import bufbroker
from bufbroker_broker.cli.launch import start_broker, stop_broker
from tests.conftest import call_channels, warm_up

CATEGORY = "fault injection"
SIZE = 64 * 1024
PATTERN = (b"fault-data-" * (SIZE // 11 + 1))[:SIZE]

EXPORTER_STEPS = {
    # fds on the fd channel, RegisterBuffer never called
    "fds-sent-not-registered": "from tests.raw_client import RawClient; import pathlib\n"
    "r = RawClient(pathlib.Path(sys.argv[1])); fd = os.memfd_create('x', os.MFD_ALLOW_SEALING); os.ftruncate(fd, 4096)\n"
    "r.send_fds('never-registered', [fd])",
    "registered": "b = s.export(%d, name='victim', offers=['memfd'], on_exporter_exit='keep')\nb.memoryview()[:] = PATTERN"
    % SIZE,
    "registered-revoke-policy": "b = s.export(%d, name='victim', offers=['memfd'])\nb.memoryview()[:] = PATTERN" % SIZE,
    "events-open": "b = s.export(%d, name='victim', offers=['memfd'], on_exporter_exit='keep')\nb.memoryview()[:] = PATTERN\n"
    "s.add_event_handler(lambda event: None)" % SIZE,
}

IMPORTER_STEPS = {
    "compat-pinned": "a = s.attach('shared', accept=[])",
    "sixteen-mappings": "a = s.attach('shared', accept=['memfd']); ms = [a.map() for _ in range(16)]",
    "events-open": "a = s.attach('shared', accept=['memfd'], map=True); s.add_event_handler(lambda event: None)",
}

PRELUDE = "import os, sys, bufbroker\nPATTERN = %r\ns = bufbroker.connect(sys.argv[1])\n" % PATTERN
EPILOGUE = "\nprint('ready', flush=True)\nsys.stdin.read()"


def _kill(process) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def _settles_within_a_second(broker, before: int) -> int:
    return broker.wait_for_fds(before, timeout=1.0) - before


@pytest.mark.parametrize("step", list(EXPORTER_STEPS))
def test_exporter_killed_at_each_step_loses_no_data_held_by_importers(broker, reliability, step):
    with broker.connect() as bystander:
        bystander_buffer = bystander.export(4096, name="bystander", offers=["memfd"])
        bystander.attach(bystander_buffer.id, accept=["memfd"]).detach()  # its call channel is part of the baseline
        before, channels = broker.settled_fd_count(), call_channels(bystander)
        victim = broker.spawn_code(PRELUDE + EXPORTER_STEPS[step] + EPILOGUE)
        assert victim.stdout.readline().strip() == "ready"
        mapping = None
        if step != "fds-sent-not-registered":
            attachment = bystander.attach("victim", accept=["memfd"], map=True)
            mapping = attachment.mapping
        _kill(victim)
        started = time.monotonic()
        lost = 0
        if mapping is not None:
            seen = bytes(mapping.memoryview())
            lost = sum(1 for a, b in zip(seen, PATTERN) if a != b) + SIZE - len(seen)
            mapping.close()
            attachment.detach()
        deadline = started + 1.0
        while time.monotonic() < deadline and bystander.stats().sessions != 1:
            time.sleep(0.01)
        assert bystander.stats().sessions == 1, "the killed exporter's session was not cleaned within 1 s"
        leaked = max(0, _settles_within_a_second(broker, before + call_channels(bystander) - channels))
        # Unaffected: the bystander's own buffer still attaches and maps.
        with broker.connect() as other:
            other.attach(bystander_buffer.id, accept=["memfd"], map=True).mapping.close()
    assert lost == 0 and leaked == 0
    reliability.record(
        CATEGORY, cases=1, faults=1, fds_leaked=leaked, bytes_lost=lost, note=f"exporter kill -9 at {step}"
    )


@pytest.mark.parametrize("step", list(IMPORTER_STEPS))
def test_importer_killed_at_each_step_releases_everything_within_a_second(broker, reliability, step):
    with broker.connect() as exp, broker.connect() as bystander:
        buffer = exp.export(SIZE, name="shared", offers=["memfd"])
        buffer.memoryview()[:] = PATTERN
        watched = bystander.attach("shared", accept=["memfd"], map=True)
        before = broker.settled_fd_count()
        victim = broker.spawn_code(PRELUDE + IMPORTER_STEPS[step] + EPILOGUE)
        assert victim.stdout.readline().strip() == "ready"
        _kill(victim)
        started = time.monotonic()
        while exp.stats().attachments != 1 and time.monotonic() - started < 1:
            time.sleep(0.01)
        assert exp.stats().attachments == 1
        leaked = max(0, _settles_within_a_second(broker, before))
        seen = bytes(watched.mapping.memoryview())
        lost = sum(1 for a, b in zip(seen, PATTERN) if a != b)
        if step == "compat-pinned":
            assert not exp.buffers()[0].pinned_by
        watched.mapping.close()
        watched.detach()
    assert lost == 0 and leaked == 0
    reliability.record(
        CATEGORY, cases=1, faults=1, fds_leaked=leaked, bytes_lost=lost, note=f"importer kill -9 at {step}"
    )


BROKER_STEPS = ["idle", "fds-sent-not-registered", "importer-mapped"]


@pytest.mark.parametrize("step", BROKER_STEPS)
def test_broker_killed_at_each_step_leaves_mappings_readable_and_a_new_broker_serves(broker, reliability, step):
    from tests.raw_client import RawClient

    mapping = raw = importer = None
    with bufbroker.connect(broker.socket_dir, reconnect=False) as exp:
        buffer = exp.export(SIZE, name="shared", offers=["memfd"])
        buffer.memoryview()[:] = PATTERN
        if step == "fds-sent-not-registered":
            raw = RawClient(broker.socket_dir)
            fd = os.memfd_create("in-flight", os.MFD_ALLOW_SEALING)
            raw.send_fds("in-flight", [fd])
            os.close(fd)
        if step == "importer-mapped":
            importer = bufbroker.connect(broker.socket_dir, reconnect=False)
            mapping = importer.attach("shared", accept=["memfd"], map=True).mapping
        _kill(broker.process)
        # Without reconnect, a call on the dead broker fails with a status at once.
        started = time.monotonic()
        with pytest.raises(bufbroker.BrokerError):
            exp.stats()
        assert time.monotonic() - started < 5
        lost = sum(1 for a, b in zip(bytes(buffer.memoryview()), PATTERN) if a != b)
        if mapping is not None:
            lost += sum(1 for a, b in zip(bytes(mapping.memoryview()), PATTERN) if a != b)
            mapping.close()  # the broker is gone: the SDK unmaps locally
    for client in (raw, importer):
        if client is not None:
            try:
                client.close()
            except bufbroker.BrokerError:
                pass
    # A new broker starts on the same dir (stale sockets and all) and serves.
    with open(broker.log_path, "a") as log:
        again = start_broker(broker.socket_dir, ["--http", "none"], stderr=log)
    try:
        warm_up(broker.socket_dir)
        with bufbroker.connect(broker.socket_dir) as session:
            assert session.stats().buffers == 0
    finally:
        assert stop_broker(again) == 0
    assert lost == 0
    reliability.record(
        CATEGORY, cases=1, faults=1, bytes_lost=lost, note=f"broker kill -9 at {step}; a new broker served the same dir"
    )
