"""The HTTP API's JSON shapes (pydantic), built from introspection snapshots.

These models are the contract /openapi.json publishes. They are built from
the protobuf snapshots in broker/introspection.py and the registry objects
they came from, on the event loop, in one go per response. None of them
has a field for an fd, a session token or memory contents.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import stream_pb2 as spb
from bufbroker_broker.core import registry as core
from bufbroker_broker.server.observe import introspection
from bufbroker_broker.server.wire.offers import offer_description

BufferState = Literal["active", "revoked"]
Access = Literal["read", "read_write"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(Model):
    """An error: what was wrong and what to do."""

    detail: str


class Plane(Model):
    offset: int
    stride: int


class Layout(Model):
    """How the exporter describes the pixels; the broker never reads them."""

    fourcc: str
    width: int
    height: int
    modifier: int
    planes: list[Plane]


class Offer(Model):
    """One exporter offer: its type, its type's own options, who may use it."""

    type: str
    options: dict[str, Any] = Field(description="the type's offer message as JSON (e.g. max_access, extents)")
    restricted_to: list[str] = Field(description="principals this offer is for; empty: everyone")


class TraceStep(Model):
    """One examined (offer, match) pair and its verdict."""

    offer_index: int
    offer_type: str
    match_index: int
    match_type: str
    verdict: str = Field(description="type-differs, soft-mismatch, matched or error")
    reason: str
    converter: str = Field(
        description="the converter tried for this pair (e.g. segments->memfd); empty for a direct pair"
    )
    format: str = Field(
        default="",
        description="the (format, modifier) pair chosen, as FORMAT:MODIFIER (e.g. NV12:LINEAR), when both sides "
        "listed pairs; empty otherwise",
    )


class TraceCell(Model):
    """The last verdict for one (offer, match) pair: a converter is tried after the direct pair failed."""

    verdict: str = Field(description="type-differs, soft-mismatch, matched, error, or not-examined")
    reason: str
    converter: str
    format: str = Field(default="", description="the (format, modifier) pair a matched cell chose, e.g. NV12:LINEAR")


class ChosenPair(Model):
    offer_index: int
    match_index: int


class TraceMatrix(Model):
    """The trace as offers (rows, exporter order) × matches (columns, importer order)."""

    offers: list[str]
    matches: list[str]
    cells: list[list[TraceCell]]
    chosen: ChosenPair | None


class Attachment(Model):
    id: int
    buffer_id: int
    buffer_name: str
    session_id: int
    importer_pid: int
    map_type: str
    pinned: bool
    mappings: int
    non_compliant: bool
    invalid: str = Field(description="why the attachment can no longer map; empty while it can")
    trace: list[TraceStep]
    matrix: TraceMatrix


class Buffer(Model):
    id: int
    name: str
    size: int = Field(description="bytes")
    labels: dict[str, str]
    layout: Layout | None
    offer_types: list[str]
    offers: list[Offer]
    exporter_pid: int
    exporter_uid: int
    exporter_session_id: int
    exporter_gone: bool
    on_exporter_exit: Literal["revoke", "keep"]
    allow: list[str]
    state: BufferState
    generation: int = Field(description="bumped by every move")
    attachment_count: int
    pinned: bool = Field(description="a compat attachment pins it: it cannot move")
    fd_count: int = Field(description="how many memfds back it (a count; fds never leave the broker this way)")


class BufferDetail(Buffer):
    attachments: list[Attachment]


class BufferPage(Model):
    buffers: list[Buffer]
    total: int = Field(description="buffers matching the filters, on every page")
    limit: int
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last one")


class Session(Model):
    id: int
    pid: int
    uid: int
    gid: int
    role: Literal["exporter", "importer", "both", "idle"]
    buffers: int
    attachments: int
    mappings: int
    fds_held: int = Field(description="how many fds the broker holds for this session's buffers (a count)")
    non_compliant: bool = Field(description="ignored a MoveNotify deadline")
    events_open: bool
    buffer_ids: list[int]
    attachment_ids: list[int]
    name: str = Field("", description="what the session calls itself (connect(name=...)); empty when unnamed")


class SessionList(Model):
    sessions: list[Session]


class AttachmentList(Model):
    attachments: list[Attachment]


class MappingType(Model):
    name: str
    description: str
    supported: bool = Field(description="usable on this host")
    support_reason: str


class MappingTypeList(Model):
    mapping_types: list[MappingType]


