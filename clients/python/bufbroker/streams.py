"""Streams: frames flowing through a pool of slot buffers, producer to consumers, directly.

A producer's ``Stream`` (``Session.create_stream``) owns N slot buffers and
a ``SlotPool``; each consumer's ``Subscription`` (``Session.subscribe``) is
attached and mapped to every slot by the broker, which then hands each side
one end of a SOCK_SEQPACKET *link* (``bufbroker.streamlink``). From then on
every frame is one datagram producer -> consumer and every release one
datagram back; the broker sees none of them.

The pairs follow what the caller holds:

- producer: ``stream.acquire()`` loans a ``ProducerFrame`` (a free slot), the
  producer writes it and ``frame.publish()`` sends it; leaving its
  ``with`` block unpublished ``abandon()``s it.
- consumer: ``sub.receive()`` gives a ``ConsumerFrame`` the consumer holds
  until ``frame.release()`` (also on leaving its ``with`` block).

Threads. The producer's *pump* thread reads every link (releases, byes,
EOF of a dead consumer: its slots return at once), applies the stall
policy every ``STALL_CHECK`` seconds and reports counters to the broker at
most twice a second; the session's events thread adds the links the
broker opens. While a thread waits in ``acquire`` for a slot, that thread
reads the links instead of the pump (the release it waits for wakes it
directly, with no second thread to wake), and the pump takes over again
within ``HANDOVER_CHECK`` seconds once nobody waits. ``acquire`` and
``publish`` may be called from any thread (one lock guards the pool). A
``Subscription`` and its frames are used from one thread (or one asyncio
loop): it has no thread of its own, and its counters go to the broker from
``receive`` at most twice a second.

Moves (``Stream.move``: a resolution change). The producer stops handing
out slots, drains (waits until every frame published was released, so no
consumer reads a slot while it moves), moves each slot buffer through the
buffers' own move path (the broker's MoveNotify makes every consumer's SDK
unmap and map again) and only then hands out slots again: every frame
after carries the new generation (``Frame.generation``, per slot the
number of times that slot buffer moved, plus one). A consumer keeps, per
slot, the generation its mapping shows; a frame of a newer one waits
(bounded) for that slot's new mapping before ``receive`` returns it, so no
frame is ever read through a mapping of another generation. Releases of
an older generation reach the producer only for frames it took back, and
it ignores them. With no move, the per-frame cost is one integer compare
on each side.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import select
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import grpc

from bufbroker import dmabuf, errors, fdwire, formats, specs
from bufbroker.attachment import Attachment
from bufbroker.attachment import Mapping as SlotMapping
from bufbroker.buffers import ExportedBuffer
from bufbroker.implicit_fences import ImplicitFences
from bufbroker.planes import layout_bytes, layout_from_wire
from bufbroker.slotpool import ConsumerMode, Delivery, DropPolicy, NotHeldError, SlotPool, SlotState
from bufbroker.specs import Spec
from bufbroker.streamlink import (
    DEFAULT_MAX_META_BYTES,
    HANDOFF_LATENCY_BOUNDS_US,
    LinkClosed,
    LinkEnd,
    LinkError,
    Received,
)
from bufbroker.transport import Transport
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import stream_pb2 as link_pb

log = logging.getLogger("bufbroker")

StallAction = Literal["reclaim", "report"]
STALL_POLICIES: dict[str, pb.StallPolicy] = {"reclaim": pb.STALL_POLICY_RECLAIM, "report": pb.STALL_POLICY_REPORT}
MODES: dict[str, link_pb.ConsumerMode] = {"queue": link_pb.CONSUMER_MODE_QUEUE, "latest": link_pb.CONSUMER_MODE_LATEST}
DEFAULT_STALL_TIMEOUT = 2.0  # the broker's default (setting stream_stall_timeout), if it sends none
STALL_CHECK = 0.05  # seconds between the producer's stall checks
HANDOVER_CHECK = 0.01  # seconds: how soon the pump reads the links again once no acquire() waits on them
REPORT_PERIOD = 0.5  # seconds between counter reports to the broker (at most 2/s)
REPORT_TIMEOUT = 1.0  # a report never holds its thread longer than this
FIRST_GENERATION = 1  # slot buffers start at generation 1; each Stream.move adds one
MOVE_DRAIN_TIMEOUT = 5.0  # Stream.move's default wait for every slot to come back before moving
REMAP_TIMEOUT = 5.0  # a consumer's longest wait for a moved slot's new mapping (the broker's move deadline is 2 s)
_LATENCY_SAMPLES = 4096  # most hand-off latencies kept per report period


def _fence_tuple(fence: int | Sequence[int] | None) -> tuple[int, ...]:
    if fence is None:
        return ()
    if isinstance(fence, int):
        return (fence,)
    return tuple(fence)


def _wait_readable(fds: Sequence[int], timeout: float | None) -> bool:
    """Wait until every fd in ``fds`` is readable (a signalled fence); False after ``timeout`` seconds."""
    if not fds:
        return True
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    waiting = set(fds)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        ready = poller.poll(None if left is None else max(0, int(left * 1000) + (left > 0)))
        for fd, _ in ready:
            if fd in waiting:
                waiting.discard(fd)
                poller.unregister(fd)
        if not waiting:
            return True
        if left is not None and left <= 0:
            return False


if TYPE_CHECKING:
    _ReportCall = grpc.Future[Any]  # a ReportStreamStats in flight (its result is not used)
else:
    _ReportCall = grpc.Future  # not subscriptable at run time


def report_stats(transport: Transport, request: pb.ReportStreamStatsRequest) -> _ReportCall | None:
    """Start one ReportStreamStats without waiting for its answer; the call, or None if not sent.

    Counters are best effort: a refusal (rate limit, a broker restart, an
    old broker) is logged at debug level and the next period tries again.
    The call is not waited for (gRPC's own threads carry it, for at most
    REPORT_TIMEOUT): it is sent from the threads that move frames (the
    producer's pump, the consumer's ``receive``), and a round trip to the
    broker there would hold up the frame that arrives meanwhile.
    """
    if transport.closed or not transport.wait_connected(0):
        return None
    link = transport.link
    try:
        call: _ReportCall = link.stub.ReportStreamStats.future(
            request, metadata=link.call_metadata(), timeout=REPORT_TIMEOUT
        )
    except grpc.RpcError as error:
        log.debug("bufbroker: stream %d stats not reported: %s", request.stream_id, errors.from_rpc_error(error))
        return None
    except errors.BrokerError as error:
        log.debug("bufbroker: stream %d stats not reported: %s", request.stream_id, error)
        return None
    stream_id = request.stream_id

    def done(call: _ReportCall) -> None:
        try:
            error = call.exception()
        except grpc.FutureCancelledError:
            return
        if error is not None:
            reason = errors.from_rpc_error(error) if isinstance(error, grpc.RpcError) else error
            log.debug("bufbroker: stream %d stats not reported: %s", stream_id, reason)

    call.add_done_callback(done)
    return call


def _reporting(call: _ReportCall | None) -> bool:
    """Whether an earlier report is still on its way (the next one waits for its period then)."""
    return call is not None and not call.done()


# --- producer -------------------------------------------------------------------------


class ProducerFrame:
    """A slot loaned to the producer by ``Stream.acquire``: write it, then ``publish()`` it.

    Leaving its ``with`` block without publishing gives the slot back
    (``abandon()``). After publish or abandon the frame is spent: its views
    must not be written any more (the slot belongs to the consumers).
    """

    __slots__ = ("_spent", "_stream", "seq", "slot")

    def __init__(self, stream: Stream, slot: int) -> None:
        self._stream = stream
        self.slot = slot
        self.seq = 0  # set by publish
        self._spent = False

    @property
    def generation(self) -> int:
        """The generation of the slot's backing this frame is written in (1, then one more per move)."""
        return self._stream._slot_generations[self.slot]

    @property
    def layout(self) -> dict[str, Any] | None:
        """The stream's layout (as ``create_stream(layout=...)`` or the last ``move(layout=...)``), or None."""
        return self._stream.layout

    def memoryview(self) -> memoryview:
        """The slot's writable bytes (the whole slot buffer)."""
        self._check("memoryview")
        return self._stream._slot_view(self.slot)

    def numpy(self, dtype: Any = "uint8", shape: Any = None) -> Any:
        """A writable numpy array over the slot, without copying (kept per slot while dtype and shape stay)."""
        self._check("numpy")
        return self._stream._slot_array(self.slot, dtype, shape)

    def planes(self) -> list[Any]:
        """One writable numpy view per plane of the stream's layout (bufbroker.formats.plane_views), no copy."""
        self._check("planes")
        return formats.plane_views(self._stream._slot_view(self.slot), _needs_layout(self.layout, "planes"))

    def publish(self, meta: bytes = b"", fence: int | Sequence[int] | None = None) -> int:
        """Send the frame to the consumers; returns its seq.

        ``meta`` (at most 4096 bytes) travels with the frame. ``fence`` is a
        pollable fd (or several), readable once the frame's contents are
        ready (e.g. an eventfd the caller writes, or a sync_file); the
        consumers get duplicates and the caller keeps its own. Without one,
        a dma-buf slot sends its implicit fence (a sync_file of the writes
        still pending on the buffer, if any: see bufbroker.implicit_fences).
        """
        self._check("publish")
        stream = self._stream
        fences = _fence_tuple(fence)
        implicit = None
        if not fences and stream._dmabuf_slots[self.slot]:
            implicit = stream._implicit.pending(stream.buffers[self.slot].fd, write=False)
            fences = () if implicit is None else (implicit,)
        try:
            self.seq = stream._publish(self.slot, meta, fences)
        finally:
            if implicit is not None:
                os.close(implicit)  # _publish sent (or kept) its own duplicates
        self._spent = True
        return self.seq

    def abandon(self) -> None:
        """Give the slot back unpublished."""
        if self._spent:
            return
        self._spent = True
        self._stream._abandon(self.slot)

    def _check(self, verb: str) -> None:
        if self._spent:
            raise ValueError(f"{verb}() on slot {self.slot} after it was published or abandoned; acquire() a new frame")

    def __enter__(self) -> ProducerFrame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abandon()

    def __repr__(self) -> str:
        return f"<ProducerFrame slot={self.slot} seq={self.seq}{' spent' if self._spent else ''}>"


