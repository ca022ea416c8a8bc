"""Replies that gRPC and the call channels both send: one builder each."""

from __future__ import annotations

from bufbroker.v1 import broker_pb2 as pb
from bufbroker_broker import mapping_types
from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.mapping_type import MapResult
from bufbroker_broker.core.registry import Attachment, Mapping
from bufbroker_broker.server.wire.errors import trace_to_wire


def attach_response(attachment: Attachment) -> pb.AttachResponse:
    response = pb.AttachResponse(
        attachment_id=attachment.id,
        buffer_id=attachment.buffer.id,
        map_type=attachment.map_type.name,
        trace=trace_to_wire(attachment.trace),
        pinned=attachment.pinned,
    )
    if attachment.format is not None:
        response.format.format, response.format.modifier = attachment.format
    return response


def map_response(mapping: Mapping, result: MapResult) -> pb.MapResponse:
    """The handle, fd count, size, and the generation and layout the mapping shows (the ticket is added on send)."""
    attachment = mapping.attachment
    buffer = attachment.buffer
    response = pb.MapResponse(
        mapping_id=mapping.id,
        handle=mapping_types.handle_to_wire(attachment.map_type, result.handle),
        fd_count=len(result.fds),
        size=buffer.size,
        generation=buffer.generation,
    )
    if buffer.layout is not None:
        response.layout.CopyFrom(buffer.layout)
    if attachment.format is not None:
        response.format.format, response.format.modifier = attachment.format
    return response


def named_buffer(request: pb.AttachRequest | pb.ExplainRequest) -> tuple[int, str]:
    """The (id, name) a request's ``buffer`` oneof names; InvalidArgument when it names none."""
    which = request.WhichOneof("buffer")
    if which is None:
        raise InvalidArgument("name the buffer: set buffer_id or buffer_name")
    return (0, request.buffer_name) if which == "buffer_name" else (request.buffer_id, "")
