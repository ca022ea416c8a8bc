"""server/wire/errors.py: the one place BrokerErrors take their wire forms.

Every BrokerError class reaches a client with its own status and kind: as an
HTTP status, a call channel's CallError, an fd channel Notice and a gRPC
status (through a real grpc.aio server on a unix socket). A bug becomes the
one INTERNAL text bufbroker.protocol shares with the SDK.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest

from bufbroker import protocol
from bufbroker.v1 import broker_pb2 as pb
from bufbroker_broker.core import errors
from bufbroker_broker.core.errors import BrokerError, NoCommonMappingType
from bufbroker_broker.core.trace import TraceStep
from bufbroker_broker.server.wire.errors import (
    call_error,
    error_trace,
    grpc_errors,
    http_status,
    internal_call_error,
    notice,
    trace_to_wire,
)

# (class, gRPC status name, HTTP status, kind the SDK reads)
EXPECTED = [
    (errors.InvalidArgument, "INVALID_ARGUMENT", 400, protocol.KIND_INVALID_ARGUMENT),
    (errors.Unauthenticated, "UNAUTHENTICATED", 401, protocol.KIND_UNAUTHENTICATED),
    (errors.PermissionDenied, "PERMISSION_DENIED", 403, protocol.KIND_PERMISSION_DENIED),
    (errors.NotFound, "NOT_FOUND", 404, protocol.KIND_NOT_FOUND),
    (errors.FailedPrecondition, "FAILED_PRECONDITION", 409, protocol.KIND_FAILED_PRECONDITION),
    (errors.NoCommonMappingType, "FAILED_PRECONDITION", 409, protocol.KIND_NO_COMMON_MAPPING_TYPE),
    (errors.ResourceExhausted, "RESOURCE_EXHAUSTED", 429, protocol.KIND_RESOURCE_EXHAUSTED),
    (errors.Unavailable, "UNAVAILABLE", 503, protocol.KIND_UNAVAILABLE),
]
IDS = [cls.__name__ for cls, *_ in EXPECTED]

TRACE = (
    TraceStep(0, "segments", 0, "memfd", "type-differs"),
    TraceStep(1, "memfd", 0, "memfd", "soft-mismatch", "access: read only", ""),
    TraceStep(0, "segments", 0, "memfd", "soft-mismatch", "segments->memfd: 2 extents", "segments->memfd"),
)


def _every_broker_error_class() -> set[type[BrokerError]]:
    found, todo = set(), [BrokerError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__ == errors.__name__:
                found.add(sub)
                todo.append(sub)
    return found


def test_the_table_covers_every_broker_error_class():
    assert _every_broker_error_class() == {cls for cls, *_ in EXPECTED}


@pytest.mark.parametrize(("cls", "status", "http", "kind"), EXPECTED, ids=IDS)
def test_each_error_maps_to_its_http_status(cls, status, http, kind):
    assert http_status(cls("why")) == http


def test_an_error_without_a_known_status_is_a_bad_request_over_http():
    assert http_status(BrokerError("an unclassified refusal")) == 400


@pytest.mark.parametrize(("cls", "status", "http", "kind"), EXPECTED, ids=IDS)
def test_each_error_becomes_a_call_error_with_its_code_kind_and_message(cls, status, http, kind):
    message = call_error(42, cls("what to do next"))
    assert message.WhichOneof("kind") == "reply"
    reply = message.reply
    assert reply.call_id == 42 and reply.WhichOneof("reply") == "error"
    assert (reply.error.code, reply.error.kind, reply.error.message) == (status, kind, "what to do next")
    assert protocol.STATUS_BY_KIND[reply.error.kind] == reply.error.code, "the SDK reads the same status"
    assert list(reply.error.trace) == []


def test_a_no_common_mapping_types_trace_travels_in_the_call_error():
    error = NoCommonMappingType("no common mapping type: ...", TRACE)
    assert error_trace(error) == TRACE
    sent = call_error(7, error).reply.error
    assert [
        (s.offer_index, s.offer_type, s.match_index, s.match_type, s.verdict, s.reason, s.converter) for s in sent.trace
    ] == [(s.offer_index, s.offer_type, s.match_index, s.match_type, s.verdict, s.reason, s.converter) for s in TRACE]


def test_a_match_errors_trace_travels_too():
    error = errors.FailedPrecondition("the device is busy")
    error.trace = TRACE[:1]
    assert [s.verdict for s in call_error(1, error).reply.error.trace] == ["type-differs"]


def test_trace_to_wire_keeps_every_field():
    [wire] = trace_to_wire(TRACE[2:])
    assert wire == pb.TraceStep(
        offer_index=0,
        offer_type="segments",
        match_index=0,
        match_type="memfd",
        verdict="soft-mismatch",
        reason="segments->memfd: 2 extents",
        converter="segments->memfd",
    )


def test_internal_call_error_is_the_shared_internal_text():
    reply = internal_call_error(9, "Map").reply
    assert reply.call_id == 9
    assert (reply.error.code, reply.error.kind) == ("INTERNAL", protocol.KIND_INTERNAL)
    assert reply.error.message == protocol.internal_error_message("Map")
    assert "Map" in reply.error.message and list(reply.error.trace) == []


@pytest.mark.parametrize(("cls", "status", "http", "kind"), EXPECTED, ids=IDS)
def test_a_notice_carries_the_nonce_status_and_message(cls, status, http, kind):
    message = notice("nonce-1", cls("fd 0 is a pipe"))
    assert message.WhichOneof("kind") == "notice"
    assert (message.notice.nonce, message.notice.code, message.notice.message) == ("nonce-1", status, "fd 0 is a pipe")


# --- gRPC, through a real server -------------------------------------------------------------


class _Service:
    """Raises whatever the test put in ``raise_next``."""

    def __init__(self) -> None:
        self.raise_next: BaseException | None = None

    @grpc_errors
    async def Call(self, request: bytes, context) -> bytes:
        if self.raise_next is not None:
            raise self.raise_next
        return b"fine"


def _call_through_grpc(tmp_path, raised: BaseException | None) -> tuple[object, bytes | None]:
    """Serve _Service.Call on a unix socket and call it once: (the AioRpcError or None, the reply)."""

    async def scenario():
        service = _Service()
        service.raise_next = raised
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(service.Call)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.T", {"Call": handler}),))
        path = tmp_path / "grpc.sock"
        assert server.add_insecure_port(f"unix:{path}") != 0
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
                try:
                    return None, await channel.unary_unary("/test.T/Call")(b"request", timeout=5)
                except grpc.aio.AioRpcError as error:
                    return error, None
        finally:
            await server.stop(None)

    return asyncio.run(scenario())


def test_grpc_errors_aborts_with_the_status_kind_and_trace(tmp_path):
    error, reply = _call_through_grpc(tmp_path, NoCommonMappingType("nothing in common", TRACE[:1]))
    assert reply is None and error is not None
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "nothing in common"
    metadata = dict(error.trailing_metadata())
    assert metadata[protocol.ERROR_KIND_KEY] == protocol.KIND_NO_COMMON_MAPPING_TYPE
    explained = pb.ExplainResponse.FromString(metadata[protocol.TRACE_KEY])
    assert explained.error == "nothing in common" and [s.verdict for s in explained.trace] == ["type-differs"]


def test_grpc_errors_sends_no_trace_for_an_error_without_one(tmp_path):
    error, _ = _call_through_grpc(tmp_path, errors.NotFound("no buffer 3"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    metadata = dict(error.trailing_metadata())
    assert metadata[protocol.ERROR_KIND_KEY] == protocol.KIND_NOT_FOUND and protocol.TRACE_KEY not in metadata


def test_grpc_errors_turns_a_bug_into_the_shared_internal_text_and_logs_it(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="bufbroker_broker.server.wire.errors"):
        error, _ = _call_through_grpc(tmp_path, RuntimeError("a secret detail"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == protocol.internal_error_message("Call")
    assert "a secret detail" not in error.details()
    [record] = [r for r in caplog.records if r.name == "bufbroker_broker.server.wire.errors"]
    assert "bug in Call" in record.getMessage() and record.exc_info is not None


def test_grpc_errors_passes_a_reply_through(tmp_path):
    assert _call_through_grpc(tmp_path, None) == (None, b"fine")
