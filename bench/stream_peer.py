"""One side of a `streams` baseline: a frame producer or consumer process.

`python -m bench.stream_peer ROLE TRANSPORT PATH [options]` with ROLE
`producer` or `consumer` and TRANSPORT `floor` (AF_UNIX SOCK_SEQPACKET + a
memfd of SLOTS frames passed once with SCM_RIGHTS), `iceoryx2` (publish-
subscribe of a u8 slice + Event services), `grpc` (bidi streaming of the
frame bytes) or `bufbroker` (a bufbroker stream; PATH is the socket dir of a
broker the orchestrator started). Producer and consumer are started separately and share only PATH
(a socket path in a temp dir; for iceoryx2 the service name derived from it).
`mp-host` runs the multiprocessing baseline: this process creates the
`shared_memory` segment and the two `multiprocessing.Queue`s and starts both
sides as `multiprocessing` children, as people do today.

Every run: WARMUP + PACED frames at FPS, then up to UNPACED frames (or
UNPACED_S seconds) as fast as slots come back, then an end marker. Frames are
1920x1080x3 bytes in a pool of SLOTS; the producer writes the seq into the
frame's first 8 bytes and its low byte into the last byte; the consumer takes
time.monotonic_ns() as soon as it holds a readable frame, subtracts the publish
timestamp carried in the message, checks both bytes and releases the slot.
Each process prints one JSON line on stdout when done.
"""

from __future__ import annotations

import argparse
import array
import ctypes
import faulthandler
import json
import mmap
import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any

WIDTH, HEIGHT, CHANNELS = 1920, 1080, 3
FRAME = WIDTH * HEIGHT * CHANNELS
SLOTS = 4
WARMUP, PACED, UNPACED, END = 0, 1, 2, 3
NO_SLOT = 0xFFFFFFFF
# slot u32, phase u32, seq u64, publish timestamp (CLOCK_MONOTONIC ns) u64: 24 bytes
MSG = struct.Struct("<IIQQ")
# slot u32, pad u32, seq u64
REL = struct.Struct("<IIQ")
SEQ = struct.Struct("<Q")
GRPC_METHOD = "/bench.StreamFrames/Frames"
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 32 << 20),
    ("grpc.max_send_message_length", 32 << 20),
]


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def guard(seconds: float) -> None:
    """Die with the parent (PR_SET_PDEATHSIG) and after SECONDS in any case (SIGALRM)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(3)
    except Exception:
        pass
    faulthandler.dump_traceback_later(seconds, exit=True)  # where it hung, on stderr
    signal.alarm(max(1, int(seconds + 2.999)))


def write_frame(view: memoryview, seq: int) -> None:
    SEQ.pack_into(view, 0, seq)
    view[FRAME - 1] = seq & 0xFF


class Stats:
    """The consumer's record: paced latencies, counts and frame check errors."""

    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.frames = 0
        self.unpaced = 0
        self.errors = 0
        self.first_error = ""
        self.expected_seq = -1

    def frame(self, phase: int, seq: int, ts: int, recv_ns: int, view: Any) -> None:
        """Touch a held frame: first bytes (the seq), last byte; check them against the message."""
        got = SEQ.unpack_from(view, 0)[0]
        last = view[FRAME - 1]
        if got != seq or last != seq & 0xFF or (self.expected_seq >= 0 and seq != self.expected_seq):
            self.errors += 1
            if not self.first_error:
                self.first_error = f"frame seq {seq}: header {got}, last byte {last}, expected seq {self.expected_seq}"
        self.expected_seq = seq + 1
        self.frames += 1
        if phase == PACED:
            self.latencies_ns.append(recv_ns - ts)
        elif phase == UNPACED:
            self.unpaced += 1

    def report(self) -> dict[str, Any]:
        return {
            "role": "consumer",
            "latencies_ns": self.latencies_ns,
            "frames": self.frames,
            "unpaced": self.unpaced,
            "errors": self.errors,
            "first_error": self.first_error,
        }


