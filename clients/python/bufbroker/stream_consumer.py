"""The consumer side of a stream: ``Subscription`` (its link and slot mappings), ``ConsumerFrame``.

See bufbroker.streams for how streams work (threads, moves, fences).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from bufbroker import dmabuf, errors, fdwire, formats
from bufbroker.attachment import Attachment
from bufbroker.attachment import Mapping as SlotMapping
from bufbroker.implicit_fences import ImplicitFences
from bufbroker.slotpool import ConsumerMode
from bufbroker.stream_common import (
    DEFAULT_STALL_TIMEOUT,
    FIRST_GENERATION,
    LATENCY_SAMPLES,
    MODES,
    REMAP_TIMEOUT,
    REPORT_PERIOD,
    ReportCall,
    cached_array,
    fence_tuple,
    latency_histogram,
    needs_layout,
    report_stats,
    reporting,
    wait_readable,
)
from bufbroker.streamlink import (
    LinkClosed,
    LinkEnd,
    LinkError,
    Received,
)
from bufbroker.transport import Transport
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import stream_pb2 as link_pb

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
        return formats.plane_views(self.memoryview(), needs_layout(self.layout, "planes"))

    def to_av(self) -> Any:
        """The frame as a PyAV ``VideoFrame``: zero-copy where PyAV can wrap the layout, else a copy.

        bufbroker.av_frames.to_av says which formats and strides wrap; a
        wrapped frame reads this slot, so use it before ``release()``.
        """
        from bufbroker.av_frames import to_av

        return to_av(self.memoryview(), needs_layout(self.layout, "to_av"))

    def wait_fence(self, timeout: float | None = None) -> bool:
        """Wait until every fence of the frame signals (polls readable); False after ``timeout`` seconds."""
        self._check("wait_fence")
        return wait_readable(self.fences, timeout)

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
            sub._release(self, fence_tuple(fence))
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
        self._report_call: ReportCall | None = None
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
        if len(latencies) < LATENCY_SAMPLES:
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
        return cached_array(self._arrays, slot, lambda: self._slot_view(slot), dtype, shape)

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
        if reporting(self._report_call):
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
