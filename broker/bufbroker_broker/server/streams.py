"""Streams: the control plane of frames flowing from one producer to its consumers.

A stream is a name a producer session gives to buffers it registered, one
per slot. A consumer subscribes by name: the broker attaches and maps every
slot for it exactly as Attach(map=True) would (the same negotiation, trace
and permission rules), creates a link (a SOCK_SEQPACKET socketpair), hands
one end to the consumer (under the Subscribe reply's ``link_fd_ticket``) and
the other to the producer (under the ticket a ``stream_link_opened`` event
names), and closes its own copies once they are out. Frames and releases
then go between the two processes on the link (stream.proto) and never pass
through the broker: it keeps only the link's record, for introspection, and
the counters the two sides report at a low rate (ReportStreamStats).

Lifecycle: the stream ends with DeleteStream or with its producer's
session; a link is forgotten when its consumer's session ends or when the
producer's report no longer lists it. Everything here runs on the event
loop; only Subscribe waits (for the stream to be created, on an event the
creation sets, never by polling; and for its fd deliveries).

Registry observers (SSE, the dashboard) hear these changes, each with the
stream's name and id in ``detail``: stream-created, stream-deleted,
stream-linked, stream-unlinked, and stalled (a link its producer reported
holding a slot past the stall timeout, once per stall).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from bufbroker.streamlink import HANDOFF_LATENCY_BOUNDS_US
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker.v1 import stream_pb2 as spb
from bufbroker_broker import mapping_types
from bufbroker_broker.core import format_pairs
from bufbroker_broker.core.errors import (
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    NoCommonMappingType,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from bufbroker_broker.core.format_pairs import Pair
from bufbroker_broker.core.mapping_type import MapResult
from bufbroker_broker.core.negotiate import Spec
from bufbroker_broker.core.registry import ACTIVE, Attachment, Buffer, Change, Mapping, Session
from bufbroker_broker.server.fdchannel.server import FdChannelServer
from bufbroker_broker.server.observe.latency import LatencyHistogram
from bufbroker_broker.server.operations import MAX_ATTACH_WAIT, Operations
from bufbroker_broker.server.wire.messages import attach_response, map_response

log = logging.getLogger(__name__)

# The longest a Subscribe may wait for its stream to be created (wait_seconds).
MAX_SUBSCRIBE_WAIT = MAX_ATTACH_WAIT
# ReportStreamStats accepted per second per (session, stream), with a burst of as many;
# the SDK sends at most 2 a second.
REPORTS_PER_SECOND = 4.0
# The longest stall timeout a stream may ask for, in seconds.
MAX_STALL_TIMEOUT = 3600.0
# A Subscribe that made the producer move to another format waits this long
# for the slots to offer it (the SDK drains up to 5 s, then moves).
RENEGOTIATE_TIMEOUT = 10.0
RENEGOTIATE_CHECK = 0.01  # seconds between its looks at the slots' offers
# The consumers' hand-off latency histogram bounds, in seconds (metrics).
HANDOFF_LATENCY_BOUNDS = tuple(bound / 1e6 for bound in HANDOFF_LATENCY_BOUNDS_US)
_MODES = (spb.CONSUMER_MODE_QUEUE, spb.CONSUMER_MODE_LATEST)
_POLICIES = (pb.STALL_POLICY_RECLAIM, pb.STALL_POLICY_REPORT)


@dataclass(frozen=True)
class StreamLimits:
    """The stream settings (server/settings.py), under the settings' names."""

    stream_stall_timeout: float = 2.0
    max_stream_slots: int = 64
    max_stream_consumers: int = 64
    stream_max_meta_bytes: int = 4096
    # At most one renegotiation per stream this often: a consumer cannot make the stream (every
    # other consumer's frames) move back and forth by subscribing with alternating formats.
    stream_renegotiate_interval: float = 5.0

    @classmethod
    def of(cls, settings: object) -> StreamLimits:
        """The limits of a BrokerSettings (its fields of these names)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


@dataclass(eq=False)
class Link:
    """One consumer's link to a stream, as the broker remembers it (it holds none of its fds)."""

    id: int
    stream: Stream
    consumer: Session
    mode: spb.ConsumerMode
    max_held: int
    attachments: list[Attachment]
    opened_at: float
    # The latest counters each side reported for this link, and when (loop time; -1: never).
    producer_view: pb.StreamCounters | None = None
    consumer_view: pb.StreamCounters | None = None
    reported_at: float = -1.0
    accept: tuple[Spec, ...] = ()  # the consumer's accept list: a renegotiation must keep a pair it takes
    producer_saw: bool = False  # the producer listed it in a report: a later report without it means gone
    stalled: bool = False
    stalls: int = 0