def run_producer(transport: Any, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """The common producer loop: paced phase, drain, unpaced phase, drain, end marker."""
    seq = 0

    def wait_free(need: int) -> None:
        while transport.free < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no slot came back (free {transport.free}, need {need})")
            transport.pump(min(left, 1.0))

    def one(phase: int) -> None:
        nonlocal seq
        wait_free(1)
        slot = transport.acquire()
        transport.write(slot, seq)
        transport.publish(slot, phase, seq)
        seq += 1

    interval = 1.0 / args.fps
    start = time.monotonic()
    for k in range(args.warmup + args.paced):
        target = start + k * interval
        while (left := target - time.monotonic()) > 0:
            transport.pump(left)
        one(WARMUP if k < args.warmup else PACED)
    wait_free(SLOTS)
    t0 = time.monotonic()
    count = 0
    while count < args.unpaced and time.monotonic() - t0 < args.unpaced_s:
        one(UNPACED)
        count += 1
    wait_free(SLOTS)
    elapsed = time.monotonic() - t0
    transport.end()
    return {"role": "producer", "frames": seq, "unpaced": count, "unpaced_s": elapsed}


# ---------------------------------------------------------------- floor: SOCK_SEQPACKET + memfd


class FloorProducer:
    def __init__(self, path: str, consumers: int, deadline: float) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(consumers)
        self.listener.settimeout(max(0.1, deadline - time.monotonic()))
        self.memfd = os.memfd_create("bench-streams-floor", os.MFD_CLOEXEC)
        os.ftruncate(self.memfd, SLOTS * FRAME)
        self.map = mmap.mmap(self.memfd, SLOTS * FRAME)
        self.view = memoryview(self.map)
        self.conns: list[socket.socket] = []
        for _ in range(consumers):
            conn, _ = self.listener.accept()
            conn.sendmsg(
                [struct.pack("<II", SLOTS, FRAME)],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [self.memfd]))],
            )
            conn.setblocking(False)
            self.conns.append(conn)
        self.by_fd = {conn.fileno(): conn for conn in self.conns}
        self.poller = select.poll()
        for conn in self.conns:
            self.poller.register(conn, select.POLLIN)
        self.refs = [0] * SLOTS
        self.free_slots: deque[int] = deque(range(SLOTS))
        self.consumers = consumers

    @property
    def free(self) -> int:
        return len(self.free_slots)

    def pump(self, timeout: float) -> None:
        for fd, _ in self.poller.poll(max(0, int(timeout * 1000 + 0.999))):
            conn = self.by_fd[fd]
            while True:
                try:
                    data = conn.recv(REL.size)
                except BlockingIOError:
                    break
                if not data:
                    raise ConnectionError("a consumer went away")
                slot, _, _ = REL.unpack(data)
                self.refs[slot] -= 1
                if self.refs[slot] == 0:
                    self.free_slots.append(slot)

    def acquire(self) -> int:
        return self.free_slots.popleft()

    def write(self, slot: int, seq: int) -> None:
        write_frame(self.view[slot * FRAME : (slot + 1) * FRAME], seq)

    def publish(self, slot: int, phase: int, seq: int) -> None:
        self.refs[slot] = self.consumers
        message = MSG.pack(slot, phase, seq, time.monotonic_ns())
        for conn in self.conns:
            conn.send(message)

    def end(self) -> None:
        message = MSG.pack(NO_SLOT, END, 0, time.monotonic_ns())
        for conn in self.conns:
            conn.send(message)

    def close(self) -> None:
        self.view.release()
        self.map.close()
        os.close(self.memfd)
        for conn in self.conns:
            conn.close()
        self.listener.close()