class ExplainRequest(Model):
    """A dry run: against a buffer (buffer_id or buffer_name) or a bare offers list."""

    buffer_id: int | None = Field(None, ge=1, le=2**63 - 1)
    buffer_name: str | None = Field(None, max_length=256)
    # How many offers and accept entries: the broker's max_offers and max_accept_entries (Operations.explain).
    offers: list[str] | None = Field(
        None, description="with no buffer: offer types in exporter order, each TYPE or TYPE:read"
    )
    accept: list[str] = Field(
        default_factory=list,
        description="the importer's types in its order; empty: a compat importer (memfd)",
    )
    access: Access = "read"
    uid: int | None = Field(
        None, ge=0, lt=2**32, description="explain for an importer of this uid (default: the broker's)"
    )
    gid: int | None = Field(
        None, ge=0, lt=2**32, description="explain for an importer of this gid (default: the broker's)"
    )


class ExplainResult(Model):
    would_attach: bool
    map_type: str | None = Field(description="what an attach would negotiate; null when it would fail")
    error: str | None = Field(description="why an attach would fail")
    trace: list[TraceStep]
    matrix: TraceMatrix


class Stats(Model):
    version: str
    pid: int
    uptime_seconds: float
    sessions: int
    buffers: int
    attachments: int
    mappings: int
    fds_held: int
    fds_received: int
    fds_sent: int
    fds_expired: int
    negotiations: dict[str, int] = Field(description="since start, by result (matched, no-common-type, error)")
    moves: int
    revokes: int
    last_event_id: int


class Overview(Model):
    """Everything the dashboard draws, in one consistent snapshot."""

    stats: Stats
    sessions: list[Session]
    buffers: list[Buffer]
    buffers_total: int
    buffers_next_cursor: str | None = Field(
        None, description="set when the page was cut by bytes: pass as cursor to /v1/buffers for the rest"
    )
    attachments: list[Attachment]


class RevokeRequest(Model):
    reason: str = Field("", max_length=512)


class Revoked(Model):
    buffer_id: int
    state: BufferState
    reason: str


class SessionEnded(Model):
    session_id: int
    pid: int
    reason: str


class StreamCounters(Model):
    """Counters of a stream or one of its links, as its producer (and, for latency, its consumer) reported."""

    published: int
    delivered: int
    dropped_busy: int = Field(description="latest mode: frames dropped because the consumer was busy")
    dropped_overwritten: int = Field(description='drop="oldest": frames overwritten before delivery')
    released: int
    reclaimed: int = Field(description="slots taken back after a stall")
    held_now: int
    longest_hold: float = Field(description="seconds, of the slots held now")
    lag: int = Field(description="seqs behind the newest published frame")
    last_seq: int
    fps: float
    latency_p50_us: float = Field(description="hand-off latency (publish to a readable frame), microseconds")
    latency_p99_us: float
    generation: int
    held_slots: list[int] = Field(
        default_factory=list, description="links: the slots the consumer holds now (indexes into slot_buffer_ids)"
    )


class StreamConsumer(Model):
    link_id: int
    session_id: int
    pid: int
    name: str
    mode: Literal["queue", "latest"]
    max_held: int
    stalled: bool = Field(description="held a slot past the stall timeout at the producer's last report")
    counters: StreamCounters


class Stream(Model):
    """A named producer endpoint: its slot buffers, its consumers' links and their reported counters."""

    id: int
    name: str
    producer_session_id: int
    producer_pid: int
    producer_name: str
    slot_buffer_ids: list[int]
    stall_timeout: float = Field(description="seconds")
    on_stall: Literal["reclaim", "report"]
    max_held: int = Field(description="most slots one consumer may hold")
    max_meta_bytes: int
    labels: dict[str, str]
    consumers: list[StreamConsumer]
    producer: StreamCounters | None = Field(description="the producer's last report; null before the first")
    report_age: float | None = Field(description="seconds since the producer's last report; null before the first")


class StreamPage(Model):
    streams: list[Stream]
    total: int = Field(description="live streams, on every page")
    limit: int
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last one")


# --- builders ---------------------------------------------------------------


def trace_steps(trace: Any) -> list[TraceStep]:
    return [
        TraceStep(
            offer_index=s.offer_index,
            offer_type=s.offer_type,
            match_index=s.match_index,
            match_type=s.match_type,
            verdict=s.verdict,
            reason=s.reason,
            converter=getattr(s, "converter", ""),
            format=getattr(s, "format", ""),
        )
        for s in trace
    ]


def trace_matrix(offers: list[str], matches: list[str], trace: Any) -> TraceMatrix:
    laid_out = introspection.trace_matrix(offers, matches, trace)
    return TraceMatrix(
        offers=list(laid_out.offers),
        matches=list(laid_out.matches),
        cells=[[TraceCell(verdict=v, reason=r, converter=c, format=f) for v, r, c, f in row] for row in laid_out.cells],
        chosen=ChosenPair(offer_index=laid_out.chosen[0], match_index=laid_out.chosen[1]) if laid_out.chosen else None,
    )


def _offer(offer: Any) -> Offer:
    type_name, options, restricted = offer_description(offer)
    return Offer(type=type_name, options=options, restricted_to=restricted)


