"""fd exhaustion (issue 14, class 1): one local client must not fill the broker's fd table.

Each attack runs against a real broker started with ``nofile 256`` while an
honest SDK importer attaches and maps in a loop beside it. Measured: every
honest attach+map under 250 ms, the broker's fd count (sampled every few ms)
below half its limit, its log under 1 MB, every refusal naming the setting
that caused it, and afterwards its fd count and ledger back at baseline
(the ``broker_factory`` teardown checks those too).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import ExitStack

import grpc
import pytest

import bufbroker
from bufbroker import fdwire
from bufbroker.v1 import broker_pb2_grpc as pb_grpc
from tests.raw_client import RawClient

CATEGORY = "fd exhaustion"
NOFILE = 256
LOW_NOFILE = ("prlimit", f"--nofile={NOFILE}:{NOFILE}", "--")
HONEST_BUDGET_S = 0.250
MAX_LOG_BYTES = 1 << 20
SETTINGS = ("max_fds_per_session", "max_pending_fds", "fd_reserve", "max_sessions", "max_sessions_per_uid")


def _memfd(size: int = 4096) -> int:
    fd = os.memfd_create("attack", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return fd


class Watch:
    """An honest importer attaching and mapping in a loop, and a sampler of the broker's fd count."""

    def __init__(self, broker, stack: ExitStack) -> None:
        self.broker = broker
        exporter = stack.enter_context(broker.connect())
        self.importer = stack.enter_context(broker.connect())
        self.buffer = exporter.export(4096, offers=["segments", "memfd"])
        self.buffer.memoryview()[:6] = b"honest"
        self.waits: list[float] = []
        self.errors: list[str] = []
        self.peak_fds = broker.fd_count()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._honest), threading.Thread(target=self._sample)]
        for thread in self._threads:
            thread.start()
        stack.callback(self.stop)
        stack.callback(self.buffer.unregister)

    def _honest(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                attachment = self.importer.attach(self.buffer.id, accept=["segments"])
                mapping = attachment.map()
                self.waits.append(time.perf_counter() - started)
                if bytes(mapping.memoryview()[:6]) != b"honest":
                    self.errors.append("the honest importer read the wrong bytes")
                mapping.close()
                attachment.detach()
            except bufbroker.BrokerError as error:
                self.errors.append(f"{type(error).__name__}: {error}")
            time.sleep(0.005)

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_fds = max(self.peak_fds, self.broker.fd_count())
            except FileNotFoundError:
                return
            time.sleep(0.002)

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            for thread in self._threads:
                thread.join(timeout=10)

    def check(self) -> None:
        """The honest importer never waited long or failed; the broker stayed under half its fd limit."""
        self.stop()
        assert not self.errors, self.errors[:5]
        assert len(self.waits) >= 5, f"the honest importer managed only {len(self.waits)} attach+maps"
        assert max(self.waits) < HONEST_BUDGET_S, f"honest attach+map took {max(self.waits) * 1e3:.0f} ms"
        assert self.peak_fds < NOFILE // 2, f"the broker held {self.peak_fds} of {NOFILE} fds"


def _session(socket_dir) -> RawClient | str:
    """A raw session, or the refusal the broker answered the connection with instead of HELLO."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(5)
    sock.connect(str(socket_dir / "fd.sock"))
    first = fdwire.receive(sock)
    fdwire.close_fds(first.fds)
    if first.message is None or not first.message.HasField("hello"):
        sock.close()
        assert first.message is not None and first.message.HasField("notice"), first
        assert first.message.notice.code == "RESOURCE_EXHAUSTED", first.message
        return first.message.notice.message
    raw = RawClient.__new__(RawClient)  # RawClient's own __init__ asserts HELLO: build it around this socket
    raw.sock, raw.hello, raw.token = sock, first.message.hello, first.message.hello.session_token
    raw.channel = grpc.insecure_channel(f"unix:{socket_dir / 'grpc.sock'}")
    raw.stub = pb_grpc.BrokerStub(raw.channel)
    return raw


def _drain(raw: RawClient, wait: float = 0.1) -> list:
    answers = []
    raw.sock.settimeout(wait)
    try:
        while True:
            received = raw.receive()
            fdwire.close_fds(received.fds)
            if received.eof:
                break
            answers.append(received.message)
    except (TimeoutError, BlockingIOError):
        pass
    finally:
        raw.sock.settimeout(5)
    return answers


def _refusal(call) -> str:
    """The RESOURCE_EXHAUSTED or INVALID_ARGUMENT details of a call that must be refused."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    code = raised.value.code()
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), raised.value.details()
    return raised.value.details()