def connect_unix(path: str, kind: int, deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody listened on {path}") from None
            time.sleep(0.005)


def floor_consumer(path: str, deadline: float) -> dict[str, Any]:
    sock = connect_unix(path, socket.SOCK_SEQPACKET, deadline)
    data, anc, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(4))
    fds = array.array("i")
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % 4])
    slots, frame = struct.unpack("<II", data)
    mapped = mmap.mmap(fds[0], slots * frame, prot=mmap.PROT_READ)
    os.close(fds[0])
    view = memoryview(mapped)
    stats = Stats()
    try:
        while True:
            data = sock.recv(MSG.size)
            recv_ns = time.monotonic_ns()
            if not data:
                raise ConnectionError("the producer went away")
            slot, phase, seq, ts = MSG.unpack(data)
            if phase == END:
                break
            stats.frame(phase, seq, ts, recv_ns, view[slot * FRAME : (slot + 1) * FRAME])
            sock.send(REL.pack(slot, 0, seq))
    finally:
        view.release()
        mapped.close()
        sock.close()
    return stats.report()


# ---------------------------------------------------------------- iceoryx2


def _iox() -> Any:
    from importlib import import_module

    iox2 = import_module("iceoryx2")  # optional: untyped, maybe absent
    iox2.set_log_level(iox2.LogLevel.Error)
    return iox2


class FrameHeader(ctypes.Structure):
    """The iceoryx2 user header: what the floor's 24-byte message carries."""

    _fields_ = [
        ("seq", ctypes.c_uint64),
        ("ts", ctypes.c_uint64),
        ("phase", ctypes.c_uint32),
        ("slot", ctypes.c_uint32),
    ]

    @staticmethod
    def type_name() -> str:
        return "BufbrokerBenchFrameHeader"


def iox_prefix(path: str) -> str:
    """The iceoryx2 file prefix for a run in temp dir PATH: its /dev/shm names start with it."""
    return "bbs" + "".join(c for c in os.path.basename(path.rstrip("/")) if c.isalnum())[-16:] + "_"


class IoxPorts:
    """Both sides open the same four services: frames (u8 slice + header), releases (u64), two events.

    iceoryx2's root path (node and service files) is PATH/iox2 and its shm
    prefix comes from PATH, so the run shares only that path and leaves nothing
    in /tmp/iceoryx2 or the default /dev/shm/iox2_* namespace.
    """

    def __init__(self, path: str, consumers: int) -> None:
        iox2 = self.iox2 = _iox()
        config = iox2.config.default()
        config.global_cfg.root_path = iox2.Path.new(os.path.join(path, "iox2") + "/")
        config.global_cfg.prefix = iox2.FileName.new(iox_prefix(path))
        self.node = iox2.NodeBuilder.new().config(config).create(iox2.ServiceType.Ipc)
        builder = self.node.service_builder
        name = "bufbroker-bench/streams"
        self.frames = (
            builder(iox2.ServiceName.new(f"{name}/frames"))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .user_header(FrameHeader)
            .history_size(0)
            .subscriber_max_buffer_size(SLOTS)
            .subscriber_max_borrowed_samples(SLOTS)
            .max_publishers(1)
            .max_subscribers(consumers)
            .open_or_create()
        )
        self.releases = (
            builder(iox2.ServiceName.new(f"{name}/releases"))
            .publish_subscribe(ctypes.c_uint64)
            .history_size(0)
            .subscriber_max_buffer_size(SLOTS * consumers)
            .max_publishers(consumers)
            .max_subscribers(1)
            .open_or_create()
        )
        self.frame_ready = builder(iox2.ServiceName.new(f"{name}/frame-ready")).event().open_or_create()
        self.released = builder(iox2.ServiceName.new(f"{name}/released")).event().open_or_create()

    def wait_for(self, check: Any, deadline: float, what: str) -> None:
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"iceoryx2: {what} did not show up")
            time.sleep(0.002)