@dataclass(eq=False)
class Stream:
    """A named producer endpoint: its slot buffers, its policy and its links."""

    id: int
    name: str
    producer: Session
    slots: list[Buffer]
    stall_timeout: float
    on_stall: pb.StallPolicy
    max_held: int
    labels: dict[str, str]
    created_at: float
    links: dict[int, Link] = field(default_factory=dict)
    producer_counters: pb.StreamCounters | None = None
    reported_at: float = -1.0
    deleted: bool = False
    formats: tuple[Pair, ...] = ()  # what the producer can produce, in its order
    renegotiate: bool = False
    renegotiating: Pair | None = None  # the pair the producer was asked to move to, until its slots offer it
    renegotiated_at: float = float("-inf")  # loop time of the last renegotiation asked for
    # Every consumer's reported hand-off latencies, added up (seconds).
    handoff_latency: LatencyHistogram = field(default_factory=lambda: LatencyHistogram(HANDOFF_LATENCY_BOUNDS))


@dataclass(frozen=True)
class StreamLinkOpenedEvent:
    """To the producer: a consumer subscribed; its end of the link is under ``fd_ticket``."""

    stream_id: int
    link_id: int
    consumer_session_id: int
    consumer_pid: int
    consumer_name: str
    mode: spb.ConsumerMode
    max_held: int
    fd_ticket: int


@dataclass(frozen=True)
class StreamRenegotiateEvent:
    """To the producer: move every slot to ``format`` (a consumer subscribing needs it)."""

    stream_id: int
    format: Pair
    consumer_pid: int
    reason: str


@dataclass(eq=False)
class _Slot:
    """One slot attached and mapped for a subscriber; ``ticket`` is set once its fds are out."""

    attachment: Attachment
    mapping: Mapping
    result: MapResult
    handed: bool = False  # given to deliver(), which closes its temporary fds from then on
    ticket: int = 0


@dataclass(frozen=True)
class Subscription:
    """What Subscribe made: the link, its consumer end's ticket, and each slot's attachment and mapping."""

    link: Link
    link_ticket: int
    slots: tuple[_Slot, ...]


