"""Snapshots of broker state for introspection (gRPC, HTTP, CLI).

Each function reads the registry on the event loop and returns protobuf
messages, so one call is one consistent snapshot. Nothing here exposes fds,
session tokens or memory contents.
"""

from __future__ import annotations

from bufbroker.v1 import broker_pb2 as pb

from broker import mapping_types
from broker.api.grpc_errors import trace_to_wire
from broker.core.registry import ACTIVE, EXIT_KEEP, Attachment, Buffer, Registry, Session


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
