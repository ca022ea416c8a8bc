"""Hostile input on the fd channel: too many fds, garbage, cut-short messages, resealing.

(tests/integration/test_registration.py covers the wrong kinds of fd; these
are what a hostile or broken peer sends beyond that.) Each is refused with a
notice or a status, the session and the broker keep working, no fd leaks,
and an importer never gets SIGBUS.
"""

from __future__ import annotations

import errno
import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bufbroker import fdwire
from bufbroker.v1 import fd_channel_pb2 as fdpb
from tests.raw_client import RawClient

CATEGORY = "hostile fds"


def _memfds(count: int, size: int = 4096) -> list[int]:
    fds = []
    for n in range(count):
        fd = os.memfd_create(f"hostile{n}", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        fds.append(fd)
    return fds


def _drain(raw: RawClient, wait: float = 0.05) -> list:
    """Read whatever the broker answered (notices), closing any fds it sent."""
    answers = []
    raw.sock.settimeout(wait)
    try:
        for _ in range(100):
            received = raw.receive()
            fdwire.close_fds(received.fds)
            if received.eof:
                break
            answers.append(received)
    except (TimeoutError, BlockingIOError):
        pass
    finally:
        raw.sock.settimeout(5)
    return answers


def _still_serves(raw: RawClient, nonce: str) -> None:
    [fd] = _memfds(1)
    raw.send_fds(nonce, [fd])
    assert raw.register(nonce, 4096).buffer.id > 0
    os.close(fd)


def _answered_without_internal(call) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as error:
        assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
        assert error.details()
        return error.code().name


def test_253_fds_in_one_message_are_accounted_for_and_closed(broker, reliability):
    before = broker.settled_fd_count()
    fds = _memfds(fdwire.MAX_FDS_PER_MESSAGE)
    with RawClient(broker.socket_dir) as raw:
        raw.send_fds("many", fds)
        answers = _drain(raw, 0.3)
        assert not any(
            a.message is not None
            and a.message.HasField("notice")
            and a.message.notice.nonce == "many"
            and "dropped" in a.message.notice.message
            for a in answers
        )
        code = _answered_without_internal(lambda: raw.register("many", 4096))
        _still_serves(raw, "after-many")
    fdwire.close_fds(fds)
    leaked = broker.wait_for_fds(before) - before
    assert leaked == 0 and broker.stats().fds_held == 0
    reliability.record(
        CATEGORY, cases=1, faults=1, fds_leaked=leaked, note=f"253 fds in one message: register answered {code}"
    )


def test_more_than_253_fds_are_refused_by_the_kernel_and_the_broker_is_untouched(broker, reliability):
    before = broker.settled_fd_count()
    fds = _memfds(fdwire.MAX_FDS_PER_MESSAGE + 1)
    message = fdwire.encode(fdpb.FdMessage(send_fds=fdpb.SendFds(nonce="too-many", fd_count=len(fds))))
    with RawClient(broker.socket_dir) as raw:
        with pytest.raises(OSError) as raised:
            raw.send_raw(message, fds)
        assert raised.value.errno == errno.EINVAL  # SCM_MAX_FD
        _still_serves(raw, "after-too-many")
    fdwire.close_fds(fds)
    assert broker.wait_for_fds(before) == before
    reliability.record(CATEGORY, cases=1, faults=1, note="254 fds in one message: the kernel refuses with EINVAL")


RANDOM_MESSAGES = st.tuples(
    st.one_of(st.binary(max_size=64), st.binary(min_size=4000, max_size=5000)),
    st.integers(0, 3),
)


def test_random_bytes_with_and_without_fds_lose_no_fd(broker, reliability):
    before = broker.settled_fd_count()
    tally = {"cases": 0, "notices": 0}
    with RawClient(broker.socket_dir) as raw:

        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(message=RANDOM_MESSAGES)
        def send(message):
            data, fd_count = message
            fds = _memfds(fd_count)
            try:
                raw.send_raw(data, fds)
            finally:
                fdwire.close_fds(fds)
            tally["cases"] += 1
            tally["notices"] += sum(
                1 for a in _drain(raw, 0.02) if a.message is not None and a.message.HasField("notice")
            )

        send()
        _still_serves(raw, "after-random")
    leaked = broker.wait_for_fds(before, timeout=5) - before
    assert leaked == 0 and broker.stats().fds_held == 0
    reliability.record(
        CATEGORY,
        cases=tally["cases"],
        faults=tally["cases"],
        fds_leaked=leaked,
        note=f"random datagrams with 0-3 fds: {tally['cases']} sent, {tally['notices']} notices back",
    )


def test_messages_cut_short_are_refused_and_their_fds_closed(broker, reliability):
    before = broker.settled_fd_count()
    whole = fdwire.encode(fdpb.FdMessage(send_fds=fdpb.SendFds(nonce="a-fairly-long-nonce-0123456789", fd_count=2)))
    cases = 0
    with RawClient(broker.socket_dir) as raw:
        for cut in range(1, len(whole)):
            fds = _memfds(2)
            raw.send_raw(whole[:cut], fds)
            fdwire.close_fds(fds)
            cases += 1
            _drain(raw, 0.02)
        _answered_without_internal(lambda: raw.register("a-fairly-long-nonce-0123456789", 4096))
        _still_serves(raw, "after-cut")
    leaked = broker.wait_for_fds(before, timeout=5) - before
    assert leaked == 0 and broker.stats().fds_held == 0
    reliability.record(
        CATEGORY,
        cases=cases,
        faults=cases,
        fds_leaked=leaked,
        note=f"every prefix of a SendFds message ({cases}) sent with 2 fds",
    )


IMPORTER = """
import hashlib, sys, bufbroker
s = bufbroker.connect(sys.argv[1])
a = s.attach('sealed', accept=['memfd'], map=True)
print('ready', flush=True)
sys.stdin.readline()
view = a.mapping.memoryview()
print(len(view), hashlib.sha256(bytes(view)).hexdigest(), flush=True)
"""


def test_exporter_cannot_shrink_or_grow_a_registered_memfd_and_the_importer_reads_it_all(broker, reliability):
    import hashlib

    size = 1 << 20
    fd = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    payload = os.urandom(size)
    os.pwrite(fd, payload, 0)
    with broker.connect() as session:
        session.export(fd=fd, name="sealed", offers=["memfd"])
        importer = broker.spawn_code(IMPORTER)
        assert importer.stdout.readline().strip() == "ready"
        refused = 0
        for new_size in (0, 4096, size - 1, size + 1, size * 2):
            with pytest.raises(PermissionError):
                os.ftruncate(fd, new_size)
            refused += 1
        with pytest.raises(OSError):  # punching a hole would shrink the pages under the importer
            os.posix_fallocate(fd, size, 4096)
        refused += 1
        importer.stdin.write("go\n")
        importer.stdin.flush()
        length, digest = importer.stdout.readline().split()
        assert importer.wait(timeout=10) == 0, "the importer died (SIGBUS?)"
    os.close(fd)
    lost = size - int(length) if digest == hashlib.sha256(payload).hexdigest() else size
    assert lost == 0
    reliability.record(
        CATEGORY,
        cases=refused,
        faults=refused,
        bytes_lost=lost,
        note="shrink to 0/4096/size-1, grow to size+1/2×size and fallocate past the end: all refused; importer read 1 MiB intact",
    )
