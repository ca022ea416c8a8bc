"""The SDK's exceptions, one per broker status, each with the broker's message."""

from __future__ import annotations

from typing import Any

import grpc

ERROR_KIND_KEY = "bufbroker-error-kind"
TRACE_KEY = "bufbroker-trace-bin"


class BrokerError(Exception):
    """A call to the broker failed. ``code`` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None, trace: list | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.trace = trace or []


class NotFound(BrokerError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(BrokerError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(BrokerError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class NoCommonMappingType(FailedPrecondition):
    """Negotiation found no mapping type both sides support; see ``.trace``."""


class PermissionDenied(BrokerError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(BrokerError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(BrokerError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(BrokerError):
    code = grpc.StatusCode.UNAVAILABLE


_BY_CODE = {
    cls.code: cls
    for cls in (NotFound, InvalidArgument, FailedPrecondition, PermissionDenied, Unauthenticated, ResourceExhausted, Unavailable)
}


def _error_class(code: grpc.StatusCode, kind: str) -> type[BrokerError]:
    return NoCommonMappingType if kind == "no-common-mapping-type" else _BY_CODE.get(code, BrokerError)


def from_rpc_error(error: grpc.RpcError) -> BrokerError:
    """The SDK exception for a failed RPC, with the trace if the broker sent one."""
    from bufbroker.trace import trace_from_wire
    from bufbroker.v1 import broker_pb2

    code = error.code()
    kind = ""
    trace: list[Any] = []
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_KIND_KEY:
            kind = value
        elif key == TRACE_KEY:
            explained = broker_pb2.ExplainResponse()
            explained.ParseFromString(value)
            trace = trace_from_wire(explained.trace)
    cls = _error_class(code, kind)
    details = error.details() or str(code)
    if code == grpc.StatusCode.UNAVAILABLE and cls is Unavailable and not kind:
        details = f"the broker is unreachable ({details}); is `bufbroker serve` running?"
    return cls(details, code, trace)


def from_call_error(error: Any) -> BrokerError:
    """The SDK exception for a call-channel CallError (the same as for the RPC)."""
    from bufbroker.trace import trace_from_wire

    code = grpc.StatusCode.__members__.get(error.code, grpc.StatusCode.UNKNOWN)
    return _error_class(code, error.kind)(error.message or error.code, code, trace_from_wire(error.trace))