class _ProducerLink:
    """The producer's end of one consumer's link and what it knows of that consumer."""

    __slots__ = (
        "broker_link",
        "consumer_pid",
        "end",
        "gone",
        "hello",
        "key",
        "last_delivered",
        "link_id",
        "max_held",
        "mode",
        "name",
        "reported_at",
        "reported_delivered",
        "stall_reported",
    )

    def __init__(
        self,
        key: int,
        end: LinkEnd,
        opened: pb.StreamLinkOpened,
        mode: ConsumerMode,
        max_held: int,
        broker_link: object,
    ) -> None:
        self.key = key  # this producer's own number for the link: the broker's link ids start again after a restart
        self.link_id = opened.link_id  # the broker's, valid at ``broker_link`` only
        self.broker_link = broker_link
        self.end = end
        self.mode: ConsumerMode = mode
        self.max_held = max_held
        self.consumer_pid = opened.consumer_pid
        self.name = opened.consumer_name
        self.hello: link_pb.LinkHello | None = None
        self.gone = ""  # why, once the consumer is gone
        self.last_delivered = 0
        self.stall_reported = False
        self.reported_at = time.monotonic()  # when its fps was last reported, and its delivered count then
        self.reported_delivered = 0


class Stream:
    """A stream this session produces: N slot buffers, their pool and the links to its consumers.

    Made by ``Session.create_stream``. ``acquire()`` a frame, write it,
    ``publish()`` it. ``close()`` ends the stream: consumers get
    end-of-stream, the broker forgets it and the slot buffers are
    unregistered.
    """

    def __init__(
        self,
        transport: Transport,
        info: pb.StreamInfo,
        buffers: list[ExportedBuffer],
        drop: DropPolicy,
        on_close: Callable[[Stream], None] = lambda stream: None,
        offers: Sequence[Spec] | None = None,
        align: int = 1,
    ) -> None:
        self._transport = transport
        self._offers = list(offers or ("memfd",))  # as given: a move to another format re-tags them
        self._align = align  # row alignment of the layouts a renegotiation derives
        self._on_close = on_close
        self.buffers = buffers
        self.info = info
        self.name = info.name
        self.id = info.id
        self.slot_count = len(buffers)
        self.stall_timeout = info.stall_timeout or DEFAULT_STALL_TIMEOUT
        self.on_stall: StallAction = "report" if info.on_stall == pb.STALL_POLICY_REPORT else "reclaim"
        self.drop: DropPolicy = drop
        self.max_meta_bytes = info.max_meta_bytes or DEFAULT_MAX_META_BYTES  # the broker's stream_max_meta_bytes
        self._pool = SlotPool(self.slot_count, drop)
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._draining = 0  # threads waiting in drain(): only then does a freed slot notify _freed
        self._links: dict[Hashable, _ProducerLink] = {}  # by the link's key
        self._next_key = 0
        self._seq = 0
        self._closed = False
        # Moves: the stream's generation (1 + moves done), each slot's (what its frames carry:
        # equal to the stream's unless a failed move was rolled back) and the current layout.
        self._generation = FIRST_GENERATION
        self._slot_generations: list[int] = [FIRST_GENERATION] * self.slot_count
        self._moving = False  # while True acquire() hands out no slot
        first = buffers[0].request if buffers else None
        self._layout: dict[str, Any] | None = (
            layout_from_wire(first.layout) if first is not None and first.HasField("layout") else None
        )
        # Per slot: what its current frame was published with (a backlogged consumer gets it later).
        self._meta: list[bytes] = [b""] * self.slot_count
        self._stamp: list[int] = [0] * self.slot_count
        self._fences: list[tuple[int, ...]] = [()] * self.slot_count  # our duplicates of the publish fences
        self._release_fences: list[list[int]] = [[] for _ in range(self.slot_count)]
        self._views: list[memoryview | None] = [None] * self.slot_count
        self._arrays: list[tuple[Any, Any, Any] | None] = [None] * self.slot_count
        self._implicit = ImplicitFences(self.name)
        self._dmabuf_slots = [dmabuf.is_dmabuf(buffer.fd) for buffer in buffers]  # again after each move
        # Who reads the links. Every link fd is in ``_links_poll``. While a thread waits in
        # acquire() it reads them itself (a release wakes it directly); otherwise the pump does,
        # so the two do not wake (and contend for the GIL) for the same release. While the pump
        # is not watching, publish() first reads what is waiting (one epoll_wait).
        self._links_poll = select.epoll()
        self._links_by_fd: dict[int, _ProducerLink] = {}
        self._pump_watching = False
        self._acquirers = 0  # threads waiting in acquire()
        self._acquirers_reading = 0  # of those, reading the links now (a slot they free wakes nobody)
        self._acquire_wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._acquire_poll = select.epoll()
        self._acquire_poll.register(self._links_poll.fileno(), select.EPOLLIN)
        self._acquire_poll.register(self._acquire_wake, select.EPOLLIN)
        # The pump's selector: its wake-up, and the links' epoll while the producer is idle.
        self._selector = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._selector.register(self._wake, selectors.EVENT_READ, None)
        self._to_close: list[_ProducerLink] = []
        self._report_published = -1
        self._report_call: _ReportCall | None = None  # the last report to the broker, maybe still on its way
        self._created_at: object = transport.link  # the broker connection that knows ``id``
        self._report_at = time.monotonic()
        self._pump = threading.Thread(target=self._run_pump, name=f"bufbroker-stream-{self.name}", daemon=True)
        self._pump.start()

    # --- the producer's API ---------------------------------------------------------------

    def acquire(self, timeout: float | None = 1.0) -> ProducerFrame:
        """Loan a free slot to write; use as ``with stream.acquire() as frame:``.

        Waits up to ``timeout`` seconds (None: as long as it takes) for a
        slot to free when every one is published and held or waited for
        (with ``drop="oldest"`` the oldest frame no consumer holds is
        overwritten instead). Release fences a consumer sent for the slot
        are waited for too. Raises TimeoutError, or FailedPrecondition once
        the stream is closed.
        """
        deadline = None
        lock = self._lock
        lock.acquire()
        try:
            if self._closed:
                raise errors.FailedPrecondition(f"stream {self.name!r} is closed")
            slot = None if self._moving else self._pool.acquire()
            if slot is None:
                lock.release()
                try:
                    slot, deadline = self._acquire_waiting(timeout)
                finally:
                    lock.acquire()
            if self._fences[slot]:  # the fences of the frame it showed (overwritten, with drop="oldest")
                self._drop_fences(slot)
            fences = self._release_fences[slot]
            if fences:
                self._release_fences[slot] = []
        finally:
            lock.release()
        if fences:
            if deadline is None and timeout is not None:
                deadline = time.monotonic() + timeout
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not _wait_readable(fences, left):
                with self._lock:
                    self._release_fences[slot].extend(fences)
                    self._pool.abandon(slot)
                raise TimeoutError(
                    f"stream {self.name!r}: slot {slot}'s release fences did not signal within {timeout} s"
                )
            fdwire.close_fds(fences)
        return ProducerFrame(self, slot)

    def _acquire_waiting(self, timeout: float | None) -> tuple[int, float | None]:
        """acquire() when no slot is free: read the links on this thread until one frees (the lock is not held).

        Returns the slot and the deadline. A consumer's release usually
        arrives while this thread waits on the links: it handles it itself,
        with no other thread to wake.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._acquirers += 1
            self._acquirers_reading += 1
        try:
            while True:
                try:
                    self._read_ready(until_empty=False)  # the epoll below returns at once if more is waiting
                except BaseException:
                    with self._lock:
                        self._acquirers_reading -= 1
                    raise
                with self._lock:
                    self._acquirers_reading -= 1
                    if self._closed:
                        raise errors.FailedPrecondition(f"stream {self.name!r} is closed")
                    slot = None if self._moving else self._pool.acquire()
                    if slot is not None:
                        return slot, deadline
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        if self._moving:
                            raise TimeoutError(
                                f"stream {self.name!r}: no slot within {timeout} s: the stream is moving"
                            )
                        raise TimeoutError(self._no_slot_message(timeout))
                for fd, _ in self._acquire_poll.poll(-1 if left is None else left):
                    if fd == self._acquire_wake:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._acquire_wake)
                with self._lock:
                    self._acquirers_reading += 1
        finally:
            with self._lock:
                self._acquirers -= 1

    def _read_ready(self, until_empty: bool = True) -> None:
        """Read the links that have something waiting; the lock is not held.

        One message per ready link per round, then epoll again: ending on an
        empty epoll_wait costs less than reading each link until the EAGAIN
        that says it is empty (in Python that is an exception, per link and
        per round), and a link with more waiting simply shows up again.
        ``until_empty=False`` reads one round only, for callers that epoll
        again anyway (acquire's wait) or only want what is there now
        (publish): one epoll_wait fewer per frame.
        """
        poll = self._links_poll.poll
        links_by_fd = self._links_by_fd
        while True:
            read = False
            for fd, _ in poll(0):
                link = links_by_fd.get(fd)
                if link is not None and self._read_link(link):
                    read = True
            if not (read and until_empty):  # nothing waiting (or only what another reader took first)
                return

    def _slot_freed(self) -> None:
        """A slot may be free now (the lock is held): wake drain() and the acquire()s that are not reading."""
        if self._draining:  # Condition.notify_all costs a few Python calls and lock round trips even with no waiter
            self._freed.notify_all()
        if self._acquirers > self._acquirers_reading:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._acquire_wake, 1)

    def close(self) -> None:
        """End the stream: Bye (end of stream) on every link, DeleteStream, unregister the slot buffers."""
        if not self._close_locally():
            return
        if not self._transport.closed:
            with contextlib.suppress(errors.BrokerError):  # already gone at the broker (e.g. it restarted)
                self._transport.call("DeleteStream", pb.DeleteStreamRequest(stream_id=self.id))
        for buffer in self.buffers:
            if self._transport.closed:
                buffer.close()
            else:
                try:
                    buffer.unregister()
                except errors.BrokerError:
                    buffer.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_seq(self) -> int:
        """The seq of the last frame published (0 before the first)."""
        return self._seq

    @property
    def published(self) -> int:
        return self._pool.published

    def consumers(self) -> list[int]:
        """The link ids of the consumers frames go to now."""
        with self._lock:
            return [link.key for link in self._links.values() if not link.gone]

    def counters(self) -> dict[int, dict[str, Any]]:
        """Per consumer link id: mode, max_held, delivered, dropped (by reason), released, reclaimed, held, lag, pid."""
        with self._lock:
            result: dict[int, dict[str, Any]] = {}
            for link in self._links.values():
                if link.gone:
                    continue
                c = self._pool.counters(link.key)
                result[link.key] = {
                    "link_id": link.link_id,
                    "mode": c.mode,
                    "max_held": c.max_held,
                    "delivered": c.delivered,
                    "dropped": dict(c.dropped),
                    "released": c.released,
                    "reclaimed": c.reclaimed,
                    "held": c.held,
                    "waiting": c.waiting,
                    "lag": self._seq - link.last_delivered,
                    "pid": link.consumer_pid,
                }
            return result

    def drain(self, timeout: float | None = 1.0) -> bool:
        """Wait until every frame published was delivered and released (every slot free); False after ``timeout``.

        Call it before ``close()`` when queue consumers must get every frame:
        ``close()`` ends the stream at once, and frames still waiting for a
        consumer are not sent.
        """
        with self._lock:
            self._draining += 1
            try:
                return (
                    self._freed.wait_for(lambda: self._closed or self._pool.free_count == self.slot_count, timeout)
                    and not self._closed
                )
            finally:
                self._draining -= 1

    def free_slots(self) -> int:
        """Slots ``acquire`` can hand out now without waiting or dropping."""
        with self._lock:
            return self._pool.free_count

    @property
    def generation(self) -> int:
        """The stream's generation: 1, then one more per ``move()``; the frames published now carry it."""
        return self._generation

    @property
    def layout(self) -> dict[str, Any] | None:
        """The slots' layout now (``create_stream(layout=...)``, then the last ``move(layout=...)``), or None."""
        return self._layout

    @property
    def size(self) -> int:
        """The bytes of each slot now."""
        return self.buffers[0].size if self.buffers else 0

    def move(
        self,
        size: int | None = None,
        layout: Mapping[str, Any] | None = None,
        *,
        offers: Sequence[Spec] | None = None,
        fds: Sequence[int] | None = None,
        timeout: float | None = MOVE_DRAIN_TIMEOUT,
        reason: str = "",
    ) -> int:
        """Re-allocate every slot (a resolution change): ``size`` bytes, or what ``layout`` needs; the new generation.

        ``acquire()`` hands out no slot meanwhile (it waits, up to its own
        timeout). First every frame published is delivered and released
        (as ``drain()``; a consumer holding one past the stall timeout has
        it reclaimed), up to ``timeout`` seconds, else TimeoutError and the
        stream goes on unmoved. Then each slot buffer moves as
        ``ExportedBuffer.move`` does (same buffer ids; every consumer's SDK
        unmaps and maps the new backing), and the stream's generation goes
        up by one: frames published from now on carry it, with the new
        layout, and consumers read them only through mappings of it. A slot
        that fails to move (e.g. FailedPrecondition: pinned by a compat
        importer) raises that error after the slots already moved were moved
        back to the old size and layout. Do not hold an acquired frame
        across ``move()``: it waits for it. ``size`` without ``layout``
        keeps the layout the slots had; ``offers`` (default: the same)
        are as ``ExportedBuffer.move`` takes them. ``fds``: one new backing
        per slot (a memfd or dma-buf each, as ``create_stream(fds=...)``;
        you keep yours), else the SDK makes memfds.
        """
        if fds is not None and len(fds) != self.slot_count:
            raise ValueError(f"move() got {len(fds)} fds for the {self.slot_count} slots of stream {self.name!r}")
        if size is None and layout is not None:
            size = layout_bytes(layout)
        if size is None and fds is None:
            raise ValueError("move() needs size=, layout= or fds=")
        pair = layout_pair(layout)
        if offers is None and pair is not None and layout_pair(self._layout) is not None:
            offers = specs.with_formats(specs.without_formats(self._offers), [pair])  # the slots' new pair
        with self._lock:
            if self._closed:
                raise errors.FailedPrecondition(f"stream {self.name!r} is closed")
            if self._moving:
                raise errors.FailedPrecondition(f"stream {self.name!r} is already moving")
            self._moving = True
        try:
            if not self.drain(timeout):
                with self._lock:
                    if self._closed:
                        raise errors.FailedPrecondition(f"stream {self.name!r} is closed")
                    holders = self._no_slot_message(timeout).partition("(")[2].rstrip(")")
                raise TimeoutError(
                    f"stream {self.name!r} not moved: its frames were not all released within {timeout} s ({holders})"
                )
            generation = self._generation + 1
            why = reason or f"stream {self.name!r} moves to generation {generation}"
            old_size, old_layout = self.size, self._layout
            self._release_views()
            moved: list[int] = []
            try:
                for slot, buffer in enumerate(self.buffers):
                    backing: int | list[int] = [fds[slot]] if fds is not None else size or 0
                    buffer.move(backing, layout=layout, offers=offers, reason=why, size=size)
                    moved.append(slot)
                    self._slot_generations[slot] += 1
            except BaseException:
                self._move_back(moved, old_size, old_layout)
                raise
            finally:
                self._dmabuf_slots = [dmabuf.is_dmabuf(buffer.fd) for buffer in self.buffers]
            with self._lock:
                self._generation = generation
                if layout is not None:
                    self._layout = dict(layout)
            return generation
        finally:
            with self._lock:
                self._moving = False
                self._slot_freed()  # wakes the acquire()s that waited out the move

    def _move_back(self, moved: list[int], size: int, layout: dict[str, Any] | None) -> None:
        """A move failed part way: move the slots already moved back to the old size and layout (best effort).

        They keep their higher generation (a consumer follows them as any
        move); the slots that did not move keep theirs.
        """
        for slot in moved:
            try:
                self.buffers[slot].move(size, layout=layout, reason=f"stream {self.name!r}: a failed move undone")
                self._slot_generations[slot] += 1
            except errors.BrokerError as error:
                log.error(
                    "bufbroker: stream %r: slot %d could not be moved back after a failed move: %s",
                    self.name,
                    slot,
                    error,
                )

    def _release_views(self) -> None:
        """Drop the producer's views of the slots (before a move or at close): the next access maps again."""
        self._arrays = [None] * self.slot_count
        for view in self._views:
            if view is not None:
                with contextlib.suppress(BufferError):  # an array the caller still holds keeps the old pages
                    view.release()
        self._views = [None] * self.slot_count

    # --- the hot path ---------------------------------------------------------------------

    def _publish(self, slot: int, meta: bytes, fences: tuple[int, ...]) -> int:
        if len(meta) > self.max_meta_bytes:
            raise ValueError(f"frame meta of {len(meta)} bytes exceeds the stream's limit of {self.max_meta_bytes}")
        if not self._pump_watching and self._links_by_fd:
            self._read_ready(until_empty=False)  # releases first: a latest consumer that is done gets this frame
        with self._lock:
            if self._closed:
                raise errors.FailedPrecondition(f"stream {self.name!r} is closed")
            seq = self._seq + 1
            self._seq = seq
            self._meta[slot] = meta
            if fences:
                # A queue consumer at its cap gets this frame later: keep the fences until the slot is reused.
                self._fences[slot] = tuple(os.dup(fd) for fd in fences)
            deliveries = self._pool.publish(slot, seq)
            # The frame's timestamp: taken once the pool decided who gets it, right before the
            # first send (as a raw socket or iceoryx2 publisher stamps its message).
            self._stamp[slot] = time.monotonic_ns()
            if deliveries:
                self._send(deliveries)
            if self._fences[slot] and self._pool.slot_state(slot) is SlotState.FREE:
                self._drop_fences(slot)
            return seq

    def _abandon(self, slot: int) -> None:
        with self._lock:
            self._pool.abandon(slot)
            self._slot_freed()

    def _send(self, deliveries: list[Delivery]) -> None:
        """Send each delivery's frame on its link (the lock is held); a link that fails is dropped."""
        links = self._links
        encoded = b""
        encoded_seq = 0
        for consumer, slot, seq in deliveries:
            link = links.get(consumer)
            if link is None or link.gone:
                continue
            fences = self._fences[slot]
            try:
                if seq != encoded_seq:  # a publish's deliveries share one frame: encode it once for all links
                    encoded = link.end.encode_frame(
                        seq, slot, self._slot_generations[slot], self._meta[slot], len(fences), self._stamp[slot]
                    )
                    encoded_seq = seq
                link.end.send_encoded(encoded, fences)
            except (LinkClosed, OSError) as error:  # OSError: BlockingIOError (queue full) and the like
                self._drop_link(link, f"sending frame {seq} failed: {error}")
                continue
            link.last_delivered = seq

    def _drop_fences(self, slot: int) -> None:
        fdwire.close_fds(self._fences[slot])
        self._fences[slot] = ()

    def _no_slot_message(self, timeout: float | None) -> str:
        holders = ", ".join(
            f"slot {slot} held by link {sorted(map(str, self._pool.holders(slot)))}" for slot in range(self.slot_count)
        )
        return f"stream {self.name!r}: no slot freed within {timeout} s ({holders})"

    def _slot_view(self, slot: int) -> memoryview:
        view = self._views[slot]
        if view is None:
            view = self._views[slot] = self.buffers[slot].memoryview()
        return view

    def _slot_array(self, slot: int, dtype: Any, shape: Any) -> Any:
        return _cached_array(self._arrays, slot, lambda: self._slot_view(slot), dtype, shape)

    # --- links (events thread, pump thread) -------------------------------------------------

    def _on_link_opened(self, opened: pb.StreamLinkOpened) -> None:
        """A consumer subscribed (the session's events thread): take its link and start delivering to it."""
        try:
            fds = self._transport.link.take_fds(opened.fd_ticket, 1)
        except errors.BrokerError as error:
            log.error(
                "bufbroker: stream %r: the link of consumer pid %d did not arrive: %s",
                self.name,
                opened.consumer_pid,
                error,
            )
            return
        sock = socket.socket(fileno=fds[0])
        if sock.type != socket.SOCK_SEQPACKET:
            log.error(
                "bufbroker: stream %r: link %d is not a SOCK_SEQPACKET socket; dropped", self.name, opened.link_id
            )
            sock.close()
            return
        mode: ConsumerMode = "latest" if opened.mode == link_pb.CONSUMER_MODE_LATEST else "queue"
        max_held = min(max(1, opened.max_held), self.slot_count)
        end = LinkEnd(sock, self.max_meta_bytes)
        with self._lock:
            self._next_key += 1
            link = _ProducerLink(self._next_key, end, opened, mode, max_held, self._transport.link)
            if self._closed:
                end.close()
                return
            hello = link_pb.LinkHello(
                protocol=link_pb.LINK_PROTOCOL_V1,
                role=link_pb.LINK_ROLE_PRODUCER,
                stream=self.name,
                mode=MODES[mode],
                max_held=max_held,
                max_meta_bytes=self.max_meta_bytes,
                slot_count=self.slot_count,
                next_seq=self._seq + 1,
                pid=os.getpid(),
            )
            try:
                end.send_hello(hello)
            except (LinkError, OSError) as error:
                log.info(
                    "bufbroker: stream %r: consumer pid %d left before its hello: %s",
                    self.name,
                    opened.consumer_pid,
                    error,
                )
                end.close()
                return
            self._pool.consumer_add(link.key, mode, max_held)
            self._links[link.key] = link
            self._links_by_fd[end.fileno()] = link
            self._links_poll.register(end.fileno(), select.EPOLLIN)

    def _drop_link(self, link: _ProducerLink, why: str, bye: link_pb.LinkByeReason | None = None) -> None:
        """Forget a consumer (the lock is held): its slots return at once; the pump closes its end."""
        if link.gone:
            return
        link.gone = why
        if bye is not None:
            with contextlib.suppress(LinkError, OSError):
                link.end.send_bye(bye, why, self._seq)
        self._pool.consumer_gone(link.key)
        del self._links[link.key]
        fd = link.end.fileno()
        if self._links_by_fd.get(fd) is link:
            del self._links_by_fd[fd]
            with contextlib.suppress(OSError):
                self._links_poll.unregister(fd)
        self._to_close.append(link)
        self._slot_freed()
        for slot in range(self.slot_count):
            if self._fences[slot] and self._pool.slot_state(slot) is SlotState.FREE:
                self._drop_fences(slot)
        log.debug(
            "bufbroker: stream %r: consumer link %d (pid %d) gone: %s", self.name, link.link_id, link.consumer_pid, why
        )
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def _run_pump(self) -> None:
        try:
            self._pump_loop()
        except Exception:
            log.exception("bufbroker: stream %r: the pump thread failed; the stream stops delivering", self.name)
            with self._lock:
                for link in list(self._links.values()):
                    self._drop_link(link, "the producer's pump failed", link_pb.LINK_BYE_REASON_PROTOCOL_ERROR)
                self._closed = True
                self._slot_freed()

    def _pump_loop(self) -> None:
        next_stall_check = time.monotonic() + STALL_CHECK
        watching = False  # whether the links' epoll is in the pump's selector
        links_fd = self._links_poll.fileno()
        while not self._closed:
            waited_for = self._acquirers > 0
            if waited_for == watching:  # a waiting acquire() takes the links over, or leaves them to the pump
                if watching:
                    self._selector.unregister(links_fd)
                else:
                    self._selector.register(links_fd, selectors.EVENT_READ, "links")
                watching = not watching
                self._pump_watching = watching
            for key, _ in self._selector.select(STALL_CHECK if watching else HANDOVER_CHECK):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake)
                else:
                    self._read_ready()
            self._apply_changes()
            now = time.monotonic()
            if now >= next_stall_check:
                next_stall_check = now + STALL_CHECK
                self._check_stalls(now)
            if now - self._report_at >= REPORT_PERIOD:
                self._report(now)
        self._apply_changes()

    def _apply_changes(self) -> None:
        """Close the ends of dropped links (pump thread, or close() once the pump stopped)."""
        with self._lock:
            close, self._to_close = self._to_close, []
        for link in close:
            link.end.close()

    def _read_link(self, link: _ProducerLink) -> bool:
        """One message from a consumer's link (a release, its hello, a Bye, EOF); False if none was there."""
        if link.gone:
            return False
        try:
            got = link.end.receive(0)
        except BlockingIOError:  # the other reader (pump or acquire) took it first
            return False
        except LinkClosed:
            with self._lock:
                self._drop_link(link, "its end of the link closed (it exited or died)")
            return True
        except LinkError as error:
            with self._lock:
                self._drop_link(link, str(error), link_pb.LINK_BYE_REASON_PROTOCOL_ERROR)
            return True
        except OSError as error:  # closed meanwhile by the other reader (pump or acquire), or reset
            with self._lock:
                self._drop_link(link, f"reading its link failed: {error}")
            return True
        self._handle(link, got)
        return True

    def _handle(self, link: _ProducerLink, got: Received) -> None:
        kind = got.kind
        with self._lock:
            if link.gone:
                fdwire.close_fds(got.fds)
                return
            if kind == "release":
                release = got.message.release
                slot = release.slot
                if slot < self.slot_count and release.generation < self._slot_generations[slot]:
                    # A frame of a generation before a move: the move drained every slot first, so only
                    # a frame taken back (reclaimed) meanwhile can be released so late. Nothing to do.
                    fdwire.close_fds(got.fds)
                    return
                try:
                    deliveries = self._pool.release(link.key, slot, release.seq)
                except (NotHeldError, IndexError) as error:
                    fdwire.close_fds(got.fds)
                    self._drop_link(link, f"bad release: {error}", link_pb.LINK_BYE_REASON_PROTOCOL_ERROR)
                    return
                if got.fds:
                    if self._pool.slot_state(slot) is SlotState.ACQUIRED:  # a late release of a reclaimed hold
                        fdwire.close_fds(got.fds)
                    else:
                        if self._dmabuf_slots[slot]:
                            self._implicit.add_to_buffer(self.buffers[slot].fd, got.fds)
                        self._release_fences[slot].extend(got.fds)
                link.stall_reported = False
                if deliveries:
                    self._send(deliveries)
                if self._pool.slot_state(slot) is SlotState.FREE:
                    if self._fences[slot]:
                        self._drop_fences(slot)
                    self._slot_freed()
            elif kind == "hello":
                hello = got.message.hello
                if hello.protocol != link_pb.LINK_PROTOCOL_V1 or hello.role != link_pb.LINK_ROLE_CONSUMER:
                    self._drop_link(
                        link,
                        f"hello with protocol {hello.protocol} role {hello.role}, not V1 from a consumer",
                        link_pb.LINK_BYE_REASON_PROTOCOL_ERROR,
                    )
                    return
                link.hello = hello
            elif kind == "bye":
                self._drop_link(link, f"it unsubscribed ({got.message.bye.detail or 'bye'})")
            else:
                fdwire.close_fds(got.fds)
                self._drop_link(link, f"a {kind} message from a consumer", link_pb.LINK_BYE_REASON_PROTOCOL_ERROR)

    def _check_stalls(self, now: float) -> None:
        with self._lock:
            for hold in self._pool.stalled(now, self.stall_timeout):
                link = self._links.get(hold.consumer)
                if link is None or link.gone:
                    continue
                if self.on_stall == "report":
                    if not link.stall_reported:
                        link.stall_reported = True
                        log.warning(
                            "bufbroker: stream %r: consumer pid %d holds slot %d (frame %d) for %.1f s, past the stall timeout",
                            self.name,
                            link.consumer_pid,
                            hold.slot,
                            hold.seq,
                            hold.held_for,
                        )
                    continue
                reclaim = self._pool.reclaim(hold.consumer, hold.slot)
                link.stall_reported = True
                try:
                    link.end.send_reclaimed(
                        hold.slot, reclaim.seq, self._slot_generations[hold.slot], int(reclaim.held_for * 1e9)
                    )
                except (LinkError, OSError) as error:
                    self._drop_link(link, f"sending Reclaimed failed: {error}")
                    continue
                log.info(
                    "bufbroker: stream %r: reclaimed slot %d (frame %d) from consumer pid %d after %.1f s",
                    self.name,
                    hold.slot,
                    reclaim.seq,
                    link.consumer_pid,
                    reclaim.held_for,
                )
                if reclaim.deliveries:
                    self._send(reclaim.deliveries)
                if self._pool.slot_state(hold.slot) is SlotState.FREE:
                    if self._fences[hold.slot]:
                        self._drop_fences(hold.slot)
                    self._slot_freed()

    def _report(self, now: float) -> None:
        """Counters to the broker (pump thread), at most every REPORT_PERIOD and only when something changed."""
        if _reporting(self._report_call):
            return  # the last one is still on its way: try again on the next round
        period = now - self._report_at
        with self._lock:
            if self._created_at is not self._transport.link:  # the broker restarted; not created there yet
                self._report_at = now
                return
            published = self._pool.published
            if published == self._report_published and not self._links:
                self._report_at = now
                return
            fps = (published - max(self._report_published, 0)) / period if self._report_published >= 0 else 0.0
            request = pb.ReportStreamStatsRequest(
                stream_id=self.id,
                producer=pb.StreamCounters(
                    published=published, last_seq=self._seq, fps=fps, generation=self._generation
                ),
            )
            held_since = {slot: self._pool.holders(slot) for slot in range(self.slot_count)}
            broker_link = self._transport.link
            for key, link in self._links.items():
                if link.broker_link is not broker_link:
                    continue  # opened by a broker that has since restarted: this one does not know the link
                c = self._pool.counters(key)
                held_slots = [slot for slot, since in held_since.items() if key in since]
                longest = max((now - held_since[slot][key] for slot in held_slots), default=0.0)
                since_report = now - link.reported_at
                link_fps = (c.delivered - link.reported_delivered) / since_report if since_report > 0 else 0.0
                link.reported_at, link.reported_delivered = now, c.delivered
                request.links.add(
                    link_id=link.link_id,
                    stalled=longest > self.stall_timeout,
                    counters=pb.StreamCounters(
                        published=c.published_since_added,
                        delivered=c.delivered,
                        dropped_busy=c.dropped["busy"],
                        dropped_overwritten=c.dropped["overwritten"],
                        released=c.released,
                        reclaimed=c.reclaimed,
                        held_now=c.held,
                        longest_hold=longest,
                        lag=self._seq - link.last_delivered,
                        last_seq=link.last_delivered,
                        fps=link_fps,
                        generation=self._generation,
                        held_slots=held_slots,
                    ),
                )
            self._report_published = published
            self._report_at = now
        self._report_call = report_stats(self._transport, request)

    # --- the stream's life ------------------------------------------------------------------

    def _close_locally(self) -> bool:
        """Bye (end of stream) on every link, stop the pump, close the links; False if already closed."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            for link in list(self._links.values()):
                self._drop_link(link, "the stream was closed", link_pb.LINK_BYE_REASON_END_OF_STREAM)
            self._freed.notify_all()
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)
            os.eventfd_write(self._acquire_wake, 1)
        if self._pump is not threading.current_thread():
            self._pump.join(timeout=5)
        self._apply_changes()
        self._selector.close()
        self._acquire_poll.close()
        self._links_poll.close()
        os.close(self._wake)
        os.close(self._acquire_wake)
        for slot in range(self.slot_count):
            self._drop_fences(slot)
            fdwire.close_fds(self._release_fences[slot])
            self._release_fences[slot] = []
        self._release_views()
        self._on_close(self)
        return True

    def _create_again(self) -> None:
        """After a broker restart (the session registered the slot buffers again): CreateStream by name.

        Existing links keep flowing (they are between the two processes);
        new consumers can subscribe once this is done.
        """
        request = pb.CreateStreamRequest(
            name=self.name,
            slot_buffer_ids=[buffer.id for buffer in self.buffers],
            stall_timeout=self.info.stall_timeout,
            on_stall=self.info.on_stall,
            max_held=self.info.max_held,
            labels=dict(self.info.labels),
            formats=self.info.formats,
            renegotiate=self.info.renegotiate,
        )
        response = self._transport.call("CreateStream", request)
        with self._lock:
            self.info, self.id = response.stream, response.stream.id
            self._created_at = self._transport.link

    def _on_renegotiate(self, asked: pb.StreamRenegotiate) -> None:
        """The broker asks for another format (a consumer needs it; events thread): move to it on a thread."""
        threading.Thread(
            target=self._renegotiate, args=(asked,), name=f"bufbroker-renegotiate-{self.name}", daemon=True
        ).start()

    def _renegotiate(self, asked: pb.StreamRenegotiate) -> None:
        pair = formats.pair_text(asked.format.format, asked.format.modifier)
        layout = self._layout
        try:
            if layout is None:
                raise ValueError("the stream has no layout to derive one of the new format from")
            new = formats.derive_layout(
                asked.format.format,
                int(layout["width"]),
                int(layout["height"]),
                modifier=asked.format.modifier,
                align=self._align,
            )
            generation = self.move(new.size, new.to_dict(), reason=f"renegotiated to {pair}: {asked.reason}")
        except (ValueError, TimeoutError, errors.BrokerError) as error:
            log.error("bufbroker: stream %r could not renegotiate to %s: %s", self.name, pair, error)
            return
        log.info(
            "bufbroker: stream %r renegotiated to %s (generation %d): %s", self.name, pair, generation, asked.reason
        )

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<bufbroker.Stream {self.name!r} id={self.id} slots={self.slot_count} last_seq={self._seq}>"


class StreamRegistry:
    """A session's producer streams by id, for the events thread to route StreamLinkOpened.

    ``creating()`` holds the registry while a CreateStream is in flight, so a
    consumer's link announced before the reply is routed once the stream is
    filed, never dropped.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._streams: dict[int, Stream] = {}

    def creating(self) -> threading.RLock:
        return self._lock

    def add(self, stream: Stream) -> None:
        with self._lock:
            self._streams[stream.id] = stream

    def remove(self, stream: Stream) -> None:
        with self._lock:
            if self._streams.get(stream.id) is stream:
                del self._streams[stream.id]

    def get(self, stream_id: int) -> Stream | None:
        with self._lock:
            return self._streams.get(stream_id)

    def all(self) -> list[Stream]:
        with self._lock:
            return list(self._streams.values())

    def route(self, opened: pb.StreamLinkOpened) -> None:
        """Give a StreamLinkOpened to its stream (events thread).

        For a stream no longer here the link's fd is not taken: the ticket
        store closes it once unclaimed for its timeout, and the consumer
        then reads end of stream.
        """
        stream = self.get(opened.stream_id)
        if stream is None:
            log.warning(
                "bufbroker: a consumer link for stream %d, which this session does not produce", opened.stream_id
            )
            return
        stream._on_link_opened(opened)

    def create_again(self) -> None:
        """After a broker restart: every stream registered again under its new id."""
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
            for stream in streams:
                try:
                    stream._create_again()
                except errors.BrokerError as error:
                    log.error("bufbroker: could not create stream %r again: %s", stream.name, error)
                self._streams[stream.id] = stream