class IoxProducer:
    def __init__(self, name: str, consumers: int, deadline: float) -> None:
        self.ports = ports = IoxPorts(name, consumers)
        iox2 = ports.iox2
        self.publisher = ports.frames.publisher_builder().initial_max_slice_len(FRAME).max_loaned_samples(1).create()
        self.release_sub = ports.releases.subscriber_builder().create()
        self.notifier = ports.frame_ready.notifier_builder().create()
        self.listener = ports.released.listener_builder().create()
        # The services exist now: let consumers open them (no concurrent open_or_create).
        with open(os.path.join(name, "ready"), "w"):
            pass
        ports.wait_for(
            lambda: (
                ports.frames.dynamic_config.number_of_subscribers >= consumers
                and ports.releases.dynamic_config.number_of_publishers >= consumers
            ),
            deadline,
            f"{consumers} consumers",
        )
        self.publisher.update_connections()
        self.consumers = consumers
        self.free = SLOTS
        self.pending: dict[int, int] = {}
        self.loaned: Any = None
        self.duration = iox2.Duration

    def _drain(self) -> bool:
        got = False
        while (sample := self.release_sub.receive()) is not None:
            seq = sample.payload().contents.value
            sample.delete()
            got = True
            left = self.pending[seq] - 1
            if left:
                self.pending[seq] = left
            else:
                del self.pending[seq]
                self.free += 1
        return got

    def pump(self, timeout: float) -> None:
        if self._drain():
            return
        self.listener.timed_wait(self.duration.from_secs_f64(max(timeout, 0.0)))
        self._drain()

    def acquire(self) -> int:
        self.free -= 1
        self.loaned = self.publisher.loan_slice_uninit(FRAME)
        return 0

    def write(self, slot: int, seq: int) -> None:
        view = self.loaned.payload().as_memory_view().cast("B")
        write_frame(view, seq)
        view.release()

    def publish(self, slot: int, phase: int, seq: int) -> None:
        sample, self.loaned = self.loaned, None
        header = sample.user_header().contents
        header.ts = time.monotonic_ns()
        header.seq = seq
        header.phase = phase
        header.slot = slot
        self.pending[seq] = self.consumers
        sample.assume_init().send()
        self.notifier.notify()

    def end(self) -> None:
        sample = self.publisher.loan_slice_uninit(1)
        header = sample.user_header().contents
        header.ts, header.seq, header.phase, header.slot = time.monotonic_ns(), 0, END, NO_SLOT
        sample.assume_init().send()
        self.notifier.notify()

    def close(self) -> None:
        for port in (self.publisher, self.release_sub, self.notifier, self.listener):
            port.delete()


def iox_consumer(name: str, consumers: int, deadline: float) -> dict[str, Any]:
    while not os.path.exists(os.path.join(name, "ready")):
        if time.monotonic() > deadline:
            raise TimeoutError("iceoryx2: the producer never created its services")
        time.sleep(0.005)
    ports = IoxPorts(name, consumers)
    iox2 = ports.iox2
    subscriber = ports.frames.subscriber_builder().create()
    release_pub = ports.releases.publisher_builder().create()
    listener = ports.frame_ready.listener_builder().create()
    notifier = ports.released.notifier_builder().create()
    ports.wait_for(
        lambda: (
            ports.frames.dynamic_config.number_of_publishers >= 1
            and ports.releases.dynamic_config.number_of_subscribers >= 1
        ),
        deadline,
        "the producer",
    )
    release_pub.update_connections()
    wait = iox2.Duration.from_millis(200)
    stats = Stats()
    try:
        while True:
            sample = subscriber.receive()
            if sample is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("iceoryx2: no frame")
                listener.timed_wait(wait)
                continue
            recv_ns = time.monotonic_ns()
            header = sample.user_header().contents
            phase, seq, ts = header.phase, header.seq, header.ts
            if phase == END:
                sample.delete()
                break
            view = sample.payload().as_memory_view().cast("B")
            stats.frame(phase, seq, ts, recv_ns, view)
            view.release()
            sample.delete()
            release_pub.send_copy(ctypes.c_uint64(seq))
            notifier.notify()
    finally:
        for port in (subscriber, release_pub, listener, notifier):
            port.delete()
    return stats.report()


