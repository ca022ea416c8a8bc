"""Snapshots of broker state for introspection (gRPC, HTTP, CLI).

Each function reads the registry on the event loop and returns protobuf
messages, so one call is one consistent snapshot. Nothing here exposes fds,
session tokens or memory contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mpb

from bufbroker_broker import mapping_types
from bufbroker_broker.server.grpc.errors import trace_to_wire
from bufbroker_broker.core.errors import BrokerError, InvalidArgument, NotFound
from bufbroker_broker.core.registry import ACTIVE, EXIT_KEEP, Attachment, Buffer, Registry, Session


def session_role(session: Session) -> str:
    if session.buffers and session.attachments:
        return "both"
    if session.buffers:
        return "exporter"
    if session.attachments:
        return "importer"
    return "idle"


def session_info(session: Session) -> pb.SessionInfo:
    return pb.SessionInfo(
        id=session.id,
        pid=max(session.pid, 0),
        uid=max(session.uid, 0),
        gid=max(session.gid, 0),
        role=session_role(session),
        buffers=len(session.buffers),
        attachments=len(session.attachments),
        mappings=sum(len(a.mappings) for a in session.attachments.values()),
        fds_held=sum(len(b.fds) for b in session.buffers.values()),
        non_compliant=session.non_compliant,
        events_open=session.events_open,
    )


def attachment_info(attachment: Attachment) -> pb.AttachmentInfo:
    return pb.AttachmentInfo(
        id=attachment.id,
        buffer_id=attachment.buffer.id,
        session_id=attachment.session.id,
        importer_pid=max(attachment.session.pid, 0),
        map_type=attachment.map_type.name,
        trace=trace_to_wire(attachment.trace),
        pinned=attachment.pinned,
        mappings=len(attachment.mappings),
        non_compliant=attachment.non_compliant,
    )


def list_sessions(registry: Registry) -> list[pb.SessionInfo]:
    return [session_info(s) for _, s in sorted(registry.sessions.items())]


def list_attachments(registry: Registry, buffer_id: int = 0) -> list[pb.AttachmentInfo]:
    return [
        attachment_info(a)
        for _, a in sorted(registry.attachments.items())
        if not buffer_id or a.buffer.id == buffer_id
    ]


def list_mapping_types() -> list[pb.MappingTypeInfo]:
    infos = []
    for name, mapping_type in mapping_types.MAPPING_TYPES.items():
        # Optional member: a type that depends on the host (udmabuf) says
        # whether it can work here and why not.
        support = getattr(mapping_type, "host_support", None)
        supported, reason = support() if callable(support) else (True, "")
        infos.append(
            pb.MappingTypeInfo(
                name=name, description=mapping_type.describe(), supported=supported, support_reason=reason
            )
        )
    return infos


def buffer_info(buffer: Buffer) -> pb.BufferInfo:
    info = pb.BufferInfo(
        id=buffer.id,
        name=buffer.name,
        size=buffer.size,
        labels=buffer.labels,
        offer_types=[o.type.name for o in buffer.offers],
        offers=[mapping_types.offer_to_wire(o) for o in buffer.offers],
        exporter_pid=max(buffer.exporter.pid, 0),
        exporter_uid=max(buffer.exporter.uid, 0),
        exporter_session_id=buffer.exporter.id,
        state=pb.BUFFER_STATE_ACTIVE if buffer.state == ACTIVE else pb.BUFFER_STATE_REVOKED,
        attachment_count=len(buffer.attachments),
        fd_count=len(buffer.fds),
        generation=buffer.generation,
        allow=list(buffer.allow),
        on_exporter_exit=pb.EXPORTER_EXIT_POLICY_KEEP if buffer.on_exporter_exit == EXIT_KEEP else pb.EXPORTER_EXIT_POLICY_REVOKE,
        exporter_gone=buffer.exporter_gone,
        pinned_by=", ".join(f"session {a.session.id} (pid {a.session.pid})" for a in buffer.pinned_by),
    )
    if buffer.layout is not None:
        info.layout.CopyFrom(buffer.layout)
    return info


# --- explain and trace matrices (HTTP, CLI) -----------------------------------

NOT_EXAMINED = "not-examined"


@dataclass(frozen=True)
class TraceMatrix:
    """A negotiation trace laid out as offers (rows) × matches (columns).

    ``cells[i][j]`` is ``(verdict, reason, converter)`` for offer i and
    match j: the last step for that pair, since a converter is tried on a
    pair after its direct try failed. Pairs negotiation never reached (it
    stops at the first match) are ``not-examined``. ``chosen`` is the
    matched (offer, match), if any.
    """

    offers: tuple[str, ...]
    matches: tuple[str, ...]
    cells: tuple[tuple[tuple[str, str, str], ...], ...]
    chosen: Optional[tuple[int, int]]


def trace_matrix(offers: Sequence[str], matches: Sequence[str], trace: Iterable[Any]) -> TraceMatrix:
    """Lay ``trace`` (TraceStep-like objects) out over the offers and matches.

    The trace names the type of each pair it examined, so rows or columns
    missing from ``offers`` / ``matches`` (an attachment does not keep its
    importer's accept list) are filled in from it.
    """
    steps = list(trace)
    rows = list(offers)
    columns = list(matches)
    for step in steps:
        while len(rows) <= step.offer_index:
            rows.append("?")
        while len(columns) <= step.match_index:
            columns.append("?")
        if rows[step.offer_index] == "?":
            rows[step.offer_index] = step.offer_type
        if columns[step.match_index] == "?":
            columns[step.match_index] = step.match_type
    cells = [[(NOT_EXAMINED, "", "") for _ in columns] for _ in rows]
    chosen = None
    for step in steps:
        cells[step.offer_index][step.match_index] = (step.verdict, step.reason, getattr(step, "converter", ""))
        if step.verdict == "matched":
            chosen = (step.offer_index, step.match_index)
    return TraceMatrix(tuple(rows), tuple(columns), tuple(tuple(row) for row in cells), chosen)


def _spec_by_name(container: Any, name: str, message_attr: str, access_field: str, access: int) -> Any:
    """Fill one Offer or Match oneof for a type given by name, with its access."""
    arms = {f.name for f in container.DESCRIPTOR.oneofs_by_name["kind"].fields} - {"plugin"}
    if name in arms:
        message = getattr(container, name)
        message.SetInParent()
        if access and access_field in message.DESCRIPTOR.fields_by_name:
            setattr(message, access_field, access)
        return container
    container.plugin.type_name = name
    mapping_type = mapping_types.MAPPING_TYPES.get(name)
    if mapping_type is not None:   # unknown names are left for the broker to refuse, with its list
        message = getattr(mapping_type, message_attr)()
        if access and access_field in message.DESCRIPTOR.fields_by_name:
            setattr(message, access_field, access)
        container.plugin.body.Pack(message)
    return container


def offers_by_name(names: Sequence[str]) -> list[mpb.Offer]:
    """Offers from ``TYPE`` or ``TYPE:read`` / ``TYPE:read_write`` (the most an importer gets)."""
    offers = []
    for entry in names:
        name, _, access = entry.partition(":")
        offers.append(_spec_by_name(mpb.Offer(), name.strip(), "offer_message", "max_access", access_by_name(access)))
    return offers


def accept_by_name(names: Sequence[str], access: int) -> list[mpb.Match]:
    """An accept list from type names, each asking for ``access``."""
    return [_spec_by_name(mpb.Match(), name.strip(), "match_message", "access", access) for name in names]


def access_by_name(name: str) -> int:
    values = {"": mpb.ACCESS_UNSPECIFIED, "read": mpb.ACCESS_READ, "read_write": mpb.ACCESS_READ_WRITE}
    if name not in values:
        raise InvalidArgument(f"access {name!r} is not one of read, read_write")
    return values[name]


# What a dry run against a bare offers list may assume about the buffer.
EXPLAIN_MAX_SIZE = 1 << 46


def explain(
    registry: Registry,
    session: Session,
    accept: Sequence[mpb.Match],
    access: int,
    buffer: Optional[Buffer] = None,
    offers: Sequence[mpb.Offer] = (),
) -> pb.ExplainResponse:
    """Negotiate without attaching, against ``buffer`` or a bare ``offers`` list.

    Returns the chosen type (empty when nothing matched), the full trace and,
    when an attach would fail, why. Raises NotFound or InvalidArgument for
    bad input (an unknown type, a bad access value), as Attach would.
    """
    specs, _ = mapping_types.accept_from_wire(accept, access)
    try:
        if buffer is None:
            negotiation = registry.explain_offers(
                session, mapping_types.offers_from_wire(offers, (EXPLAIN_MAX_SIZE,), EXPLAIN_MAX_SIZE), specs
            )
        else:
            negotiation = registry.explain(session, buffer, specs)
    except (NotFound, InvalidArgument):
        raise
    except BrokerError as error:
        return pb.ExplainResponse(trace=trace_to_wire(getattr(error, "trace", ())), error=error.message)
    return pb.ExplainResponse(map_type=negotiation.map_type.name, trace=trace_to_wire(negotiation.trace))