# --- consumer -------------------------------------------------------------------------

_HELD, _RELEASED, _RECLAIMED = 0, 1, 2


class ConsumerFrame:
    """A frame the consumer holds: slot ``slot`` shows frame ``seq`` until ``release()``.

    ``timestamp_ns`` is CLOCK_MONOTONIC when the producer published it,
    ``meta`` the producer's bytes, ``fences`` the fds (this process's; the
    frame closes them on release) to wait on before reading the slot
    (``wait_fence``). Read it through ``memoryview()`` or ``numpy()``: both
    are read-only views of the slot's mapping. A frame held longer than the
    stream's stall_timeout may be reclaimed by the producer: its next access
    then raises SlotReclaimed.
    """

    __slots__ = ("_held_for", "_state", "_sub", "fences", "generation", "meta", "seq", "slot", "timestamp_ns")

    def __init__(
        self, sub: Subscription, seq: int, slot: int, generation: int, timestamp_ns: int, meta: bytes, fences: list[int]
    ) -> None:
        self._sub = sub
        self.seq = seq
        self.slot = slot
        self.generation = generation
        self.timestamp_ns = timestamp_ns
        self.meta = meta
        self.fences = fences
        self._state = _HELD
        self._held_for = 0.0

    @property
    def released(self) -> bool:
        return self._state != _HELD

    def memoryview(self) -> memoryview:
        """The slot's bytes, read-only."""
        self._check("memoryview")
        return self._sub._slot_view(self.slot)

    def numpy(self, dtype: Any = "uint8", shape: Any = None) -> Any:
        """A read-only numpy array over the slot, without copying."""
        self._check("numpy")
        return self._sub._slot_array(self.slot, dtype, shape)

    @property
    def attachment(self) -> Attachment:
        """The slot's attachment (its mapping has the fds and handle, e.g. for a dma-buf)."""
        return self._sub.attachments[self.slot]

    @property
    def mapping(self) -> SlotMapping:
        """The slot's mapping this frame is read through: it shows the frame's ``generation``."""
        mapping = self._sub._mapped[self.slot]
        if mapping is None:
            raise errors.FailedPrecondition(f"slot {self.slot} of stream {self._sub.name!r} is not mapped")
        return mapping

    @property
    def layout(self) -> dict[str, Any] | None:
        """The producer's layout at the frame's generation (as ``create_stream``/``move`` set it), or None."""
        return self.mapping.layout

    @property
    def size(self) -> int:
        """The bytes of the slot at the frame's generation."""
        return self.mapping.size

    def planes(self) -> list[Any]:
        """One read-only numpy view per plane of the frame's layout (its generation's), no copy.

        NV12: Y (h, w) and UV (h/2, w/2, 2); packed RGB (h, w, 3); strides
        as the layout says (bufbroker.formats.plane_views). A tiled
        modifier is opaque to the CPU: LayoutError.
        """
        return formats.plane_views(self.memoryview(), _needs_layout(self.layout, "planes"))

    def to_av(self) -> Any:
        """The frame as a PyAV ``VideoFrame``: zero-copy where PyAV can wrap the layout, else a copy.

        bufbroker.av_frames.to_av says which formats and strides wrap; a
        wrapped frame reads this slot, so use it before ``release()``.
        """
        from bufbroker.av_frames import to_av

        return to_av(self.memoryview(), _needs_layout(self.layout, "to_av"))

    def wait_fence(self, timeout: float | None = None) -> bool:
        """Wait until every fence of the frame signals (polls readable); False after ``timeout`` seconds."""
        self._check("wait_fence")
        return _wait_readable(self.fences, timeout)

    def release(self, fence: int | Sequence[int] | None = None) -> None:
        """Hand the slot back to the producer; ``fence`` (yours to keep) says when you are really done with it.

        A second release does nothing. Raises SlotReclaimed when the producer
        took the slot back first.
        """
        if self._state == _RELEASED:
            return
        sub = self._sub
        # Look for a Reclaimed only past the stall timeout (the time test inline: this runs per frame).
        if self._state == _HELD and sub._reclaims and time.monotonic_ns() - self.timestamp_ns > sub._stall_ns:
            sub._poll_reclaims(self)
        if self.fences:
            fdwire.close_fds(self.fences)
        if self._state == _RECLAIMED:
            self._state = _RELEASED
            self._sub._forget(self)
            raise self._reclaimed_error()
        self._state = _RELEASED
        if fence is not None:
            sub._release(self, _fence_tuple(fence))
            return
        dmabuf_fd = sub._dmabuf_fd(self.slot)
        implicit = None if dmabuf_fd < 0 else sub._implicit.pending(dmabuf_fd, write=True)
        try:
            sub._release(self, () if implicit is None else (implicit,))
        finally:
            if implicit is not None:
                os.close(implicit)

    def _check(self, verb: str) -> None:
        state = self._state
        sub = self._sub
        if state == _HELD and sub._reclaims and time.monotonic_ns() - self.timestamp_ns > sub._stall_ns:
            sub._poll_reclaims(self)
            state = self._state
        if state == _HELD:
            return
        if state == _RECLAIMED:
            raise self._reclaimed_error()
        raise ValueError(f"{verb}() on frame {self.seq} after it was released; its slot may show another frame now")

    def _reclaimed_error(self) -> errors.SlotReclaimed:
        sub = self._sub
        return errors.SlotReclaimed(
            f"slot {self.slot} (frame {self.seq}) was reclaimed by the producer after you held it "
            f"{self._held_for:.1f} s, longer than the stream's stall_timeout {sub.stall_timeout:.1f} s; "
            "release frames sooner or subscribe with more max_held",
            self.slot,
            self.seq,
            self._held_for,
        )

    def __enter__(self) -> ConsumerFrame:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.release()
        else:
            with contextlib.suppress(errors.SlotReclaimed):
                self.release()

    def __repr__(self) -> str:
        state = ("held", "released", "reclaimed")[self._state]
        return f"<ConsumerFrame seq={self.seq} slot={self.slot} {state}>"