def buffer_model(buffer: core.Buffer) -> Buffer:
    info = introspection.buffer_info(buffer)
    layout = None
    if info.HasField("layout"):
        layout = Layout(
            fourcc=info.layout.fourcc,
            width=info.layout.width,
            height=info.layout.height,
            modifier=info.layout.modifier,
            planes=[Plane(offset=p.offset, stride=p.stride) for p in info.layout.planes],
        )
    return Buffer(
        id=info.id,
        name=info.name,
        size=info.size,
        labels=dict(info.labels),
        layout=layout,
        offer_types=list(info.offer_types),
        offers=[_offer(o) for o in info.offers],
        exporter_pid=info.exporter_pid,
        exporter_uid=info.exporter_uid,
        exporter_session_id=info.exporter_session_id,
        exporter_gone=info.exporter_gone,
        on_exporter_exit="keep" if info.on_exporter_exit == pb.EXPORTER_EXIT_POLICY_KEEP else "revoke",
        allow=list(info.allow),
        state="active" if info.state == pb.BUFFER_STATE_ACTIVE else "revoked",
        generation=info.generation,
        attachment_count=info.attachment_count,
        pinned=bool(info.pinned_by),
        fd_count=info.fd_count,
    )


def attachment_model(attachment: core.Attachment) -> Attachment:
    info = introspection.attachment_info(attachment)
    offers = [o.type.name for o in attachment.buffer.offers]
    return Attachment(
        id=info.id,
        buffer_id=info.buffer_id,
        buffer_name=attachment.buffer.name,
        session_id=info.session_id,
        importer_pid=info.importer_pid,
        map_type=info.map_type,
        pinned=info.pinned,
        mappings=info.mappings,
        non_compliant=info.non_compliant,
        invalid=getattr(attachment, "invalid", ""),
        trace=trace_steps(info.trace),
        matrix=trace_matrix(offers, [], info.trace),
    )


def buffer_detail(buffer: core.Buffer) -> BufferDetail:
    return BufferDetail(
        **buffer_model(buffer).model_dump(),
        attachments=[attachment_model(a) for _, a in sorted(buffer.attachments.items())],
    )


def session_model(session: core.Session) -> Session:
    info = introspection.session_info(session)
    return Session(
        id=info.id,
        pid=info.pid,
        uid=info.uid,
        gid=info.gid,
        role=introspection.session_role(session),
        buffers=info.buffers,
        attachments=info.attachments,
        mappings=info.mappings,
        fds_held=info.fds_held,
        non_compliant=info.non_compliant,
        events_open=info.events_open,
        buffer_ids=sorted(session.buffers),
        attachment_ids=sorted(session.attachments),
        name=info.name,
    )


def mapping_type_model(info: pb.MappingTypeInfo) -> MappingType:
    return MappingType(
        name=info.name, description=info.description, supported=info.supported, support_reason=info.support_reason
    )


def stream_counters_model(counters: pb.StreamCounters) -> StreamCounters:
    return StreamCounters(
        published=counters.published,
        delivered=counters.delivered,
        dropped_busy=counters.dropped_busy,
        dropped_overwritten=counters.dropped_overwritten,
        released=counters.released,
        reclaimed=counters.reclaimed,
        held_now=counters.held_now,
        longest_hold=counters.longest_hold,
        lag=counters.lag,
        last_seq=counters.last_seq,
        fps=counters.fps,
        latency_p50_us=counters.latency_p50_us,
        latency_p99_us=counters.latency_p99_us,
        generation=counters.generation,
        held_slots=list(counters.held_slots),
    )


def stream_model(info: pb.StreamInfo) -> Stream:
    """A stream from its snapshot (server/streams.py stream_info)."""
    return Stream(
        id=info.id,
        name=info.name,
        producer_session_id=info.producer_session_id,
        producer_pid=info.producer_pid,
        producer_name=info.producer_name,
        slot_buffer_ids=list(info.slot_buffer_ids),
        stall_timeout=info.stall_timeout,
        on_stall="report" if info.on_stall == pb.STALL_POLICY_REPORT else "reclaim",
        max_held=info.max_held,
        max_meta_bytes=info.max_meta_bytes,
        labels=dict(info.labels),
        consumers=[
            StreamConsumer(
                link_id=c.link_id,
                session_id=c.session_id,
                pid=c.pid,
                name=c.name,
                mode="latest" if c.mode == spb.CONSUMER_MODE_LATEST else "queue",
                max_held=c.max_held,
                stalled=c.stalled,
                counters=stream_counters_model(c.counters),
            )
            for c in info.consumers
        ],
        producer=stream_counters_model(info.producer) if info.HasField("producer") else None,
        report_age=info.report_age if info.report_age >= 0 else None,
    )
