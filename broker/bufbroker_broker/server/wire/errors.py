"""The one place where broker errors take their wire forms.

An expected error (a BrokerError) reaches its client with its status, its
message, its kind (which the SDK turns into the matching exception class)
and, after a failed negotiation, the trace: as a gRPC status with trailing
metadata, as a call channel's CallError, as an fd channel Notice, or as an
HTTP status. Anything else is a bug: it is logged once with its traceback and
the client gets one generic INTERNAL whose text comes from bufbroker.protocol.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from bufbroker import protocol
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import fd_channel_pb2 as fpb
from bufbroker_broker.core.errors import BrokerError
from bufbroker_broker.core.negotiate import TraceStep

log = logging.getLogger(__name__)

# gRPC status names of BrokerErrors -> HTTP status codes.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
}


def trace_to_wire(trace: Iterable[TraceStep]) -> list[pb.TraceStep]:
    return [
        pb.TraceStep(
            offer_index=s.offer_index,
            offer_type=s.offer_type,
            match_index=s.match_index,
            match_type=s.match_type,
            verdict=s.verdict,
            reason=s.reason,
            converter=s.converter,
            format=s.format,
        )
        for s in trace
    ]


def error_trace(error: BrokerError) -> tuple[TraceStep, ...]:
    """The negotiation trace a failed attach carries (empty for other errors)."""
    trace: tuple[TraceStep, ...] = getattr(error, "trace", ())
    return trace


# --- gRPC ------------------------------------------------------------------------------


async def grpc_abort(context: grpc.aio.ServicerContext[Any, Any], error: BrokerError) -> None:
    metadata: list[tuple[str, str | bytes]] = [(protocol.ERROR_KIND_KEY, error.kind)]
    trace = error_trace(error)
    if trace:
        explained = pb.ExplainResponse(trace=trace_to_wire(trace), error=error.message)
        metadata.append((protocol.TRACE_KEY, explained.SerializeToString()))
    await context.abort(grpc.StatusCode[error.status], error.message, tuple(metadata))


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def grpc_errors(method: Handler) -> Handler:
    """Wrap a unary gRPC handler: BrokerError -> its status; anything else -> INTERNAL, logged once."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except BrokerError as error:
            await grpc_abort(context, error)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("bug in %s; the client got INTERNAL", name)
            await context.abort(grpc.StatusCode.INTERNAL, protocol.internal_error_message(name))

    return handler  # type: ignore[return-value]


# --- fd channel ------------------------------------------------------------------------


def call_error(call_id: int, error: BrokerError) -> fpb.FdMessage:
    """The reply to a failed call: what the RPC of the same name would have aborted with."""
    return fpb.FdMessage(
        reply=fpb.CallReply(
            call_id=call_id,
            error=fpb.CallError(
                code=error.status, kind=error.kind, message=error.message, trace=trace_to_wire(error_trace(error))
            ),
        )
    )


def internal_call_error(call_id: int, where: str) -> fpb.FdMessage:
    """The reply to a call the broker failed to answer because of a bug (logged by the caller)."""
    return fpb.FdMessage(
        reply=fpb.CallReply(
            call_id=call_id,
            error=fpb.CallError(
                code="INTERNAL", kind=protocol.KIND_INTERNAL, message=protocol.internal_error_message(where)
            ),
        )
    )


def notice(nonce: str, error: BrokerError) -> fpb.FdMessage:
    """Why the fds sent under ``nonce`` were refused (the fd channel's answer to SendFds)."""
    return fpb.FdMessage(notice=fpb.Notice(nonce=nonce, code=error.status, message=error.message))


# --- HTTP ------------------------------------------------------------------------------


def http_status(error: BrokerError) -> int:
    return HTTP_STATUS.get(error.status, 400)