# ---------------------------------------------------------------- gRPC bidi streaming of the bytes


class GrpcProducer:
    """A gRPC server on PATH; the consumer calls Frames (bidi): frames down, releases up."""

    def __init__(self, path: str, deadline: float) -> None:
        from concurrent import futures

        import grpc

        self.outbox: queue.Queue[bytes | None] = queue.Queue()
        self.releases: queue.Queue[int] = queue.Queue()
        self.connected = threading.Event()
        self.staging = bytearray(MSG.size + FRAME)
        self.free = SLOTS

        def frames(request_iterator: Any, context: Any) -> Any:
            def read_releases() -> None:
                try:
                    for message in request_iterator:
                        self.releases.put(REL.unpack(message)[2])
                except Exception:
                    pass

            threading.Thread(target=read_releases, daemon=True).start()
            self.connected.set()
            while True:
                message = self.outbox.get()
                if message is None:
                    return
                yield message

        handler = grpc.method_handlers_generic_handler(
            "bench.StreamFrames", {"Frames": grpc.stream_stream_rpc_method_handler(frames)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=GRPC_OPTIONS)
        self.server.add_generic_rpc_handlers((handler,))
        if self.server.add_insecure_port(f"unix:{path}") == 0:
            raise RuntimeError(f"cannot bind {path}")
        self.server.start()
        if not self.connected.wait(max(0.1, deadline - time.monotonic())):
            raise TimeoutError("no gRPC consumer called")

    def pump(self, timeout: float) -> None:
        try:
            self.releases.get(timeout=max(timeout, 0.0))
            self.free += 1
            while True:
                self.releases.get_nowait()
                self.free += 1
        except queue.Empty:
            pass

    def acquire(self) -> int:
        self.free -= 1
        return 0

    def write(self, slot: int, seq: int) -> None:
        write_frame(memoryview(self.staging)[MSG.size :], seq)

    def publish(self, slot: int, phase: int, seq: int) -> None:
        # The timestamp rides in the message, so the copy into bytes (what a
        # gRPC bytes field needs) is part of the hand-off.
        MSG.pack_into(self.staging, 0, slot, phase, seq, time.monotonic_ns())
        self.outbox.put(bytes(self.staging))

    def end(self) -> None:
        self.outbox.put(MSG.pack(NO_SLOT, END, 0, time.monotonic_ns()))
        self.outbox.put(None)

    def close(self) -> None:
        self.outbox.put(None)
        self.server.stop(0.5).wait(2)


def grpc_consumer(path: str, deadline: float) -> dict[str, Any]:
    import grpc

    channel = grpc.insecure_channel(f"unix:{path}", options=GRPC_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=max(0.1, deadline - time.monotonic()))
    releases: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Any:
        while (message := releases.get()) is not None:
            yield message

    call: Any = channel.stream_stream(GRPC_METHOD)(requests())
    stats = Stats()
    try:
        for message in call:
            recv_ns = time.monotonic_ns()
            slot, phase, seq, ts = MSG.unpack_from(message, 0)
            if phase == END:
                break
            stats.frame(phase, seq, ts, recv_ns, memoryview(message)[MSG.size :])
            releases.put(REL.pack(slot, 0, seq))
    finally:
        releases.put(None)
        call.cancel()
        channel.close()
    return stats.report()


# ---------------------------------------------------------------- multiprocessing.shared_memory + Queue


class MpProducer:
    def __init__(self, shm_name: str, frames_q: Any, releases_q: Any) -> None:
        from multiprocessing import shared_memory

        self.shm = shared_memory.SharedMemory(name=shm_name)
        assert self.shm.buf is not None
        self.view: memoryview = self.shm.buf
        self.frames_q, self.releases_q = frames_q, releases_q
        self.free_slots: deque[int] = deque(range(SLOTS))

    @property
    def free(self) -> int:
        return len(self.free_slots)

    def pump(self, timeout: float) -> None:
        try:
            self.free_slots.append(self.releases_q.get(timeout=max(timeout, 0.0))[0])
            while True:
                self.free_slots.append(self.releases_q.get_nowait()[0])
        except queue.Empty:
            pass

    def acquire(self) -> int:
        return self.free_slots.popleft()

    def write(self, slot: int, seq: int) -> None:
        write_frame(self.view[slot * FRAME : (slot + 1) * FRAME], seq)

    def publish(self, slot: int, phase: int, seq: int) -> None:
        self.frames_q.put((slot, phase, seq, time.monotonic_ns()))

    def end(self) -> None:
        self.frames_q.put((NO_SLOT, END, 0, time.monotonic_ns()))

    def close(self) -> None:
        del self.view
        self.shm.close()


def mp_producer_main(shm_name: str, frames_q: Any, releases_q: Any, results_q: Any, options: dict) -> None:
    args = argparse.Namespace(**options)
    deadline = time.monotonic() + args.timeout
    guard(args.timeout + 5)
    transport = MpProducer(shm_name, frames_q, releases_q)
    try:
        results_q.put(run_producer(transport, args, deadline))
    finally:
        transport.close()


def mp_consumer_main(shm_name: str, frames_q: Any, releases_q: Any, results_q: Any, options: dict) -> None:
    from multiprocessing import shared_memory

    guard(options["timeout"] + 5)
    shm = shared_memory.SharedMemory(name=shm_name)
    view = shm.buf
    assert view is not None
    stats = Stats()
    try:
        while True:
            slot, phase, seq, ts = frames_q.get(timeout=options["timeout"])
            recv_ns = time.monotonic_ns()
            if phase == END:
                break
            stats.frame(phase, seq, ts, recv_ns, view[slot * FRAME : (slot + 1) * FRAME])
            releases_q.put((slot, seq))
        results_q.put(stats.report())
    finally:
        del view
        shm.close()


def mp_host(args: argparse.Namespace) -> dict[str, Any]:
    import multiprocessing
    from multiprocessing import shared_memory

    ctx = multiprocessing.get_context("spawn")  # fork with threads around is unsafe; 3.14 stops defaulting to it
    shm = shared_memory.SharedMemory(create=True, size=SLOTS * FRAME)
    frames_q, releases_q, results_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
    options = vars(args)
    procs = [
        ctx.Process(target=mp_consumer_main, args=(shm.name, frames_q, releases_q, results_q, options)),
        ctx.Process(target=mp_producer_main, args=(shm.name, frames_q, releases_q, results_q, options)),
    ]
    try:
        for proc in procs:
            proc.start()
        got = [results_q.get(timeout=args.timeout + 10) for _ in procs]
        for proc in procs:
            proc.join(10)
        producer = next(r for r in got if r["role"] == "producer")
        consumer = next(r for r in got if r["role"] == "consumer")
        return {"producer": producer, "consumers": [consumer], "shm_name": shm.name}
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        for q in (frames_q, releases_q, results_q):
            q.close()
            q.join_thread()
        shm.close()
        shm.unlink()


# ---------------------------------------------------------------- bufbroker streams


class BufbrokerProducer:
    """A bufbroker stream of SLOTS memfd slots (PATH is the broker's socket dir); the phase travels in meta.

    The stream numbers frames from 1, so the frame header carries the
    stream's seq (``last_seq + 1``), which the consumer checks against the
    seq its Frame message carries.
    """

    def __init__(self, path: str, consumers: int, deadline: float) -> None:
        import bufbroker

        self.session = bufbroker.connect(path, reconnect=False, name="bench-producer")
        # max_held=SLOTS: a consumer may hold every slot, as the floor's socket queues up to SLOTS frame
        # messages and iceoryx2's subscriber borrows up to SLOTS samples. (With max_held=1 the producer
        # would send each frame only once the previous release reached it: one round trip per frame.)
        self.stream = self.session.create_stream(
            "bench", slots=SLOTS, size=FRAME, offers=["memfd"], drop="block", max_held=SLOTS
        )
        while len(self.stream.consumers()) < consumers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bufbroker: {consumers} consumers did not subscribe")
            time.sleep(0.002)
        self.loaned: Any = None  # a frame pump() acquired ahead of acquire()
        self.frame: Any = None
        self.phases = [bytes([phase]) for phase in range(END + 1)]

    @property
    def free(self) -> int:
        return self.stream.free_slots() + (1 if self.loaned is not None else 0)

    def pump(self, timeout: float) -> None:
        if self.loaned is None:
            try:
                self.loaned = self.stream.acquire(timeout=max(timeout, 0.0))
            except TimeoutError:
                pass
        elif self.stream.free_slots() + 1 >= SLOTS:
            time.sleep(max(timeout, 0.0))  # every slot is back: only the pacing to wait for, as the floor's poll does
        else:
            time.sleep(min(timeout, 0.0005))  # waiting for the other slots (phase changes only)

    def acquire(self) -> int:
        frame, self.loaned = self.loaned, None
        self.frame = frame if frame is not None else self.stream.acquire(timeout=None)
        return int(self.frame.slot)

    def write(self, slot: int, seq: int) -> None:
        write_frame(self.frame.memoryview(), self.stream.last_seq + 1)

    def publish(self, slot: int, phase: int, seq: int) -> None:
        self.frame.publish(meta=self.phases[phase])
        self.frame = None

    def end(self) -> None:
        if self.loaned is not None:
            self.loaned.abandon()
            self.loaned = None
        self.stream.close()  # Bye (end of stream) on every link

    def close(self) -> None:
        self.session.close()


def bufbroker_consumer(path: str, deadline: float) -> dict[str, Any]:
    import bufbroker

    stats = Stats()
    with bufbroker.connect(path, reconnect=False, name="bench-consumer") as session:
        subscription = session.subscribe(
            "bench", accept=["memfd"], mode="queue", max_held=SLOTS, wait=max(1.0, deadline - time.monotonic())
        )
        with subscription:
            while True:
                try:
                    frame = subscription.receive(timeout=max(0.1, deadline - time.monotonic()))
                except bufbroker.EndOfStream:
                    break
                recv_ns = time.monotonic_ns()
                stats.frame(frame.meta[0], frame.seq, frame.timestamp_ns, recv_ns, frame.memoryview())
                frame.release()
    return stats.report()


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_peer")
    parser.add_argument("role", choices=["producer", "consumer", "mp-host"])
    parser.add_argument("transport", choices=["floor", "iceoryx2", "grpc", "mp", "bufbroker"])
    parser.add_argument("path")
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--paced", type=int, default=300)
    parser.add_argument("--fps", type=float, default=200.0)
    parser.add_argument("--unpaced", type=int, default=3000)
    parser.add_argument("--unpaced-s", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    guard(args.timeout + 5)
    if args.role == "mp-host":
        emit(mp_host(args))
        return 0
    if args.role == "consumer":
        if args.transport == "floor":
            emit(floor_consumer(args.path, deadline))
        elif args.transport == "iceoryx2":
            emit(iox_consumer(args.path, args.consumers, deadline))
        elif args.transport == "grpc":
            emit(grpc_consumer(args.path, deadline))
        elif args.transport == "bufbroker":
            emit(bufbroker_consumer(args.path, deadline))
        else:
            parser.error("the mp consumer runs under mp-host")
        return 0
    transport: Any
    if args.transport == "floor":
        transport = FloorProducer(args.path, args.consumers, deadline)
    elif args.transport == "iceoryx2":
        transport = IoxProducer(args.path, args.consumers, deadline)
    elif args.transport == "grpc":
        transport = GrpcProducer(args.path, deadline)
    elif args.transport == "bufbroker":
        transport = BufbrokerProducer(args.path, args.consumers, deadline)
    else:
        parser.error("the mp producer runs under mp-host")
    try:
        emit(run_producer(transport, args, deadline))
    finally:
        transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
