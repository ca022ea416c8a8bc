"""The producer side of a stream: ``Stream`` (its pool of slots and its links), ``ProducerFrame``.

See bufbroker.streams for how streams work (threads, moves, fences).
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from bufbroker import dmabuf, errors, fdwire, formats, specs
from bufbroker.buffers import ExportedBuffer
from bufbroker.implicit_fences import ImplicitFences
from bufbroker.planes import layout_bytes, layout_from_wire
from bufbroker.slotpool import ConsumerMode, Delivery, DropPolicy, NotHeldError, SlotPool, SlotState
from bufbroker.specs import Spec
from bufbroker.stream_common import (
    DEFAULT_STALL_TIMEOUT,
    FIRST_GENERATION,
    HANDOVER_CHECK,
    MODES,
    MOVE_DRAIN_TIMEOUT,
    REPORT_PERIOD,
    STALL_CHECK,
    ReportCall,
    StallAction,
    cached_array,
    fence_tuple,
    layout_pair,
    log,
    needs_layout,
    report_stats,
    reporting,
    wait_readable,
)
from bufbroker.streamlink import (
    DEFAULT_MAX_META_BYTES,
    LinkClosed,
    LinkEnd,
    LinkError,
    Received,
)
from bufbroker.transport import Transport
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import stream_pb2 as link_pb

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
        return formats.plane_views(self._stream._slot_view(self.slot), needs_layout(self.layout, "planes"))

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
        fences = fence_tuple(fence)
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
        self._report_call: ReportCall | None = None  # the last report to the broker, maybe still on its way
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
            if not wait_readable(fences, left):
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
        return cached_array(self._arrays, slot, lambda: self._slot_view(slot), dtype, shape)

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
        if reporting(self._report_call):
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
