"""bufbroker.errors: one exception class per broker error kind, whichever path the error came by."""

from __future__ import annotations

import grpc
import pytest

from bufbroker import errors, protocol
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import fd_channel_pb2 as fdpb

EXPECTED = {
    protocol.KIND_NOT_FOUND: errors.NotFound,
    protocol.KIND_INVALID_ARGUMENT: errors.InvalidArgument,
    protocol.KIND_FAILED_PRECONDITION: errors.FailedPrecondition,
    protocol.KIND_NO_COMMON_MAPPING_TYPE: errors.NoCommonMappingType,
    protocol.KIND_PERMISSION_DENIED: errors.PermissionDenied,
    protocol.KIND_UNAUTHENTICATED: errors.Unauthenticated,
    protocol.KIND_RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    protocol.KIND_UNAVAILABLE: errors.Unavailable,
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_a_call_error_becomes_the_class_of_its_kind_with_its_status_and_message(kind):
    status = protocol.STATUS_BY_KIND[kind]
    error = errors.from_call_error(fdpb.CallError(code=status, kind=kind, message=f"it failed: {kind}"))
    assert type(error) is EXPECTED[kind]
    assert error.code == grpc.StatusCode[status]
    assert error.message == f"it failed: {kind}"


def test_no_common_mapping_type_keeps_the_negotiation_trace():
    step = pb.TraceStep(offer_index=0, offer_type="memfd", match_index=0, match_type="segments", verdict="type-differs")
    error = errors.from_call_error(
        fdpb.CallError(
            code="FAILED_PRECONDITION", kind=protocol.KIND_NO_COMMON_MAPPING_TYPE, message="no", trace=[step]
        )
    )
    assert isinstance(error, errors.FailedPrecondition)
    assert [(s.offer_type, s.match_type, s.verdict) for s in error.trace] == [("memfd", "segments", "type-differs")]


def test_an_internal_error_is_the_generic_broker_error_with_the_protocol_text():
    text = protocol.internal_error_message("a call")
    error = errors.from_call_error(fdpb.CallError(code="INTERNAL", kind=protocol.KIND_INTERNAL, message=text))
    assert type(error) is errors.BrokerError
    assert error.code == grpc.StatusCode.INTERNAL and "this is a bug" in str(error)


def test_without_a_kind_the_status_picks_the_class():
    error = errors.from_call_error(fdpb.CallError(code="NOT_FOUND", message="gone"))
    assert type(error) is errors.NotFound
    unknown = errors.from_call_error(fdpb.CallError(code="NO_SUCH_STATUS", message=""))
    assert type(unknown) is errors.BrokerError and unknown.code == grpc.StatusCode.UNKNOWN


class _Failed(grpc.RpcError):
    """A failed call as grpc raises it: an RpcError that is also its Call."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()


def test_a_request_over_the_brokers_receive_limit_names_max_request_bytes():
    refused = _Failed(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "SERVER: Received message larger than max (2097157 vs. 1048576)"
    )
    error = errors.from_rpc_error(refused)
    assert type(error) is errors.ResourceExhausted
    assert "2097157 bytes" in str(error) and "at most 1048576 (setting max_request_bytes)" in str(error)
    other = errors.from_rpc_error(_Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "this session already holds 5 buffers"))
    assert str(other) == "this session already holds 5 buffers", "a broker's own message is kept as it is"