class Subscription:
    """This session's subscription to a stream: the slot attachments and the consumer's end of the link.

    Made by ``Session.subscribe``. ``receive()`` the next frame (or iterate:
    ``for frame in sub``), read it, ``release()`` it. ``close()`` says Bye
    (unsubscribed) and detaches the slots. Use it from one thread or one
    asyncio loop (``frames_async()``).
    """

    def __init__(
        self,
        transport: Transport,
        response: pb.SubscribeResponse,
        attachments: list[Attachment],
        end: LinkEnd,
        mode: ConsumerMode,
        on_close: Callable[[Subscription], None] = lambda sub: None,
    ) -> None:
        self._transport = transport
        self._on_close = on_close
        self.info = response.stream
        self.name = response.stream.name
        self.stream_id = response.stream.id
        self.link_id = response.link_id
        self.max_held = response.max_held or 1
        self.mode: ConsumerMode = mode
        self.attachments = attachments
        self.slot_count = len(attachments)
        self.stall_timeout = response.stream.stall_timeout or DEFAULT_STALL_TIMEOUT
        self._reclaims = response.stream.on_stall != pb.STALL_POLICY_REPORT
        self._stall_ns = int(self.stall_timeout * 1e9)
        self._end = end
        self._pending: deque[Received | None] = deque()  # read while looking for Reclaimed; None: the link closed
        self._held: list[ConsumerFrame | None] = [None] * self.slot_count
        # Per slot: the generation its mapping here shows (0 until its first frame) and that mapping;
        # the views below are of it. A frame of another generation goes through _follow_move first.
        self._generations: list[int] = [0] * self.slot_count
        self._mapped: list[SlotMapping | None] = [None] * self.slot_count
        self._implicit = ImplicitFences(self.name)
        # Per slot: the dma-buf fd of its mapping (-1: not a dma-buf), None until asked; reset at a remap.
        self._dmabuf_fds: list[int | None] = [None] * self.slot_count
        self._views: list[memoryview | None] = [None] * self.slot_count
        self._arrays: list[tuple[Any, Any, Any] | None] = [None] * self.slot_count
        self._ended: errors.EndOfStream | None = None
        self._closed = False
        self.producer_hello: link_pb.LinkHello | None = None
        # Counters (this consumer's view), reported to the broker at most every REPORT_PERIOD.
        self.received = 0
        self.released = 0
        self.reclaimed = 0
        self.skipped = 0  # seqs between frames received: dropped for this consumer (latest mode) or overwritten
        self.stale = 0  # frames of a generation older than the slot's mapping, released unread (never from this SDK)
        self.last_seq = 0
        self._latencies: list[int] = []
        self._report_at = time.monotonic()
        self._report_call: _ReportCall | None = None
        self._subscribed_at: object = transport.link  # the only broker that knows ``link_id``
        end.send_hello(
            link_pb.LinkHello(
                protocol=link_pb.LINK_PROTOCOL_V1,
                role=link_pb.LINK_ROLE_CONSUMER,
                stream=self.name,
                mode=MODES[mode],
                max_held=self.max_held,
                max_meta_bytes=end.max_meta_bytes,
                pid=os.getpid(),
            )
        )

    def fileno(self) -> int:
        """The link's fd: readable when a frame (or the end of the stream) is waiting.

        After it wakes you, call ``receive(0)`` until it raises TimeoutError:
        a frame the SDK already read (while checking a held frame for a
        reclaim) does not make the fd readable again.
        """
        return self._end.fileno()

    def receive(self, timeout: float | None = None) -> ConsumerFrame:
        """The next frame this consumer holds; ``release()`` it (or use ``with``).

        ``timeout``: seconds to wait, None for as long as it takes, 0 not at
        all. Raises TimeoutError when none came, EndOfStream when the producer
        ended the stream or died (after every frame sent before that).
        """
        if self._ended is not None:
            raise self._ended
        now = time.monotonic()
        if now - self._report_at >= REPORT_PERIOD:
            # Here, between frames, rather than when one arrives: the report must not delay it.
            self._report(now)
        deadline = None if not timeout else now + timeout
        while True:
            if self._pending:
                got = self._pending.popleft()
            else:
                wait = timeout if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    got = self._end.receive(wait)
                except BlockingIOError:
                    if timeout:
                        raise TimeoutError(f"no frame on stream {self.name!r} within {timeout} s") from None
                    raise TimeoutError(f"no frame on stream {self.name!r} right now") from None
                except TimeoutError:
                    raise TimeoutError(f"no frame on stream {self.name!r} within {timeout} s") from None
                except LinkClosed:
                    got = None
                except LinkError as error:
                    raise self._end_stream(f"the producer sent something invalid: {error}", bye=True) from None
            if got is None:
                raise self._end_stream("the producer's end of the link closed (it exited or died)")
            if got.kind == "frame":
                frame = self._frame(got)
                if frame is not None:
                    return frame
                continue
            self._control(got)
            if self._ended is not None:
                raise self._ended

    def __iter__(self) -> Iterator[ConsumerFrame]:
        """Every frame until the end of the stream (which ends the iteration)."""
        while True:
            try:
                yield self.receive(None)
            except errors.EndOfStream:
                return

    async def receive_async(self, timeout: float | None = None) -> ConsumerFrame:
        """``receive()`` for asyncio: waits on the link's fd in the running loop."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                return self.receive(0)
            except TimeoutError:
                pass
            readable: asyncio.Future[None] = loop.create_future()
            fd = self.fileno()
            loop.add_reader(fd, _set_done, readable)
            try:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait_for(readable, left)
            except TimeoutError:
                raise TimeoutError(f"no frame on stream {self.name!r} within {timeout} s") from None
            finally:
                loop.remove_reader(fd)

    async def frames_async(self) -> AsyncIterator[ConsumerFrame]:
        """``async for frame in sub.frames_async():`` every frame until the end of the stream."""
        while True:
            try:
                frame = await self.receive_async(None)
            except errors.EndOfStream:
                return
            yield frame

    def close(self) -> None:
        """Unsubscribe: Bye on the link, detach every slot, release this process's views."""
        if not self._close_locally():
            return
        for attachment in self.attachments:
            if self._transport.closed:
                attachment._close_locally()
            else:
                with contextlib.suppress(errors.BrokerError):
                    attachment.detach()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def ended(self) -> bool:
        """True once the stream ended for this consumer (EndOfStream was or will be raised)."""
        return self._ended is not None

    def counters(self) -> dict[str, int]:
        return {
            "received": self.received,
            "released": self.released,
            "reclaimed": self.reclaimed,
            "skipped": self.skipped,
            "stale": self.stale,
            "last_seq": self.last_seq,
            "held": sum(frame is not None for frame in self._held),
        }

    # --- the hot path ---------------------------------------------------------------------

    def _frame(self, got: Received) -> ConsumerFrame | None:
        message = got.message.frame
        slot = message.slot
        seq = message.seq
        if slot >= self.slot_count or self._held[slot] is not None:
            fdwire.close_fds(got.fds)
            why = f"frame {seq} in slot {slot}, " + (
                f"but the stream has {self.slot_count} slots"
                if slot >= self.slot_count
                else "which this consumer still holds"
            )
            raise self._end_stream(f"the producer sent something invalid: {why}", bye=True)
        generation = message.generation
        if generation != self._generations[slot] and not self._follow_move(slot, seq, generation, got.fds):
            return None
        stamp = message.timestamp_ns
        now = time.monotonic_ns()
        frame = ConsumerFrame(self, seq, slot, generation, stamp, message.meta, got.fds)
        self._held[slot] = frame
        last = self.last_seq
        if last and seq > last + 1:
            self.skipped += seq - last - 1
        elif not last and self.producer_hello is not None and seq > self.producer_hello.next_seq:
            self.skipped += seq - self.producer_hello.next_seq
        self.last_seq = seq
        self.received += 1
        latencies = self._latencies
        if len(latencies) < _LATENCY_SAMPLES:
            latencies.append(now - stamp)
        return frame

    def _release(self, frame: ConsumerFrame, fences: tuple[int, ...]) -> None:
        self._held[frame.slot] = None
        self.released += 1
        if self._closed or self._ended is not None:
            return
        try:
            self._end.send_release(frame.slot, frame.seq, frame.generation, fences)
        except (LinkError, OSError) as error:
            self._end_stream(f"the producer's end of the link closed ({error})")

    def _forget(self, frame: ConsumerFrame) -> None:
        if self._held[frame.slot] is frame:
            self._held[frame.slot] = None

    def _slot_view(self, slot: int) -> memoryview:
        view = self._views[slot]
        if view is None:
            mapping = self._mapped[slot]
            if mapping is None:
                raise errors.FailedPrecondition(f"slot {slot} of stream {self.name!r} is not mapped")
            view = self._views[slot] = mapping.memoryview()
        return view

    def _follow_move(self, slot: int, seq: int, generation: int, fences: list[int]) -> bool:
        """A frame whose generation is not the one slot ``slot``'s mapping here shows (off the hot path).

        Its first frame: the slot's current mapping is taken as showing it.
        A newer generation (the producer moved the slot): wait, at most
        REMAP_TIMEOUT, until the SDK dropped the old mapping (MoveNotify)
        and mapped the new backing, then read through that. An older one
        (a producer that did not drain before moving): released unread,
        False. A slot not mapped again in time: released unread, and a
        FailedPrecondition saying why.
        """
        known = self._generations[slot]
        if known and generation < known:
            self._release_unread(slot, seq, generation, fences)
            self.stale += 1
            return False
        old = self._mapped[slot] if known else None
        try:
            mapping = self.attachments[slot].wait_remapped(old, REMAP_TIMEOUT)
        except (TimeoutError, errors.BrokerError) as error:
            self._release_unread(slot, seq, generation, fences)
            raise errors.FailedPrecondition(
                f"stream {self.name!r}: frame {seq} shows generation {generation} of slot {slot}, but this "
                f"consumer's mapping of the slot (generation {known or 'none yet'}) was not replaced by one of the "
                f"moved backing: {error}"
            ) from error
        if mapping is not self._mapped[slot]:
            self._views[slot] = None  # views of the old mapping (released with it, or kept alive only by these)
            self._arrays[slot] = None
            self._mapped[slot] = mapping
            self._dmabuf_fds[slot] = None
        self._generations[slot] = generation
        return True

    def _release_unread(self, slot: int, seq: int, generation: int, fences: list[int]) -> None:
        fdwire.close_fds(fences)
        if self._closed or self._ended is not None:
            return
        try:
            self._end.send_release(slot, seq, generation, ())
        except (LinkError, OSError) as error:
            self._end_stream(f"the producer's end of the link closed ({error})")

    def _dmabuf_fd(self, slot: int) -> int:
        """The dma-buf fd of slot ``slot``'s mapping here, or -1 when it is not a dma-buf (memfd, segments)."""
        fd = self._dmabuf_fds[slot]
        if fd is None:
            mapping = self._mapped[slot]
            fd = mapping.fds[0] if mapping is not None and mapping.fds and dmabuf.is_dmabuf(mapping.fds[0]) else -1
            self._dmabuf_fds[slot] = fd
        return fd

    @property
    def generations(self) -> list[int]:
        """Per slot, the generation of the mapping frames are read through here (0 before the slot's first frame)."""
        return list(self._generations)

    def _slot_array(self, slot: int, dtype: Any, shape: Any) -> Any:
        return _cached_array(self._arrays, slot, lambda: self._slot_view(slot), dtype, shape)

    def _poll_reclaims(self, frame: ConsumerFrame) -> None:
        """Past the stall timeout only: read what waits on the link, so a Reclaimed for ``frame`` is seen."""
        if time.monotonic_ns() - frame.timestamp_ns <= self._stall_ns or self._ended is not None:
            return
        while True:
            try:
                got = self._end.receive(0)
            except BlockingIOError:
                return
            except LinkError:
                self._pending.append(None)
                return
            if got.kind == "reclaimed":
                self._control(got)
            else:
                self._pending.append(got)

    # --- the rest of the link's messages --------------------------------------------------------

    def _control(self, got: Received) -> None:
        kind = got.kind
        message = got.message
        if kind == "reclaimed":
            reclaimed = message.reclaimed
            slot = reclaimed.slot
            frame = self._held[slot] if slot < self.slot_count else None
            if frame is not None and frame.seq == reclaimed.seq:
                frame._state = _RECLAIMED
                frame._held_for = reclaimed.held_for_ns / 1e9
                self._held[slot] = None
                self.reclaimed += 1
        elif kind == "hello":
            hello = message.hello
            if hello.protocol != link_pb.LINK_PROTOCOL_V1 or hello.role != link_pb.LINK_ROLE_PRODUCER:
                self._end_stream(
                    f"the producer's hello has protocol {hello.protocol} role {hello.role}, not V1 from a producer",
                    bye=True,
                )
                return
            self.producer_hello = hello
        elif kind == "bye":
            bye = message.bye
            if bye.reason == link_pb.LINK_BYE_REASON_EVICTED:
                why = f"the producer removed this consumer: {bye.detail}"
            elif bye.reason == link_pb.LINK_BYE_REASON_PROTOCOL_ERROR:
                why = f"the producer ended the link: {bye.detail}"
            else:
                why = f"the producer ended the stream ({bye.detail or 'bye'})"
            self._end_stream(why, last_seq=bye.last_seq)
        else:  # release from a producer: not its message
            fdwire.close_fds(got.fds)
            self._end_stream(f"the producer sent a {kind} message", bye=True)

    def _end_stream(self, why: str, last_seq: int = 0, bye: bool = False) -> errors.EndOfStream:
        """The stream ended for this consumer (once; later calls keep the first reason); returns its EndOfStream."""
        if self._ended is None:
            if bye:
                with contextlib.suppress(LinkError, OSError):
                    self._end.send_bye(link_pb.LINK_BYE_REASON_PROTOCOL_ERROR, why)
            self._ended = errors.EndOfStream(f"stream {self.name!r} ended: {why}", last_seq)
        return self._ended

    def _report(self, now: float) -> None:
        if _reporting(self._report_call):
            return  # the last one is still on its way: try again on the next receive
        latencies = sorted(self._latencies)
        self._latencies = []
        self._report_at = now
        counters = pb.StreamCounters(
            delivered=self.received,
            released=self.released,
            reclaimed=self.reclaimed,
            dropped_busy=self.skipped,
            held_now=sum(frame is not None for frame in self._held),
            last_seq=self.last_seq,
            generation=max(self._generations) or FIRST_GENERATION,
            held_slots=[slot for slot, frame in enumerate(self._held) if frame is not None],
        )
        if latencies:
            counters.latency_p50_us = latencies[len(latencies) // 2] / 1e3
            counters.latency_p99_us = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] / 1e3
            counters.latency_buckets.extend(latency_histogram(latencies))
            counters.latency_sum_us = sum(latencies) / 1e3
        if self._transport.link is not self._subscribed_at:
            return  # the broker restarted: it knows neither this stream id nor this link
        request = pb.ReportStreamStatsRequest(stream_id=self.stream_id)
        request.links.add(link_id=self.link_id, counters=counters)
        self._report_call = report_stats(self._transport, request)

    def _close_locally(self) -> bool:
        """Bye (unsubscribed), close the link, release the frames' fds and this process's views."""
        if self._closed:
            return False
        self._closed = True
        if self._ended is None:
            with contextlib.suppress(LinkError, OSError):
                self._end.send_bye(link_pb.LINK_BYE_REASON_UNSUBSCRIBED, "the consumer closed its subscription")
            self._ended = errors.EndOfStream(f"stream {self.name!r} ended: the subscription was closed")
        self._end.close()
        for got in self._pending:
            if got is not None:
                fdwire.close_fds(got.fds)
        self._pending.clear()
        for frame in self._held:
            if frame is not None:
                fdwire.close_fds(frame.fences)
                frame._state = _RELEASED
        self._held = [None] * self.slot_count
        self._arrays = [None] * self.slot_count
        self._views = [None] * self.slot_count
        self._mapped = [None] * self.slot_count
        self._on_close(self)
        return True

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<bufbroker.Subscription {self.name!r} link={self.link_id} mode={self.mode} last_seq={self.last_seq}>"


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _needs_layout(layout: dict[str, Any] | None, verb: str) -> dict[str, Any]:
    if layout is None:
        raise ValueError(f"{verb}() needs the stream's layout: create the stream with layout=")
    return layout