class _RateLimit:
    """A token bucket per key: ``rate`` a second, bursts of as many."""

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.clock = clock
        self._buckets: dict[tuple[int, int], tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: tuple[int, int]) -> bool:
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.rate, now))
        tokens = min(self.rate, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def forget(self, keep: Callable[[tuple[int, int]], bool]) -> None:
        self._buckets = {key: value for key, value in self._buckets.items() if keep(key)}


class Streams:
    """The streams use cases, once, for every transport. Every method runs on the event loop."""

    def __init__(
        self,
        operations: Operations,
        channels: FdChannelServer,
        limits: StreamLimits | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.operations = operations
        self.registry = operations.registry
        self.ledger = operations.ledger
        self.channels = channels
        self.limits = limits or StreamLimits()
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        # How a session hears an event (the gRPC service's notify, as the registry's).
        self.notify: Callable[[Session, Any], None] = lambda session, event: None
        self.streams: dict[int, Stream] = {}
        self.by_name: dict[str, Stream] = {}
        self._stream_ids = itertools.count(1)
        self._link_ids = itertools.count(1)
        # Subscribes waiting for a stream to be created: their wake-up, and who waits.
        self._waiters: dict[asyncio.Event, Session] = {}
        self._reports = _RateLimit(REPORTS_PER_SECOND, self.clock)
        self.stalls_total = 0  # stalled reports (each stall once), since start

    # --- streams ------------------------------------------------------------------

    def create(
        self,
        producer: Session,
        name: str,
        slot_buffer_ids: list[int],
        *,
        stall_timeout: float = 0.0,
        on_stall: pb.StallPolicy = pb.STALL_POLICY_UNSPECIFIED,
        max_held: int = 0,
        labels: dict[str, str] | None = None,
        formats: tuple[Pair, ...] = (),
        renegotiate: bool = False,
    ) -> Stream:
        """Name ``producer``'s buffers a stream, one per slot, and wake the Subscribes waiting for it.

        Every id must be an active buffer ``producer`` registered and no
        other stream's slot; the name must be free among live streams.
        ``formats`` are the pairs the producer can produce; with
        ``renegotiate`` a consumer needing another of them has the slots
        moved to it (see :meth:`subscribe`).
        """
        if renegotiate and not formats:
            raise InvalidArgument(
                "renegotiate needs formats: list the (format, modifier) pairs the producer can produce"
            )
        labels = labels or {}
        request_limits = self.operations.limits
        if not name:
            raise InvalidArgument("name the stream: consumers subscribe to it by name")
        request_limits.check_name(name, "stream name")
        request_limits.check_labels(labels, "stream labels")
        limit = self.limits.max_stream_slots
        if not 1 <= len(slot_buffer_ids) <= limit:
            raise InvalidArgument(
                f"a stream has 1 to {limit} slots (setting max_stream_slots), not {len(slot_buffer_ids)}; "
                "register one buffer per slot and name them in slot_buffer_ids"
            )
        if len(set(slot_buffer_ids)) != len(slot_buffer_ids):
            raise InvalidArgument("slot_buffer_ids names a buffer twice: each slot is its own buffer")
        stall_timeout = stall_timeout or self.limits.stream_stall_timeout
        if not 0 < stall_timeout <= MAX_STALL_TIMEOUT:  # NaN fails too
            raise InvalidArgument(
                f"stall_timeout {stall_timeout:g} is not usable: give 0 < seconds <= {MAX_STALL_TIMEOUT:g} "
                "(0 takes the setting stream_stall_timeout)"
            )
        on_stall = on_stall or pb.STALL_POLICY_RECLAIM
        if on_stall not in _POLICIES:
            raise InvalidArgument(f"on_stall {on_stall} is not a StallPolicy: use RECLAIM or REPORT")
        max_held = max_held or max(1, len(slot_buffer_ids) - 1)
        if max_held > len(slot_buffer_ids):
            raise InvalidArgument(
                f"max_held {max_held} is more than the stream's {len(slot_buffer_ids)} slots: a consumer "
                "holds at most every slot"
            )
        slots = [self._own_slot(producer, index, buffer_id) for index, buffer_id in enumerate(slot_buffer_ids)]
        existing = self.by_name.get(name)
        if existing is not None and self._live(existing):
            owner = "this session" if existing.producer is producer else f"pid {existing.producer.pid}'s session"
            raise FailedPrecondition(
                f"a stream named {name!r} already exists, produced by {owner} (stream {existing.id}); "
                "stream names are unique among live streams: pick another, or delete that stream first"
            )
        stream = Stream(
            next(self._stream_ids),
            name,
            producer,
            slots,
            float(stall_timeout),
            on_stall,
            max_held,
            dict(labels),
            self.clock(),
            formats=formats,
            renegotiate=renegotiate,
        )
        self.streams[stream.id] = stream
        self.by_name[name] = stream
        self._emit("stream-created", producer.id, stream, slots=len(slots))
        for woken in self._waiters:
            woken.set()
        log.debug("stream %d %r created by session %d with %d slots", stream.id, name, producer.id, len(slots))
        return stream

    def _own_slot(self, producer: Session, index: int, buffer_id: int) -> Buffer:
        buffer = self.registry.buffers.get(buffer_id)
        if buffer is None:
            raise NotFound(f"slot {index}: no buffer {buffer_id}; register each slot's buffer before CreateStream")
        if buffer.exporter is not producer:
            raise PermissionDenied(
                f"slot {index}: buffer {buffer_id} belongs to pid {buffer.exporter.pid}'s session; a stream's "
                "slots are buffers its producer registered itself"
            )
        if buffer.state != ACTIVE:
            raise FailedPrecondition(f"slot {index}: buffer {buffer_id} is revoked; register a live buffer")
        for other in list(self.streams.values()):
            if any(slot is buffer for slot in other.slots) and self._live(other):
                raise FailedPrecondition(
                    f"slot {index}: buffer {buffer_id} is already a slot of stream {other.name!r}; "
                    "each buffer is the slot of one stream"
                )
        return buffer

    def find(self, asker: Session, name: str = "", stream_id: int = 0) -> Stream:
        """The stream named (or with that id); one ``asker`` may not see is NotFound, as a missing one."""
        stream = self.by_name.get(name) if name else self.streams.get(stream_id)
        if stream is None or not self._live(stream) or not self.visible(asker, stream):
            what = f"named {name!r}" if name else f"with id {stream_id}"
            raise NotFound(
                f"no stream {what}: it was never created, or its producer deleted it or ended; "
                "list streams with `bufbroker ls`"
            )
        return stream

    def visible(self, session: Session, stream: Stream) -> bool:
        """A stream is visible to whoever may see all its slot buffers (as ListBuffers decides)."""
        return stream.producer is session or all(self.registry.buffer_visible(session, b) for b in stream.slots)

    def listed(self, asker: Session | None = None, name: str = "") -> list[Stream]:
        """Live streams in id order (those ``asker`` may see, when given), or only the one named."""
        chosen = [self.by_name[name]] if name in self.by_name else [] if name else list(self.streams.values())
        return [s for s in chosen if self._live(s) and (asker is None or self.visible(asker, s))]

    def _live(self, stream: Stream) -> bool:
        """False (and the stream deleted) once one of its slot buffers was unregistered: it can serve nobody."""
        for index, buffer in enumerate(stream.slots):
            if self.registry.buffers.get(buffer.id) is not buffer:
                self.delete(stream, f"its slot {index} (buffer {buffer.id}) was unregistered")
                return False
        return True

    def delete_owned(self, producer: Session, stream_id: int) -> None:
        stream = self.find(producer, stream_id=stream_id)
        if stream.producer is not producer:
            raise PermissionDenied(
                f"stream {stream.name!r} belongs to pid {stream.producer.pid}'s session; only its producer may delete it"
            )
        self.delete(stream, "deleted by its producer")

    def delete(self, stream: Stream, reason: str) -> None:
        """Forget the stream and its links; its slot buffers and their attachments stay as they are."""
        if stream.deleted:
            return
        stream.deleted = True
        self.streams.pop(stream.id, None)
        if self.by_name.get(stream.name) is stream:
            del self.by_name[stream.name]
        stream.links.clear()
        self._reports.forget(lambda key: key[1] != stream.id)
        self._emit("stream-deleted", stream.producer.id, stream, reason=reason)
        log.debug("stream %d %r deleted: %s", stream.id, stream.name, reason)

    # --- subscribing ----------------------------------------------------------------

    async def await_stream(self, asker: Session, name: str, wait: float = 0.0) -> Stream:
        """:meth:`find` by name, waiting up to ``wait`` seconds for the stream to be created.

        Wakes when a stream is created (an event :meth:`create` sets), never
        by polling; gives up when ``asker``'s session ends. After ``wait``
        seconds: NotFound saying so.
        """
        if not 0 <= wait <= MAX_SUBSCRIBE_WAIT:  # NaN fails too
            raise InvalidArgument(
                f"wait_seconds {wait:g} is not usable: a subscribe waits 0 to {MAX_SUBSCRIBE_WAIT:g} s for its stream"
            )
        try:
            return self.find(asker, name)
        except NotFound as missing:
            if not wait:
                raise
            why = missing.message
        deadline = self.clock() + wait
        woken = asyncio.Event()
        self._waiters[woken] = asker
        try:
            while True:
                woken.clear()
                try:
                    await asyncio.wait_for(woken.wait(), max(0.0, deadline - self.clock()))
                except TimeoutError:
                    raise NotFound(f"{why} (waited {wait:g} s for it to be created)") from None
                if asker.closed:
                    raise Unavailable("the session ended while its subscribe waited for the stream")
                try:
                    return self.find(asker, name)
                except NotFound:
                    pass  # another stream was created: keep waiting
        finally:
            del self._waiters[woken]

    async def subscribe(
        self,
        consumer: Session,
        name: str,
        wire_accept: list[mpb.Match],
        *,
        mode: spb.ConsumerMode = spb.CONSUMER_MODE_UNSPECIFIED,
        max_held: int = 0,
        wait: float = 0.0,
    ) -> Subscription:
        """Join a stream: attach and map every slot, then hand each side its end of a new link.

        Each slot is attached and mapped as Attach(map=True) would (read
        access); the first slot that fails undoes the ones before it and
        its error (with its trace) is the answer. The mappings' fds and the
        consumer's link end go to the consumer under tickets, the producer's
        end to the producer, which a StreamLinkOpened event tells. The
        broker keeps no link fd: both ends are closed here once sent.
        """
        self.operations.limits.check_accept(wire_accept)
        mode = mode or spb.CONSUMER_MODE_QUEUE
        if mode not in _MODES:
            raise InvalidArgument(f"mode {mode} is not a ConsumerMode: use QUEUE or LATEST")
        stream = await self.await_stream(consumer, name, wait)
        granted = min(max_held or 1, stream.max_held)
        producer = stream.producer
        limit = self.limits.max_stream_consumers
        if len(stream.links) >= limit:
            raise ResourceExhausted(
                f"stream {stream.name!r} already has {len(stream.links)} consumers, the limit "
                f"(max_stream_consumers = {limit}); ask the operator to raise max_stream_consumers"
            )
        if not producer.events_open:
            raise Unavailable(
                f"the producer of stream {stream.name!r} (pid {producer.pid}) has no event stream open, so it "
                "cannot be told of a new consumer; retry once it has reconnected"
            )
        accept, _ = mapping_types.accept_from_wire(wire_accept, mpb.ACCESS_READ)
        link = Link(next(self._link_ids), stream, consumer, mode, granted, [], self.clock(), accept=tuple(accept))
        with ExitStack() as unwind:
            stream.links[link.id] = link  # counted against max_stream_consumers while it is being made
            unwind.callback(stream.links.pop, link.id, None)
            attempt = unwind.enter_context(ExitStack())  # undoes the slots of a refused first try
            try:
                slots = await self._attach_slots(consumer, stream, wire_accept, attempt)
            except NoCommonMappingType as refused:
                attempt.close()
                target = self._renegotiation_target(stream, link, refused)
                await self._renegotiate(stream, target, consumer)
                slots = await self._attach_slots(consumer, stream, wire_accept, attempt)
            for slot in slots:
                slot.handed = True
                slot.ticket = await self.channels.deliver(consumer, slot.result.fds, slot.result.temporary)
            link_ticket, producer_ticket = await self._hand_over_link(consumer, producer)
            self.notify(
                producer,
                StreamLinkOpenedEvent(
                    stream.id, link.id, consumer.id, consumer.pid, consumer.name, mode, granted, producer_ticket
                ),
            )
            if stream.deleted or consumer.closed:
                raise Unavailable(f"stream {stream.name!r} ended while this session subscribed to it")
            unwind.pop_all()
        link.attachments = [slot.attachment for slot in slots]
        self._emit("stream-linked", consumer.id, stream, link_id=link.id, consumer_pid=consumer.pid, mode=mode)
        return Subscription(link, link_ticket, tuple(slots))

    async def _attach_slots(
        self, consumer: Session, stream: Stream, wire_accept: list[mpb.Match], unwind: ExitStack
    ) -> list[_Slot]:
        """Attach and map each slot for ``consumer``; ``unwind`` undoes each one (a slot whose fds
        went out is undone too, its temporary fds already closed by the delivery)."""
        slots: list[_Slot] = []
        for index, buffer in enumerate(stream.slots):
            try:
                await self.operations.wait_out_move(buffer)
                attachment, mapping, result = await self.operations.attach_map(
                    consumer, buffer, wire_accept, mpb.ACCESS_READ
                )
            except BrokerError as error:
                error.message = f"slot {index} of stream {stream.name!r} (buffer {buffer.id}): {error.message}"
                error.args = (error.message,)
                raise
            slot = _Slot(attachment, mapping, result)
            slots.append(slot)
            unwind.callback(self._undo_slot, slot)
        return slots

    def _renegotiation_target(self, stream: Stream, joining: Link, refused: NoCommonMappingType) -> Pair:
        """The pair to move ``stream`` to so ``joining`` can read it, or ``refused`` re-raised saying why not.

        The first pair of the producer's ``formats`` (its order) that the
        joining consumer accepts and every current consumer accepts too (an
        accept entry listing no pairs accepts any).
        """

        def refuse(why: str) -> NoReturn:
            refused.message = f"{refused.message}; {why}"
            refused.args = (refused.message,)
            raise refused

        if not stream.renegotiate:
            refuse(f"stream {stream.name!r} was created without renegotiate, so its format stays")
        # Only entries of a type the slots offer count: moving to a format the consumer would still not
        # take (for its type) would change the stream for nothing.
        offered = {offer.type for offer in stream.slots[0].offers}
        usable = [spec for spec in joining.accept if spec.type in offered]
        wanted = {pair for spec in usable for pair in spec.formats}
        if not usable:
            refuse("another format would not help: the accept list names none of the slots' mapping types")
        if any(not spec.formats for spec in usable):
            refuse("another format would not help: the accept list takes any format of the types it shares")
        others = [link for link in stream.links.values() if link is not joining]
        for pair in stream.formats:
            if pair in wanted and all(_accepts(link, pair) for link in others):
                return pair
        refuse(
            f"stream {stream.name!r} cannot renegotiate: of the formats its producer can produce "
            f"{format_pairs.list_text(stream.formats)}, none is one this consumer accepts "
            f"{format_pairs.list_text(sorted(wanted))} and every current consumer accepts too"
        )

    async def _renegotiate(self, stream: Stream, target: Pair, consumer: Session) -> None:
        """Ask the producer to move every slot to ``target``; wait (RENEGOTIATE_TIMEOUT) until each offers it."""
        if stream.renegotiating not in (None, target):
            raise FailedPrecondition(
                f"stream {stream.name!r} is moving to {format_pairs.text(stream.renegotiating)} for another "
                "consumer; subscribe again once it has"
            )
        if stream.renegotiating is None:
            since = self.clock() - stream.renegotiated_at
            interval = self.limits.stream_renegotiate_interval
            if since < interval:
                raise FailedPrecondition(
                    f"stream {stream.name!r} changed its format {since:.1f} s ago; it renegotiates at most once "
                    f"every {interval:g} s (setting stream_renegotiate_interval): subscribe again after that"
                )
            stream.renegotiated_at = self.clock()
            stream.renegotiating = target
            reason = f"pid {consumer.pid} subscribed accepting {format_pairs.text(target)}"
            self.notify(stream.producer, StreamRenegotiateEvent(stream.id, target, consumer.pid, reason))
            self._emit("stream-renegotiating", consumer.id, stream, format=format_pairs.text(target))
        deadline = self.clock() + RENEGOTIATE_TIMEOUT
        try:
            while not all(_offers(buffer, target) for buffer in stream.slots):
                if stream.deleted or consumer.closed:
                    raise Unavailable(f"stream {stream.name!r} ended while it renegotiated its format")
                if self.clock() >= deadline:
                    raise FailedPrecondition(
                        f"the producer of stream {stream.name!r} (pid {stream.producer.pid}) did not move its "
                        f"slots to {format_pairs.text(target)} within {RENEGOTIATE_TIMEOUT:g} s"
                    )
                await asyncio.sleep(RENEGOTIATE_CHECK)  # a move takes a drain and an unmap round trip: ms
        finally:
            if stream.renegotiating == target:
                stream.renegotiating = None

    def _undo_slot(self, slot: _Slot) -> None:
        if not slot.handed:
            self.ledger.close_all(slot.result.temporary)  # deliver() closes those it was given
        self.operations.undo(slot.mapping, slot.attachment)

    async def _hand_over_link(self, consumer: Session, producer: Session) -> tuple[int, int]:
        """Make a link and send its ends: the consumer's, then the producer's; returns their tickets.

        Each end counts as one fd against its session's fd budget until it
        is sent. Both ends are closed here whatever happens (deliver()
        closes what it was given), so the broker keeps none.
        """
        for session in {consumer.id: consumer, producer.id: producer}.values():
            self.registry.check_fd_budget(session, 2 if consumer is producer else 1, self._pending_fds(session))
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        except OSError as error:
            raise ResourceExhausted(
                f"the broker could not make a stream link ({error.strerror or error}); retry later"
            ) from None
        consumer_end = self.ledger.adopt_opened(ours.detach())
        producer_end = self.ledger.adopt_opened(theirs.detach())
        consumer.fd_count += 1
        producer.fd_count += 1
        producer_end_held = True
        try:
            try:
                link_ticket = await self.channels.deliver(consumer, [consumer_end], [consumer_end])
            finally:
                consumer.fd_count -= 1
            producer_end_held = False
            try:
                producer_ticket = await self.channels.deliver(producer, [producer_end], [producer_end])
            except BrokerError:
                raise Unavailable(
                    f"the stream's producer (pid {producer.pid}) could not be given its end of the link: "
                    "its session ended or stopped reading its fd channel"
                ) from None
            finally:
                producer.fd_count -= 1
        finally:
            if producer_end_held:
                self.ledger.close(producer_end)
                producer.fd_count -= 1
        return link_ticket, producer_ticket

    def _pending_fds(self, session: Session) -> int:
        connection = self.channels.connections.get(session.id)
        return connection.pending_fd_count if connection is not None else 0

    # --- reports ----------------------------------------------------------------------

    def report(
        self,
        session: Session,
        stream_id: int,
        producer_counters: pb.StreamCounters | None,
        links: list[pb.LinkReport],
    ) -> None:
        """Keep the latest counters a stream's producer (all its links) or a consumer (its own) reports.

        At most REPORTS_PER_SECOND are accepted per session and stream. A
        link the producer reported before and no longer lists is gone; a
        link the producer reports stalled is one ``stalled`` change, once
        per stall.
        """
        stream = self.find(session, stream_id=stream_id)  # first: only live streams get a bucket
        if not self._reports.take((session.id, stream.id)):
            raise ResourceExhausted(
                f"too many stream reports: at most {REPORTS_PER_SECOND:g} ReportStreamStats a second per stream "
                "from one session (the SDK sends at most 2); report less often"
            )
        limit = self.limits.max_stream_consumers
        if len(links) > limit:
            raise InvalidArgument(f"{len(links)} link reports; a stream has at most {limit} (max_stream_consumers)")
        now = self.clock()
        if session is stream.producer:
            self._producer_report(stream, producer_counters, links, now)
            return
        if producer_counters is not None:
            raise PermissionDenied(f"only the producer of stream {stream.name!r} reports its totals")
        for report in links:
            link = stream.links.get(report.link_id)
            if link is None:
                raise NotFound(
                    f"stream {stream.name!r} has no link {report.link_id}: it ended (its producer reported it gone)"
                )
            if link.consumer is not session:
                raise PermissionDenied(
                    f"link {report.link_id} is not this session's link to stream {stream.name!r}: "
                    "a consumer reports its own link only"
                )
            buckets = report.counters.latency_buckets
            if len(buckets) > len(HANDOFF_LATENCY_BOUNDS) + 1:
                raise InvalidArgument(
                    f"{len(buckets)} latency buckets; the histogram has {len(HANDOFF_LATENCY_BOUNDS) + 1} "
                    "(HANDOFF_LATENCY_BOUNDS_US in broker.proto's StreamCounters, then +Inf)"
                )
            stream.handoff_latency.add_counts(buckets, report.counters.latency_sum_us / 1e6)
            link.consumer_view = _copy(report.counters)
            link.reported_at = now

    def _producer_report(
        self, stream: Stream, totals: pb.StreamCounters | None, links: list[pb.LinkReport], now: float
    ) -> None:
        if totals is not None:
            stream.producer_counters = _copy(totals)
        stream.reported_at = now
        listed = {report.link_id for report in links}
        for link in [each for each in stream.links.values() if each.producer_saw and each.id not in listed]:
            self._forget_link(link, "its producer reported it gone")
        for report in links:
            found = stream.links.get(report.link_id)
            if found is None:
                continue  # a link forgotten meanwhile (its consumer ended)
            link = found
            link.producer_saw = True
            link.producer_view = _copy(report.counters)
            link.reported_at = now
            if report.stalled and not link.stalled:
                link.stalls += 1
                self.stalls_total += 1
                counters = report.counters
                self._emit(
                    "stalled",
                    link.consumer.id,
                    stream,
                    link_id=link.id,
                    consumer_pid=link.consumer.pid,
                    consumer_name=link.consumer.name,
                    held_now=counters.held_now,
                    longest_hold=counters.longest_hold,
                    stall_timeout=stream.stall_timeout,
                    policy="report" if stream.on_stall == pb.STALL_POLICY_REPORT else "reclaim",
                )
                log.info(
                    "stream %r: consumer pid %d (link %d) holds a slot %.1f s, past the stall timeout %g s",
                    stream.name,
                    link.consumer.pid,
                    link.id,
                    counters.longest_hold,
                    stream.stall_timeout,
                )
            link.stalled = report.stalled

    def _forget_link(self, link: Link, reason: str) -> None:
        stream = link.stream
        if stream.links.pop(link.id, None) is not None:
            self._emit("stream-unlinked", link.consumer.id, stream, link_id=link.id, reason=reason)

    # --- sessions -----------------------------------------------------------------------

    def name_session(self, session: Session, name: str) -> None:
        """SetSessionName: a name shown beside the session's pid; validated like buffer names."""
        self.operations.limits.check_name(name, "session name")
        session.name = name

    def session_ended(self, session: Session) -> None:
        """Its streams end, its links are forgotten, its waiting subscribes give up."""
        for woken, waiter in self._waiters.items():
            if waiter is session:
                woken.set()
        for stream in list(self.streams.values()):
            if stream.producer is session:
                self.delete(stream, "its producer's session ended")
                continue
            for link in [each for each in stream.links.values() if each.consumer is session]:
                self._forget_link(link, "its consumer's session ended")
        self._reports.forget(lambda key: key[0] != session.id)

    # --- changes --------------------------------------------------------------------------

    def _emit(self, kind: str, session_id: int, stream: Stream, **detail: Any) -> None:
        """Tell the registry's observers (SSE, the dashboard): a change about a stream, not a buffer."""
        observers = self.registry.observers
        if not observers:
            return
        change = Change(kind, session_id=session_id, detail={"stream": stream.name, "stream_id": stream.id, **detail})
        for observer in list(observers):
            observer(change)


def _accepts(link: Link, pair: Pair) -> bool:
    return any(not spec.formats or pair in spec.formats for spec in link.accept)


def _offers(buffer: Buffer, pair: Pair) -> bool:
    """Every offer of the buffer that lists pairs lists ``pair`` (and at least one does)."""
    listing = [offer for offer in buffer.offers if offer.formats]
    return bool(listing) and all(pair in offer.formats for offer in listing)


def _copy(counters: pb.StreamCounters) -> pb.StreamCounters:
    copied = pb.StreamCounters()
    copied.CopyFrom(counters)
    return copied


# --- wire forms ------------------------------------------------------------------------------


def link_counters(link: Link) -> pb.StreamCounters:
    """The producer's view of the link, with the consumer's own latency figures (or its view alone)."""
    merged = pb.StreamCounters()
    if link.producer_view is not None:
        merged.CopyFrom(link.producer_view)
    elif link.consumer_view is not None:
        merged.CopyFrom(link.consumer_view)
    if link.consumer_view is not None:
        merged.latency_p50_us = link.consumer_view.latency_p50_us
        merged.latency_p99_us = link.consumer_view.latency_p99_us
        merged.latency_buckets[:] = link.consumer_view.latency_buckets
        merged.latency_sum_us = link.consumer_view.latency_sum_us
    return merged


def stream_info(stream: Stream, now: float, limits: StreamLimits | None = None) -> pb.StreamInfo:
    """The stream as ListStreams, CreateStream and Subscribe show it (``now``: the loop's time)."""
    info = pb.StreamInfo(
        id=stream.id,
        name=stream.name,
        producer_session_id=stream.producer.id,
        producer_pid=max(stream.producer.pid, 0),
        producer_name=stream.producer.name,
        slot_buffer_ids=[b.id for b in stream.slots],
        stall_timeout=stream.stall_timeout,
        on_stall=stream.on_stall,
        max_held=stream.max_held,
        labels=stream.labels,
        consumers=[
            pb.StreamConsumerInfo(
                link_id=link.id,
                session_id=link.consumer.id,
                pid=max(link.consumer.pid, 0),
                name=link.consumer.name,
                mode=link.mode,
                max_held=link.max_held,
                stalled=link.stalled,
                counters=link_counters(link),
            )
            for _, link in sorted(stream.links.items())
        ],
        report_age=round(now - stream.reported_at, 3) if stream.reported_at >= 0 else -1.0,
        max_meta_bytes=(limits or StreamLimits()).stream_max_meta_bytes,
        formats=[mpb.FormatPair(format=name, modifier=modifier) for name, modifier in stream.formats],
        renegotiate=stream.renegotiate,
    )
    if stream.producer_counters is not None:
        info.producer.CopyFrom(stream.producer_counters)
    return info


def subscribe_response(
    subscription: Subscription, now: float, limits: StreamLimits | None = None
) -> pb.SubscribeResponse:
    link = subscription.link
    response = pb.SubscribeResponse(
        stream=stream_info(link.stream, now, limits),
        link_id=link.id,
        link_fd_ticket=subscription.link_ticket,
        max_held=link.max_held,
    )
    for slot in subscription.slots:
        attached = attach_response(slot.attachment)
        attached.mapping.CopyFrom(map_response(slot.mapping, slot.result))
        attached.mapping.fd_ticket = slot.ticket
        response.slots.append(attached)
    return response


def renegotiate_to_wire(event: StreamRenegotiateEvent) -> pb.Event:
    name, modifier = event.format
    return pb.Event(
        stream_renegotiate=pb.StreamRenegotiate(
            stream_id=event.stream_id,
            format=mpb.FormatPair(format=name, modifier=modifier),
            consumer_pid=max(event.consumer_pid, 0),
            reason=event.reason,
        )
    )


def link_opened_to_wire(event: StreamLinkOpenedEvent) -> pb.Event:
    return pb.Event(
        stream_link_opened=pb.StreamLinkOpened(
            stream_id=event.stream_id,
            link_id=event.link_id,
            consumer_session_id=event.consumer_session_id,
            consumer_pid=max(event.consumer_pid, 0),
            consumer_name=event.consumer_name,
            mode=event.mode,
            max_held=event.max_held,
            fd_ticket=event.fd_ticket,
        )
    )
