"""Snapshots of broker state for introspection (gRPC, HTTP, CLI).

Each function reads the registry on the event loop and returns protobuf
messages, so one call is one consistent snapshot. Nothing here exposes fds,
session tokens or memory contents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bufbroker.v1 import broker_pb2 as pb
from bufbroker_broker import mapping_types
from bufbroker_broker.core.host_facts import HostFacts
from bufbroker_broker.core.registry import ACTIVE, EXIT_KEEP, Attachment, Buffer, Registry, Session
from bufbroker_broker.host.probe import probe_host_facts
from bufbroker_broker.server.wire.errors import trace_to_wire

Role = Literal["exporter", "importer", "both", "idle"]


def session_role(session: Session) -> Role:
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
        name=session.name,
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
        attachment_info(a) for _, a in sorted(registry.attachments.items()) if not buffer_id or a.buffer.id == buffer_id
    ]


def list_mapping_types(host: HostFacts | None = None) -> list[pb.MappingTypeInfo]:
    """Every registered type and whether ``host`` (the facts probed at start; else probed now) serves it."""
    if host is None:
        host = probe_host_facts()
    infos = []
    for name, mapping_type in mapping_types.MAPPING_TYPES.items():
        # Optional member: a type that depends on the host (udmabuf) says
        # whether it can work here and why not.
        supported, reason = mapping_types.host_support(mapping_type, host)
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
        on_exporter_exit=pb.EXPORTER_EXIT_POLICY_KEEP
        if buffer.on_exporter_exit == EXIT_KEEP
        else pb.EXPORTER_EXIT_POLICY_REVOKE,
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

    ``cells[i][j]`` is ``(verdict, reason, converter, format)`` for offer i and
    match j: the last step for that pair, since a converter is tried on a
    pair after its direct try failed. Pairs negotiation never reached (it
    stops at the first match) are ``not-examined``. ``chosen`` is the
    matched (offer, match), if any. ``format`` is the (format, modifier)
    pair a matched cell chose (FORMAT:MODIFIER), else empty.
    """

    offers: tuple[str, ...]
    matches: tuple[str, ...]
    cells: tuple[tuple[tuple[str, str, str, str], ...], ...]
    chosen: tuple[int, int] | None


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
    cells = [[(NOT_EXAMINED, "", "", "") for _ in columns] for _ in rows]
    chosen = None
    for step in steps:
        cells[step.offer_index][step.match_index] = (
            step.verdict,
            step.reason,
            getattr(step, "converter", ""),
            getattr(step, "format", ""),
        )
        if step.verdict == "matched":
            chosen = (step.offer_index, step.match_index)
    return TraceMatrix(tuple(rows), tuple(columns), tuple(tuple(row) for row in cells), chosen)
