"""bufbroker.streams: the data plane of a stream, producer and consumers in one process.

Real memfds, real SOCK_SEQPACKET links, the producer's real pump thread;
only the broker's part (CreateStream, Subscribe: handing out the link ends
and the slot mappings) is played by the test, through the small
``ControlPlane`` below. tests/integration/test_streams.py runs the same
rules against a real broker with unrelated processes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

import pytest

from bufbroker import errors, streams
from bufbroker.attachment import Attachment
from bufbroker.backing import make_memfd
from bufbroker.buffers import ExportedBuffer
from bufbroker.streamlink import HANDOFF_LATENCY_BOUNDS_US, LinkEnd
from bufbroker.streams import ConsumerFrame, Stream, Subscription
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mt
from bufbroker.v1 import stream_pb2 as link_pb

SIZE = 4096


class ControlPlane:
    """What the broker does for a stream, for one process: the fd tickets and the RPCs the handles make.

    Moves too, as the broker does them: MoveBuffer tells every attachment
    of the buffer to unmap (MoveNotify) and swaps the backing, and a Map
    meanwhile waits for the swap (one lock), then maps the new backing.
    """

    def __init__(self) -> None:
        self.closed = False
        self.calls: list[tuple[str, object]] = []
        self.tickets: dict[int, list[int]] = {}
        self.next_ticket = 1
        self.link = self  # Stream reads transport.link.take_fds
        self.sent: dict[str, list[int]] = {}  # the broker's copies of fds sent with a nonce
        self.backing: dict[int, tuple[int, int, int, pb.Layout | None]] = {}  # buffer id: fd, size, generation, layout
        self.attachments: dict[int, Attachment] = {}
        self.moving = threading.Lock()
        self.next_mapping = 100

    def add_buffer(self, buffer_id: int, fd: int, size: int) -> None:
        self.backing[buffer_id] = (os.dup(fd), size, 1, None)

    def map_response(self, attachment_id: int, buffer_id: int) -> tuple[pb.MapResponse, list[int]]:
        fd, size, generation, layout = self.backing[buffer_id]
        self.next_mapping += 1
        response = pb.MapResponse(
            mapping_id=self.next_mapping,
            handle=mt.Handle(memfd=mt.MemfdHandle(size=size)),
            fd_count=1,
            size=size,
            generation=generation,
        )
        if layout is not None:
            response.layout.CopyFrom(layout)
        return response, [os.dup(fd)]

    def _move(self, request: pb.MoveBufferRequest) -> pb.MoveBufferResponse:
        (fd,) = self.sent.pop(request.nonce)
        with self.moving:
            for attachment in list(self.attachments.values()):
                if attachment.buffer_id == request.buffer_id:
                    attachment._on_move_notify("moved")  # unmaps here; maps again on its thread, after the swap
            old, _, generation, layout = self.backing[request.buffer_id]
            os.close(old)
            layout = request.layout if request.HasField("layout") else layout
            self.backing[request.buffer_id] = (fd, request.size, generation + 1, layout)
        return pb.MoveBufferResponse(
            buffer=pb.BufferInfo(id=request.buffer_id, size=request.size, generation=generation + 1)
        )

    def close(self) -> None:
        for fd, *_ in self.backing.values():
            os.close(fd)
        for fds in self.sent.values():
            for fd in fds:
                os.close(fd)

    def wait_connected(self, timeout: float | None = None) -> bool:
        return False  # no broker: reports are skipped

    def take_fds(self, ticket: int, count: int) -> list[int]:
        fds = self.tickets.pop(ticket)
        assert len(fds) == count
        return fds

    def call(self, method: str, request: object) -> object:
        self.calls.append((method, request))
        if method == "MoveBuffer":
            assert isinstance(request, pb.MoveBufferRequest)
            return self._move(request)
        return None

    def fast_call(self, method: str, request: object) -> tuple[object, list[int]]:
        self.calls.append((method, request))
        if method == "Map":
            assert isinstance(request, pb.MapRequest)
            with self.moving:
                return self.map_response(request.attachment_id, self.attachments[request.attachment_id].buffer_id)
        return None, []

    def send_fds(self, fds: list[int]) -> str:
        nonce = f"nonce{len(self.calls)}-{len(self.sent)}"
        self.sent[nonce] = [os.dup(fd) for fd in fds]
        return nonce

    def ticket(self, fds: list[int]) -> int:
        ticket = self.next_ticket
        self.next_ticket += 1
        self.tickets[ticket] = fds
        return ticket


class Pipeline:
    """One producer Stream over real memfd slots; ``subscribe()`` adds a consumer as the broker would."""

    def __init__(self, slots: int = 4, stall_timeout: float = 2.0, on_stall: int = 0, drop: str = "block") -> None:
        self.control = ControlPlane()
        self.memfds = [make_memfd(f"slot{k}", SIZE) for k in range(slots)]
        buffers = [
            ExportedBuffer(self.control, pb.BufferInfo(id=100 + k, size=SIZE), [os.dup(fd)], pb.RegisterBufferRequest())
            for k, fd in enumerate(self.memfds)
        ]
        for k, fd in enumerate(self.memfds):
            self.control.add_buffer(100 + k, fd, SIZE)
        info = pb.StreamInfo(id=7, name="cam0", stall_timeout=stall_timeout, on_stall=on_stall, max_held=slots - 1)
        self.stream = Stream(self.control, info, buffers, drop)
        self.subscriptions: list[Subscription] = []
        self.next_link = 1

    def subscribe(self, mode: str = "queue", max_held: int = 1) -> Subscription:
        producer_end, consumer_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        link_id = self.next_link
        self.next_link += 1
        slots = []
        fds = []
        for k in range(len(self.memfds)):
            mapping, mapped_fds = self.control.map_response(1000 * link_id + k, 100 + k)
            fds.append(mapped_fds)
            slots.append(
                pb.AttachResponse(
                    attachment_id=1000 * link_id + k, buffer_id=100 + k, map_type="memfd", mapping=mapping
                )
            )
        response = pb.SubscribeResponse(stream=self.stream.info, link_id=link_id, max_held=max_held, slots=slots)
        attachments = [Attachment(self.control, attached, None, fds[k]) for k, attached in enumerate(response.slots)]
        for attachment in attachments:
            self.control.attachments[attachment.id] = attachment
        sub = Subscription(self.control, response, attachments, LinkEnd(consumer_end), mode)
        mode_value = link_pb.CONSUMER_MODE_LATEST if mode == "latest" else link_pb.CONSUMER_MODE_QUEUE
        opened = pb.StreamLinkOpened(
            stream_id=7,
            link_id=link_id,
            consumer_pid=os.getpid(),
            mode=mode_value,
            max_held=max_held,
            fd_ticket=self.control.ticket([producer_end.detach()]),
        )
        self.stream._on_link_opened(opened)
        self.subscriptions.append(sub)
        return sub

    def publish(
        self, seq_pattern: bool = True, timeout: float = 1.0, meta: bytes = b"", fence: int | None = None
    ) -> int:
        with self.stream.acquire(timeout) as frame:
            seq = self.stream.last_seq + 1
            view = frame.memoryview()
            write_pattern(view, seq)
            return frame.publish(meta, fence)

    def close(self) -> None:
        for sub in self.subscriptions:
            sub.close()
        self.stream.close()
        for fd in self.memfds:
            os.close(fd)
        self.control.close()


def write_pattern(view: memoryview, seq: int) -> None:
    view[:8] = struct.pack("<Q", seq)
    view[8:SIZE] = bytes([seq & 0xFF]) * (SIZE - 8)


def check_pattern(frame: ConsumerFrame) -> None:
    view = frame.memoryview()
    assert struct.unpack("<Q", view[:8])[0] == frame.seq, "torn frame: its seq is not the one announced"
    assert view[8:SIZE] == bytes([frame.seq & 0xFF]) * (SIZE - 8), f"torn frame {frame.seq}"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pipeline():
    made: list[Pipeline] = []

    def make(**kwargs) -> Pipeline:
        made.append(Pipeline(**kwargs))
        return made[-1]

    yield make
    for p in made:
        p.close()


def wait_until(condition, timeout: float = 2.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.002)
    return time.monotonic() - started


# --- delivery --------------------------------------------------------------------------------


def test_queue_consumer_gets_every_frame_in_order_with_its_seq_meta_and_timestamp(pipeline):
    p = pipeline()
    sub = p.subscribe("queue", max_held=1)
    received = []

    def consume():
        for frame in sub:
            with frame:
                check_pattern(frame)
                received.append((frame.seq, frame.meta, frame.timestamp_ns))
            if frame.seq == 200:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    before = time.monotonic_ns()
    for seq in range(1, 201):
        p.publish(meta=f"m{seq}".encode())
    thread.join(10)
    assert [seq for seq, _, _ in received] == list(range(1, 201))
    assert all(meta == f"m{seq}".encode() for seq, meta, _ in received)
    assert all(before <= stamp <= time.monotonic_ns() for _, _, stamp in received)
    assert sub.skipped == 0


def test_a_slot_is_written_again_only_when_every_consumer_released_it(pipeline):
    p = pipeline(slots=2)
    subs = [p.subscribe("queue", max_held=1) for _ in range(3)]
    p.publish()
    frames = [sub.receive(1) for sub in subs]
    p.publish()
    for sub in subs:  # each holds its one slot: frame 2 waits for it
        with pytest.raises(TimeoutError):
            sub.receive(0.01)
    with pytest.raises(TimeoutError):
        p.stream.acquire(0.05)  # slot 0 held by all three, slot 1 waited for by all three
    frames[0].release()
    frames[1].release()
    with pytest.raises(TimeoutError):
        p.stream.acquire(0.05)  # the third still holds slot 0
    frames[2].release()
    frame = p.stream.acquire(1)
    assert frame.slot == 0
    frame.abandon()
    for sub in subs:
        with sub.receive(1) as second:
            assert second.seq == 2
            check_pattern(second)


def test_latest_consumer_has_frames_dropped_while_busy_and_counted(pipeline):
    p = pipeline(slots=4)
    sub = p.subscribe("latest", max_held=1)
    p.publish()
    held = sub.receive(1)
    for _ in range(5):
        p.publish()  # dropped for it: it holds its one slot
    held.release()
    link_id = p.stream.consumers()[0]
    wait_until(lambda: p.stream.counters()[link_id]["released"] == 1)  # the pump read the release
    p.publish()
    with sub.receive(1) as frame:
        assert frame.seq == 7
        check_pattern(frame)
    assert sub.skipped == 5
    assert p.stream.counters()[link_id]["dropped"]["busy"] == 5


def test_a_late_joiner_receives_from_the_next_frame_on(pipeline):
    p = pipeline()
    early = p.subscribe()
    for _ in range(3):
        p.publish()
        early.receive(1).release()
    late = p.subscribe()
    p.publish()
    with late.receive(1) as frame:
        assert frame.seq == 4
    assert late.skipped == 0
    assert early.receive(1).seq == 4


def test_drop_oldest_never_blocks_the_producer_and_never_hands_out_a_held_slot(pipeline):
    p = pipeline(slots=3, drop="oldest")
    sub = p.subscribe("queue", max_held=1)
    p.publish()
    held = sub.receive(1)
    for _ in range(10):
        with p.stream.acquire(0.05) as frame:
            assert frame.slot != held.slot
            write_pattern(frame.memoryview(), p.stream.last_seq + 1)
            frame.publish()
    check_pattern(held)  # never overwritten while held
    held.release()
    assert p.stream.counters()[p.stream.consumers()[0]]["dropped"]["overwritten"] > 0


def test_acquire_waits_then_times_out_when_no_slot_frees(pipeline):
    p = pipeline(slots=1)
    sub = p.subscribe()
    p.publish()
    frame = sub.receive(1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"no slot freed within 0\.1 s"):
        p.stream.acquire(0.1)
    assert 0.09 <= time.monotonic() - started < 0.5
    threading.Timer(0.05, frame.release).start()
    p.stream.acquire(2).abandon()  # woken by the release


def test_several_threads_waiting_in_acquire_each_get_a_slot_as_they_free(pipeline):
    p = pipeline(slots=2)
    sub = p.subscribe("queue", max_held=2)
    p.publish()
    p.publish()
    held = [sub.receive(1), sub.receive(1)]
    got: list[float] = []

    def wait_for_a_slot():
        frame = p.stream.acquire(5)
        got.append(time.monotonic())
        frame.abandon()

    threads = [threading.Thread(target=wait_for_a_slot) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    assert got == []
    released_at = time.monotonic()
    for frame in held:
        frame.release()
    for thread in threads:
        thread.join(5)
    assert len(got) == 2
    assert max(got) - released_at < 0.5


def test_leaving_the_with_block_unpublished_gives_the_slot_back(pipeline):
    p = pipeline(slots=1)
    with p.stream.acquire(0.1) as frame:
        frame.memoryview()[:1] = b"x"
    assert p.stream.free_slots() == 1
    with pytest.raises(ValueError, match="after it was published or abandoned"):
        frame.memoryview()


def test_meta_over_the_limit_is_refused_before_anything_is_sent(pipeline):
    p = pipeline()
    p.subscribe()
    with p.stream.acquire(0.1) as frame, pytest.raises(ValueError, match="exceeds the stream's limit of 4096"):
        frame.publish(b"x" * 4097)
    assert p.stream.last_seq == 0


def test_a_released_frame_cannot_be_read_any_more(pipeline):
    p = pipeline()
    sub = p.subscribe()
    p.publish()
    frame = sub.receive(1)
    frame.release()
    frame.release()  # a second release does nothing
    with pytest.raises(ValueError, match="after it was released"):
        frame.memoryview()


def test_receive_times_out_without_a_frame(pipeline):
    p = pipeline()
    sub = p.subscribe()
    with pytest.raises(TimeoutError):
        sub.receive(0)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        sub.receive(0.05)
    assert time.monotonic() - started >= 0.05


def test_numpy_views_are_writable_for_the_producer_and_read_only_for_consumers(pipeline):
    numpy = pytest.importorskip("numpy")
    p = pipeline()
    sub = p.subscribe()
    with p.stream.acquire(0.1) as frame:
        array = frame.numpy(numpy.uint32, (SIZE // 16, 4))
        array[:] = 7
        frame.publish()
    with sub.receive(1) as got:
        view = got.numpy(numpy.uint32, (SIZE // 16, 4))
        assert int(view.sum()) == 7 * SIZE // 4
        assert not view.flags.writeable
        assert got.numpy(numpy.uint32, (SIZE // 16, 4)) is view  # kept per slot


# --- lifecycle -------------------------------------------------------------------------------


def test_a_consumer_whose_link_closes_gives_its_slots_back_at_once(pipeline):
    p = pipeline(slots=2)
    sub = p.subscribe("queue", max_held=2)
    other = p.subscribe("queue", max_held=1)
    p.publish()
    p.publish()
    sub.receive(1)
    sub.receive(1)
    other.receive(1).release()
    other.receive(1).release()
    assert p.stream.free_slots() == 0
    sub._end.close()  # as a kill -9 would: no Bye
    took = wait_until(lambda: p.stream.free_slots() == 2, timeout=0.1)
    assert took < 0.1
    p.publish()
    assert other.receive(1).seq == 3


def test_closing_the_stream_is_end_of_stream_for_every_consumer(pipeline):
    p = pipeline()
    subs = [p.subscribe() for _ in range(2)]
    p.publish()
    p.stream.close()
    for sub in subs:
        assert [frame.seq for frame in sub] == [1]  # the frame sent before, then the end
        with pytest.raises(errors.EndOfStream, match="the producer ended the stream") as ended:
            sub.receive(1)
        assert ended.value.last_seq == 1
    with pytest.raises(errors.FailedPrecondition, match="is closed"):
        p.stream.acquire(0)
    assert ("DeleteStream", pb.DeleteStreamRequest(stream_id=7)) in p.control.calls


def test_a_producer_that_dies_is_end_of_stream(pipeline):
    p = pipeline()
    sub = p.subscribe()
    link = p.stream._links[1]
    os.close(link.end.sock.detach())  # the producer's end closes without a Bye
    with pytest.raises(errors.EndOfStream, match="closed"):
        sub.receive(1)


def test_an_unsubscribed_consumer_is_forgotten_by_the_producer(pipeline):
    p = pipeline()
    sub = p.subscribe()
    p.publish()
    sub.receive(1)
    sub.close()
    wait_until(lambda: not p.stream.consumers())
    assert p.stream.free_slots() == 4


def test_a_release_of_a_frame_never_sent_drops_the_consumer_with_a_protocol_error(pipeline):
    p = pipeline()
    sub = p.subscribe()
    sub._end.send_release(slot=2, seq=99, generation=1)
    with pytest.raises(errors.EndOfStream, match="bad release"):
        sub.receive(1)
    assert not p.stream.consumers()


# --- stalls ----------------------------------------------------------------------------------


def test_a_slot_held_past_the_stall_timeout_is_reclaimed_and_the_next_access_says_so(pipeline):
    p = pipeline(slots=2, stall_timeout=0.2)
    sub = p.subscribe("queue", max_held=1)
    p.publish()
    frame = sub.receive(1)
    frame.memoryview()
    started = time.monotonic()
    p.publish()  # waits in the consumer's backlog
    p.stream.acquire(1).abandon()  # never blocks much past the stall timeout
    assert time.monotonic() - started < 0.5
    time.sleep(0.1)
    with pytest.raises(
        errors.SlotReclaimed, match=r"slot 0 \(frame 1\) was reclaimed by the producer after you held it"
    ) as error:
        frame.memoryview()
    assert "stall_timeout 0.2 s" in str(error.value)
    assert isinstance(error.value, errors.FailedPrecondition)
    with pytest.raises(errors.SlotReclaimed):
        frame.release()
    with sub.receive(1) as second:  # the backlog came through
        assert second.seq == 2
    assert sub.reclaimed == 1


def test_on_stall_report_never_takes_a_slot_back(pipeline):
    p = pipeline(slots=1, stall_timeout=0.05, on_stall=pb.STALL_POLICY_REPORT)
    sub = p.subscribe()
    p.publish()
    frame = sub.receive(1)
    time.sleep(0.2)
    frame.memoryview()
    frame.release()
    assert sub.reclaimed == 0


# --- fences ----------------------------------------------------------------------------------


def test_wait_fence_blocks_until_the_producer_s_fence_signals(pipeline):
    p = pipeline()
    sub = p.subscribe()
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        p.publish(fence=fence)
        frame = sub.receive(1)
        assert len(frame.fences) == 1
        assert frame.wait_fence(0.05) is False
        threading.Timer(0.05, os.eventfd_write, (fence, 1)).start()
        started = time.monotonic()
        assert frame.wait_fence(2) is True
        assert time.monotonic() - started >= 0.04
        frame.release()
    finally:
        os.close(fence)


def test_a_backlogged_frame_carries_its_fence_too(pipeline):
    p = pipeline(slots=3)
    sub = p.subscribe("queue", max_held=1)
    fence = os.eventfd(1, os.EFD_CLOEXEC)
    p.publish()
    first = sub.receive(1)
    p.publish(fence=fence)  # waits: the consumer holds its one slot
    os.close(fence)  # the producer's own copy kept it
    first.release()
    with sub.receive(1) as second:
        assert second.seq == 2 and len(second.fences) == 1
        assert second.wait_fence(0) is True


def test_acquire_waits_for_the_consumer_s_release_fence(pipeline):
    p = pipeline(slots=1)
    sub = p.subscribe()
    p.publish()
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    sub.receive(1).release(fence=fence)
    wait_until(lambda: p.stream.free_slots() == 1)
    with pytest.raises(TimeoutError, match="release fences did not signal"):
        p.stream.acquire(0.05)
    os.eventfd_write(fence, 1)
    p.stream.acquire(1).abandon()
    os.close(fence)


# --- asyncio, fds, cost ----------------------------------------------------------------------


def test_frames_async_delivers_every_frame_until_the_end(pipeline):
    p = pipeline()
    sub = p.subscribe("queue", max_held=1)

    async def consume() -> list[int]:
        seqs = []
        async for frame in sub.frames_async():
            with frame:
                check_pattern(frame)
                seqs.append(frame.seq)
        return seqs

    def produce():
        for _ in range(50):
            p.publish()
        assert p.stream.drain(5)
        p.stream.close()

    threading.Timer(0.02, produce).start()
    assert asyncio.run(asyncio.wait_for(consume(), 10)) == list(range(1, 51))


def test_receive_async_times_out(pipeline):
    p = pipeline()
    sub = p.subscribe()
    with pytest.raises(TimeoutError):
        asyncio.run(sub.receive_async(0.05))


def test_a_stream_and_its_subscriptions_leave_no_fd_behind():
    baseline = open_fds()
    p = Pipeline(slots=3)
    subs = [p.subscribe("queue", 1), p.subscribe("latest", 1)]
    fence = os.eventfd(1, os.EFD_CLOEXEC)
    for seq in range(20):
        p.publish(fence=fence if seq % 2 else None)
        for sub in subs:
            try:
                frame = sub.receive(0.2)
            except TimeoutError:
                continue
            frame.release(fence=fence if seq % 3 == 0 else None)
    os.close(fence)
    subs[0]._end.close()  # one dies
    p.close()
    for sub in subs:
        for attachment in sub.attachments:
            attachment._close_locally()
    assert open_fds() == baseline


def test_print_per_frame_cost_acquire_publish_receive_release(pipeline, capsys):
    """One producer thread and one consumer thread in this process: µs per frame, end to end."""
    p = pipeline(slots=4)
    sub = p.subscribe("queue", max_held=2)
    count = 20_000
    done = threading.Event()

    def consume():
        for frame in sub:
            frame.release()
            if frame.seq == count:
                done.set()
                return

    thread = threading.Thread(target=consume)
    thread.start()
    stream = p.stream
    started = time.perf_counter()
    for _ in range(count):
        frame = stream.acquire(1)
        frame.publish()
    assert done.wait(20)
    elapsed = time.perf_counter() - started
    thread.join()
    with capsys.disabled():
        print(
            f"\n{count} frames through a 4-slot stream, one consumer thread: {elapsed / count * 1e6:.1f} µs per frame"
        )


# --- moves -----------------------------------------------------------------------------------


def write_sized(view: memoryview, seq: int, size: int) -> None:
    view[:8] = struct.pack("<Q", seq)
    view[8:size] = bytes([seq & 0xFF]) * (size - 8)


def check_sized(frame: ConsumerFrame) -> None:
    size = frame.size
    array = frame.numpy()
    assert array.nbytes == size == frame.memoryview().nbytes
    assert struct.unpack("<Q", array[:8].tobytes())[0] == frame.seq, "a frame read through another generation"
    assert array[8:].tobytes() == bytes([frame.seq & 0xFF]) * (size - 8), f"torn frame {frame.seq}"


def test_a_move_waits_for_every_frame_then_frames_show_the_new_generation_size_and_layout(pipeline):
    from bufbroker.planes import packed_layout

    p = pipeline(slots=3)
    queue_sub = p.subscribe("queue", max_held=1)
    latest_sub = p.subscribe("latest", max_held=1)
    for _ in (1, 2):
        p.publish()
        for sub in (queue_sub, latest_sub):
            with sub.receive(1) as frame:
                check_sized(frame)  # numpy arrays of the old mappings stay cached
                assert (frame.generation, frame.layout, frame.size) == (1, None, SIZE)
        wait_until(lambda: p.stream.free_slots() == 3)  # the latest consumer is not busy for the next frame
    p.publish()
    held = queue_sub.receive(1)  # held across the start of the move: the move waits for it
    latest_sub.receive(1).release()
    layout, size = packed_layout("GREY", 128, 96)
    moved: list[int] = []
    mover = threading.Thread(target=lambda: moved.append(p.stream.move(layout=layout)))
    mover.start()
    time.sleep(0.1)
    assert not moved, "the stream moved while a consumer still held a frame"
    acquired: list[tuple[int, float]] = []

    def acquire_during_the_move():
        with p.stream.acquire(5) as frame:
            acquired.append((frame.generation, time.monotonic()))

    waiter = threading.Thread(target=acquire_during_the_move)
    waiter.start()
    time.sleep(0.05)
    assert not acquired, "acquire() handed out a slot during the move"
    check_sized(held)
    held.release()
    mover.join(5)
    waiter.join(5)
    assert moved == [2] and p.stream.generation == 2 and p.stream.layout == layout and p.stream.size == size
    assert [b.size for b in p.stream.buffers] == [size] * 3
    assert acquired and acquired[0][0] == 2
    for seq in range(4, 10):
        with p.stream.acquire(1) as frame:
            assert frame.generation == 2 and frame.layout == layout
            write_sized(frame.memoryview(), seq, size)
            frame.publish()
        for sub in (queue_sub, latest_sub):
            with sub.receive(2) as got:
                assert got.seq == seq
                assert (got.generation, got.layout, got.size) == (2, layout, size)
                assert got.mapping.generation == 2
                check_sized(got)
        wait_until(lambda: p.stream.free_slots() == 3)
    assert queue_sub.generations == [2, 2, 2] and latest_sub.generations == [2, 2, 2]
    assert queue_sub.skipped == 0 and queue_sub.stale == 0


def test_a_release_of_an_older_generation_is_ignored_by_the_producer(pipeline):
    p = pipeline(slots=2)
    sub = p.subscribe("queue", max_held=1)
    p.publish()
    sub.receive(1).release()
    assert p.stream.move(size=2 * SIZE) == 2
    # Frame 1 (slot 0, generation 1) released again, as a late release of a reclaimed frame crosses a move.
    sub._end.send_release(slot=0, seq=1, generation=1)
    with p.stream.acquire(1) as frame:
        write_sized(frame.memoryview(), 2, 2 * SIZE)
        frame.publish()
    with sub.receive(1) as got:
        assert (got.seq, got.generation) == (2, 2)
        check_sized(got)
    wait_until(lambda: p.stream.free_slots() == 2)
    assert p.stream.consumers()
    # The same release at the current generation is a release of a frame never sent: a protocol error.
    sub._end.send_release(slot=0, seq=1, generation=2)
    with pytest.raises(errors.EndOfStream, match="bad release"):
        sub.receive(1)
    assert not p.stream.consumers()


def test_a_move_times_out_while_a_frame_stays_held_and_the_stream_goes_on_unmoved(pipeline):
    p = pipeline(slots=2, on_stall=pb.STALL_POLICY_REPORT)
    sub = p.subscribe()
    p.publish()
    frame = sub.receive(1)
    with pytest.raises(TimeoutError, match=r"not moved: its frames were not all released within 0.1 s"):
        p.stream.move(size=2 * SIZE, timeout=0.1)
    assert p.stream.generation == 1 and p.stream.size == SIZE
    frame.release()
    p.publish()
    with sub.receive(1) as got:
        assert got.generation == 1
        check_sized(got)


def test_a_frame_of_a_generation_the_consumer_cannot_map_is_released_unread_with_a_clear_error(pipeline, monkeypatch):
    from bufbroker import streams

    monkeypatch.setattr(streams, "REMAP_TIMEOUT", 0.1)
    p = pipeline(slots=2)
    sub = p.subscribe()
    for _ in (1, 2):
        p.publish()
        sub.receive(1).release()  # both slots mapped at generation 1 here
        wait_until(lambda: p.stream.free_slots() == 2)
    p.stream._slot_generations[:] = [2, 2]  # a generation whose mapping never comes (no MoveNotify)
    p.publish()
    with pytest.raises(errors.FailedPrecondition, match=r"frame 3 shows generation 2 of slot \d") as error:
        sub.receive(1)
    assert "not replaced by one of the moved backing" in str(error.value)
    wait_until(lambda: p.stream.free_slots() == 2)  # released unread: the producer got its slot back


def test_latency_histogram_counts_each_latency_once_in_the_first_bucket_that_bounds_it():
    # Bounds 10, 25, 50, 100, ... 100000 us; one more bucket above the last.
    latencies_ns = sorted([0, 10_000, 10_001, 99_000, 100_000, 100_000_001, 5_000_000_000])
    counts = streams.latency_histogram(latencies_ns)
    assert len(counts) == len(HANDOFF_LATENCY_BOUNDS_US) + 1 == 14
    assert counts[0] == 2  # <= 10 us (10 us itself included, as Prometheus's le)
    assert counts[1] == 1 and counts[3] == 2  # 10.001 us; 99 us and 100 us
    assert counts[-1] == 2 and sum(counts) == len(latencies_ns)
    assert streams.latency_histogram([]) == [0] * 14