def _log_ok(broker) -> int:
    size = broker.log_path.stat().st_size
    assert size < MAX_LOG_BYTES, f"the broker logged {size} bytes"
    return size


def _back_to_baseline(broker) -> int:
    count = broker.wait_for_fds(broker.baseline_fds, timeout=5)
    assert count == broker.baseline_fds, f"broker fds {count}, baseline {broker.baseline_fds}"
    assert broker.stats().fds_held == 0
    return count


def test_duplicate_fds_in_one_registration_are_refused_naming_the_indexes(broker_factory, reliability):
    broker = broker_factory(prefix=LOW_NOFILE)
    fd, other = _memfd(), _memfd()
    with RawClient(broker.socket_dir) as raw:
        raw.send_fds("dups", [fd, fd, other, fd])
        details = _refusal(lambda: raw.register("dups", 4096))
        assert "fds 0, 1, 3 of the buffer are the same file" in details, details
        raw.send_fds("distinct", [fd, other])  # the same files once each: fine
        assert raw.register("distinct", 4096).buffer.id > 0
    os.close(fd)
    os.close(other)
    _back_to_baseline(broker)
    reliability.record(CATEGORY, cases=1, faults=1, note="4 fds, 3 of one memfd: refused naming fds 0, 1, 3")


def test_253_copies_per_registration_do_not_fill_the_fd_table(broker_factory, reliability):
    broker = broker_factory(prefix=LOW_NOFILE)
    fd = _memfd()
    refusals: set[str] = set()
    attempts = 60
    with ExitStack() as stack:
        watch = Watch(broker, stack)
        with RawClient(broker.socket_dir) as raw:
            for n in range(attempts):
                raw.send_fds(f"copies{n}", [fd] * fdwire.MAX_FDS_PER_MESSAGE)
                details = _refusal(lambda n=n: raw.register(f"copies{n}", 4096))
                refusals.add(details)
            notices = [m.notice.message for m in _drain(raw) if m is not None and m.HasField("notice")]
        watch.check()
    os.close(fd)
    for details in refusals | set(notices):
        assert any(setting in details for setting in SETTINGS) or "same file" in details, details
    _log_ok(broker)
    _back_to_baseline(broker)
    reliability.record(
        CATEGORY,
        cases=attempts,
        faults=attempts,
        note=f"{attempts} × 253 copies of one memfd: all refused; peak broker fds {watch.peak_fds}/{NOFILE}, "
        f"longest honest attach+map {max(watch.waits) * 1e3:.1f} ms",
    )


def test_many_registrations_and_many_sessions_meet_the_budget_not_the_fd_table(broker_factory, reliability):
    broker = broker_factory("--max-fds-per-session", "24", prefix=LOW_NOFILE)
    refusals: set[str] = set()
    registered = refused = 0
    with ExitStack() as stack:
        watch = Watch(broker, stack)
        raws: list[RawClient] = []
        for n in range(40):  # sessions, each trying to register 8 × 4 distinct memfds
            raw = _session(broker.socket_dir)
            if isinstance(raw, str):  # a notice instead of HELLO
                refused += 1
                refusals.add(raw)
                continue
            raws.append(raw)
            stack.callback(raw.close)
            for k in range(8):
                fds = [_memfd() for _ in range(4)]
                raw.send_fds(f"s{n}b{k}", fds)
                for fd in fds:
                    os.close(fd)
                try:
                    raw.register(f"s{n}b{k}", 4096)
                    registered += 1
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                    refused += 1
                    refusals.add(error.details())
        # The SDK surfaces a refused HELLO as ResourceExhausted naming the setting.
        try:
            extra = bufbroker.connect(broker.socket_dir, reconnect=False)
        except bufbroker.ResourceExhausted as error:
            refusals.add(str(error))
        else:
            extra.close()
        for raw in raws:
            for message in _drain(raw, 0.02):
                if message is not None and message.HasField("notice"):
                    refusals.add(message.notice.message)
        watch.check()
        assert registered > 0 and refused > 0, (registered, refused)
        assert any("max_fds_per_session = 24" in r for r in refusals), refusals
        for details in refusals:
            assert any(setting in details for setting in SETTINGS), details
    _log_ok(broker)
    _back_to_baseline(broker)
    reliability.record(
        CATEGORY,
        cases=registered + refused,
        faults=refused,
        note=f"40 sessions × 8 registrations of 4 memfds: {registered} registered, {refused} refused "
        f"(max_fds_per_session, fd_reserve); peak broker fds {watch.peak_fds}/{NOFILE}, longest honest "
        f"attach+map {max(watch.waits) * 1e3:.1f} ms",
    )


