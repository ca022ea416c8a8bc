"""fds parked in flight (issue 14, class 5): a client that never reads its call channels.

Every reply with fds the client does not read keeps those fds in flight;
Linux counts them against the broker user's RLIMIT_NOFILE and, past it,
refuses every sendmsg with fds (ETOOMANYREFS) for anyone. Measured beside an
honest SDK importer attaching and mapping in a loop: the hostile session is
refused naming ``max_unread_replies``, the honest one is never ended and never
waits 250 ms, and the broker's fds return to baseline. Run as root and as a
non-root broker uid with nofile 256 (where ETOOMANYREFS is real).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

import bufbroker
from bufbroker import fdwire
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import fd_channel_pb2 as fdpb
from tests.adversarial.test_fd_exhaustion import LOW_NOFILE, NOFILE, Watch, _back_to_baseline, _log_ok
from tests.raw_client import RawClient

CATEGORY = "fd exhaustion"
NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the broker as another uid")
CHANNELS = 4
CALLS_PER_CHANNEL = 100  # 400 replies with one fd each: past nofile 256 when nothing caps them


@pytest.fixture
def nobody_base():
    """A socket base dir the broker uid ``nobody`` can create its socket dir in."""
    base = tempfile.mkdtemp(prefix="bufbroker-in-flight-")
    os.chmod(base, 0o755)
    os.chown(base, NOBODY, NOBODY)
    yield Path(base)
    shutil.rmtree(base, ignore_errors=True)


def _as_nobody() -> tuple[str, ...]:
    return (*LOW_NOFILE, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")


def _park_replies(raw: RawClient, buffer_id: int) -> list[socket.socket]:
    """Open call channels and send attach+map calls on them without reading a reply."""
    request = pb.AttachRequest(buffer_id=buffer_id, map=True)  # compat: no event stream needed
    channels = [raw.open_call_channel() for _ in range(CHANNELS)]
    for channel in channels:
        channel.setblocking(False)
        for call_id in range(1, CALLS_PER_CHANNEL + 1):
            message = fdpb.FdMessage()
            message.call.call_id = call_id
            message.call.attach.CopyFrom(request)
            try:
                channel.sendmsg([message.SerializeToString()])
            except BlockingIOError:
                break  # the broker stopped reading this channel: it is backed up
    return channels


def _read_replies(channels: list[socket.socket]) -> tuple[int, list[str]]:
    """Replies that came with fds, and the error messages of the others."""
    with_fds, errors = 0, []
    for channel in channels:
        channel.settimeout(0.5)
        while True:
            try:
                received = fdwire.receive(channel, fdwire.MAX_CALL_BYTES)
            except (TimeoutError, BlockingIOError):
                break
            fdwire.close_fds(received.fds)
            if received.eof:
                break
            reply = received.message.reply
            if reply.HasField("error"):
                errors.append(f"{reply.error.code}: {reply.error.message}")
            elif received.fds:
                with_fds += 1
        channel.close()
    return with_fds, errors


def _attack(broker, limit: int | None) -> tuple[int, list[str]]:
    with ExitStack() as stack:
        watch = Watch(broker, stack)
        raw = stack.enter_context(RawClient(broker.socket_dir))
        with broker.connect() as exporter:
            target = exporter.export(4096, offers=["memfd"], allow=["any"])
            channels = _park_replies(raw, target.id)
            time.sleep(0.5)  # the replies stay parked while the honest importer goes on
            honest_session = watch.importer
            watch.check()  # every honest attach+map on time, none failed, the broker under half its fds
            with_fds, errors = _read_replies(channels)
            # The honest session was never ended: it still works.
            attachment = honest_session.attach(watch.buffer.id, accept=["segments"])
            attachment.map().close()
            attachment.detach()
            target.unregister()
        if limit is not None:
            assert with_fds <= limit, f"{with_fds} replies with fds went out unread, past max_unread_replies {limit}"
    return with_fds, errors


@pytest.mark.parametrize("as_nobody", [False, pytest.param(True, marks=ROOT_ONLY)], ids=["root", "nobody"])
def test_unread_replies_are_capped_and_the_honest_client_never_waits(
    nobody_base, broker_factory, reliability, as_nobody
):
    limit = 32
    prefix = _as_nobody() if as_nobody else LOW_NOFILE
    broker = broker_factory("--max-unread-replies", str(limit), prefix=prefix, base=nobody_base if as_nobody else None)
    with_fds, errors = _attack(broker, limit)
    assert with_fds >= limit // 2, f"only {with_fds} replies with fds: the attack did not run ({errors[:2]})"
    assert errors, "the hostile session was never refused"
    assert all("max_unread_replies" in error and error.startswith("RESOURCE_EXHAUSTED") for error in errors), errors[:3]
    _log_ok(broker)
    _back_to_baseline(broker)
    reliability.record(
        CATEGORY,
        cases=CHANNELS * CALLS_PER_CHANNEL,
        note=f"in-flight fds ({'nobody' if as_nobody else 'root'}, nofile {NOFILE}): {with_fds} replies with fds "
        f"unread, {len(errors)} calls refused (max_unread_replies = {limit})",
    )


@ROOT_ONLY
def test_too_many_refs_is_the_senders_problem_not_the_receivers(nobody_base, broker_factory, reliability):
    """With the cap out of the way, a non-root broker meets ETOOMANYREFS: no session is ended for it."""
    broker = broker_factory("--max-unread-replies", "100000", prefix=_as_nobody(), base=nobody_base)
    with ExitStack() as stack:
        honest = stack.enter_context(broker.connect())
        exporter = stack.enter_context(broker.connect())
        raw = stack.enter_context(RawClient(broker.socket_dir))
        shared = exporter.export(4096, offers=["segments", "memfd"], allow=["any"])
        channels = _park_replies(raw, shared.id)
        refused = []
        for _ in range(5):  # in-flight refs are past nofile: the honest maps cannot get fds now
            try:
                attachment = honest.attach(shared.id, accept=["segments"])
                attachment.map().close()
                attachment.detach()
            except bufbroker.ResourceExhausted as error:
                refused.append(str(error))
        with_fds, errors = _read_replies(channels)
        assert with_fds <= NOFILE + 1, with_fds
        assert any("ETOOMANYREFS" in error for error in errors + refused), (errors[:3], refused[:3])
        # Neither session was ended: both go on.
        attachment = honest.attach(shared.id, accept=["segments"])
        attachment.map().close()
        attachment.detach()
        assert raw.call("GetStats", pb.GetStatsRequest()) is not None
        shared.unregister()
    assert "write failed: [Errno 109]" not in broker.log(), "a session was ended for ETOOMANYREFS"
    _log_ok(broker)
    _back_to_baseline(broker)
    reliability.record(
        CATEGORY,
        cases=CHANNELS * CALLS_PER_CHANNEL,
        note=f"ETOOMANYREFS (nobody, nofile {NOFILE}): {with_fds} replies with fds parked; "
        f"{len(errors)} hostile and {len(refused)} honest calls answered without fds; no session ended",
    )
