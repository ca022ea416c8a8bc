"""The SDK's exceptions, one per broker status, each with the broker's message."""

from __future__ import annotations

import re
from typing import Any

import grpc

from bufbroker import protocol
from bufbroker.trace import TraceStep, trace_from_wire
from bufbroker.v1 import broker_pb2

# Kept for callers that read them from here; defined in bufbroker.protocol.
ERROR_KIND_KEY = protocol.ERROR_KIND_KEY
TRACE_KEY = protocol.TRACE_KEY

# What gRPC itself answers when a request is over the broker's max_request_bytes (no handler sees it).
_REQUEST_TOO_LARGE = re.compile(r"SERVER: Received message larger than max \((\d+) vs\. (\d+)\)")


class BrokerError(Exception):
    """A call to the broker failed. ``code`` is the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None, trace: list[TraceStep] | None = None) -> None:
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


# --- streams: raised by the SDK from what a stream link says, not by the broker ---


class SlotReclaimed(FailedPrecondition):
    """The producer took back the slot of a frame this consumer held past the stream's stall_timeout.

    Raised by the frame's next access (``numpy()``, ``memoryview()``,
    ``release()``); the frame's memory may already show another frame.
    """

    def __init__(self, message: str, slot: int = 0, seq: int = 0, held_for: float = 0.0) -> None:
        super().__init__(message)
        self.slot = slot
        self.seq = seq
        self.held_for = held_for  # seconds the consumer had held it when the producer took it back


class EndOfStream(Exception):
    """The stream ended: its producer said Bye (closed the stream) or died, or the consumer unsubscribed.

    ``last_seq`` is the last frame the producer published, when it said so (0 otherwise).
    """

    def __init__(self, message: str, last_seq: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.last_seq = last_seq


_BY_KIND: dict[str, type[BrokerError]] = {
    protocol.KIND_NOT_FOUND: NotFound,
    protocol.KIND_INVALID_ARGUMENT: InvalidArgument,
    protocol.KIND_FAILED_PRECONDITION: FailedPrecondition,
    protocol.KIND_NO_COMMON_MAPPING_TYPE: NoCommonMappingType,
    protocol.KIND_PERMISSION_DENIED: PermissionDenied,
    protocol.KIND_UNAUTHENTICATED: Unauthenticated,
    protocol.KIND_RESOURCE_EXHAUSTED: ResourceExhausted,
    protocol.KIND_UNAVAILABLE: Unavailable,
}
_BY_CODE: dict[grpc.StatusCode, type[BrokerError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        InvalidArgument,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
    )
}


def _error_class(code: grpc.StatusCode, kind: str) -> type[BrokerError]:
    """The exception class for a failure: by its kind, else by its status (gRPC's own failures have no kind)."""
    return _BY_KIND.get(kind) or _BY_CODE.get(code, BrokerError)


def from_rpc_error(error: grpc.RpcError) -> BrokerError:
    """The SDK exception for a failed RPC, with the trace if the broker sent one."""
    call: Any = error  # a failed call's RpcError is also its grpc.Call
    code: grpc.StatusCode = call.code()
    kind = ""
    trace: list[TraceStep] = []
    for key, value in call.trailing_metadata() or ():
        if key == protocol.ERROR_KIND_KEY:
            kind = value
        elif key == protocol.TRACE_KEY:
            explained = broker_pb2.ExplainResponse()
            explained.ParseFromString(value)
            trace = trace_from_wire(explained.trace)
    cls = _error_class(code, kind)
    details: str = call.details() or str(code)
    if code == grpc.StatusCode.UNAVAILABLE and cls is Unavailable and not kind:
        details = f"the broker is unreachable ({details}); is `bufbroker serve` running?"
    too_large = _REQUEST_TOO_LARGE.search(details) if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not kind else None
    if too_large is not None:
        sent, limit = too_large.groups()
        details = (
            f"the request is {sent} bytes; the broker reads at most {limit} (setting max_request_bytes): "
            "send fewer offers, accept entries or labels, or ask the operator to raise max_request_bytes"
        )
    return cls(details, code, trace)


def from_call_error(error: Any) -> BrokerError:
    """The SDK exception for a call-channel CallError (the same as for the RPC)."""
    code = grpc.StatusCode.__members__.get(error.code, grpc.StatusCode.UNKNOWN)
    return _error_class(code, error.kind)(error.message or error.code, code, trace_from_wire(error.trace))