def test_sessions_past_max_sessions_get_resource_exhausted_at_hello(broker_factory, reliability):
    broker = broker_factory("--max-sessions", "2")
    with broker.connect() as first, broker.connect():
        with pytest.raises(bufbroker.ResourceExhausted, match="max_sessions = 2"):
            bufbroker.connect(broker.socket_dir, reconnect=False)
        assert first.stats().sessions == 2
    with broker.connect() as again:  # room once the others ended
        assert again.stats().sessions >= 1
    reliability.record(CATEGORY, cases=3, faults=1, note="a session past max_sessions: ResourceExhausted at HELLO")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_full_fd_table_makes_the_accept_loop_back_off_and_refuse_clearly(broker_factory, reliability):
    # gRPC's own caps (test_grpc_flood.py) would close the hogs: lifted here, as an operator may,
    # so that the fd table can fill and the fd channel's accept loop meets EMFILE.
    uncapped = ("--grpc-max-connections", "1000", "--grpc-handshake-timeout", "120", "--grpc-idle-timeout", "120")
    broker = broker_factory(*uncapped, prefix=LOW_NOFILE)
    with ExitStack() as stack:
        # Fill the broker's fd table with connections to its gRPC socket (accepted by gRPC, not by us).
        hogs = []
        for _ in range(NOFILE):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(str(broker.socket_dir / "grpc.sock"))
            except OSError:
                sock.close()
                break
            hogs.append(sock)
            stack.callback(sock.close)
        deadline = time.monotonic() + 5
        while broker.fd_count() < NOFILE - 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.fd_count() >= NOFILE - 2, f"the hogs filled only {broker.fd_count()} fds"
        log_before = broker.log_path.stat().st_size
        cpu_before = _cpu_seconds(broker.pid)
        answers: list = []
        started = time.monotonic()

        def client() -> None:  # connecting while the table is full
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(5)
                sock.connect(str(broker.socket_dir / "fd.sock"))
                try:
                    answers.append(fdwire.receive(sock).message)
                except OSError as error:
                    answers.append(error)

        for _ in range(3):  # three waves of 8
            wave = [threading.Thread(target=client) for _ in range(8)]
            for thread in wave:
                thread.start()
            for thread in wave:
                thread.join()
        elapsed = time.monotonic() - started
        cpu = _cpu_seconds(broker.pid) - cpu_before
        logged = broker.log_path.stat().st_size - log_before
    notices = [a for a in answers if not isinstance(a, OSError) and a is not None and a.HasField("notice")]
    assert notices, answers
    for message in notices:
        assert message.notice.code == "RESOURCE_EXHAUSTED", message
        assert "out of file descriptors" in message.notice.message or "fd_reserve" in message.notice.message
    assert not any(isinstance(a, TimeoutError) for a in answers), answers
    assert cpu < 0.5 * elapsed + 0.2, f"the broker used {cpu:.2f} s of CPU in {elapsed:.2f} s: it spins"
    assert logged < 64 * 1024, f"the broker logged {logged} bytes while its fd table was full"
    _log_ok(broker)
    _back_to_baseline(broker)
    with broker.connect() as session:  # serving again
        assert session.stats().sessions >= 1
    reliability.record(
        CATEGORY,
        cases=len(answers),
        faults=1,
        note=f"fd table full ({NOFILE}): {len(notices)}/{len(answers)} clients refused with RESOURCE_EXHAUSTED, "
        f"broker CPU {cpu:.2f} s over {elapsed:.1f} s, {logged} log bytes",
    )