def layout_pair(layout: Mapping[str, Any] | None) -> str | None:
    """The layout's (format, modifier) pair as ``FORMAT:MODIFIER``, or None (no layout, or a format not in the table)."""
    if not layout or not layout.get("fourcc"):
        return None
    try:
        fmt = formats.parse_format(layout["fourcc"])
    except ValueError:
        return None
    return formats.pair_text(fmt, int(layout.get("modifier") or formats.LINEAR))


def latency_histogram(sorted_ns: Sequence[int]) -> list[int]:
    """Counts (not cumulative) of ``sorted_ns`` latencies per HANDOFF_LATENCY_BOUNDS_US bucket, then above the last."""
    counts, start = [], 0
    for bound_us in HANDOFF_LATENCY_BOUNDS_US:
        end = bisect.bisect_right(sorted_ns, bound_us * 1000, lo=start)
        counts.append(end - start)
        start = end
    counts.append(len(sorted_ns) - start)
    return counts


def mode_value(mode: str) -> link_pb.ConsumerMode:
    """The wire ConsumerMode for ``"queue"`` or ``"latest"``."""
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}") from None


def stall_value(on_stall: str) -> pb.StallPolicy:
    """The wire StallPolicy for ``"reclaim"`` or ``"report"``."""
    try:
        return STALL_POLICIES[on_stall]
    except KeyError:
        raise ValueError(f"on_stall must be one of {', '.join(STALL_POLICIES)}, not {on_stall!r}") from None


def _cached_array(cache: list[Any], slot: int, view: Callable[[], memoryview], dtype: Any, shape: Any) -> Any:
    """A numpy view of a slot, kept in ``cache[slot]`` while dtype and shape stay the same (frames reuse it)."""
    cached = cache[slot]
    if cached is not None and cached[0] == dtype and cached[1] == shape:
        return cached[2]
    try:
        import numpy
    except ImportError:
        raise ImportError("frame.numpy() needs numpy: pip install 'bufbroker[numpy]'") from None
    array = numpy.frombuffer(view(), dtype=dtype)
    if shape is not None:
        array = array.reshape(shape)
    cache[slot] = (dtype, shape, array)
    return array
