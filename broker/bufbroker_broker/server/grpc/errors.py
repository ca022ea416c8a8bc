"""The one place where broker errors become gRPC statuses.

An expected error (a BrokerError) goes to the client with its status, its
message and, in trailing metadata, its kind (which the SDK turns into the
matching exception class) and the negotiation trace when there is one.
Anything else is a bug: it is logged once with its traceback and the client
gets a generic INTERNAL.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Awaitable, Callable

import grpc
from bufbroker.v1 import broker_pb2 as pb

from bufbroker_broker.core.errors import BrokerError

log = logging.getLogger(__name__)

ERROR_KIND_KEY = "bufbroker-error-kind"
TRACE_KEY = "bufbroker-trace-bin"


def trace_to_wire(trace: Any) -> list[pb.TraceStep]:
    return [
        pb.TraceStep(
            offer_index=s.offer_index,
            offer_type=s.offer_type,
            match_index=s.match_index,
            match_type=s.match_type,
            verdict=s.verdict,
            reason=s.reason,
            converter=getattr(s, "converter", ""),
        )
        for s in trace
    ]


async def abort_with(context: grpc.aio.ServicerContext, error: BrokerError) -> None:
    metadata: list[tuple[str, Any]] = [(ERROR_KIND_KEY, error.kind)]
    trace = getattr(error, "trace", None)
    if trace:
        explained = pb.ExplainResponse(trace=trace_to_wire(trace), error=error.message)
        metadata.append((TRACE_KEY, explained.SerializeToString()))
    await context.abort(grpc.StatusCode[error.status], error.message, tuple(metadata))


def expected_errors(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a unary handler: BrokerError → its status; any other → INTERNAL."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except BrokerError as error:
            await abort_with(context, error)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("bug in %s; the client got INTERNAL", name)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error in {name}; the broker logged the details (this is a bug: please report it)",
            )

    return handler
