"""RPC timings: a grpc.aio server interceptor feeding /metrics.

Installed in ``daemon.serve`` when the gRPC server is made. It times every
unary call by service and method and counts their status codes; streams
(Events, reflection) are left alone, their length is the client's choice.
It also marks when the current call started (``bufbroker_broker.server.observe.latency.REQUEST_STARTED``), so the
negotiation histogram can measure Attach and Explain up to their verdict.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from bufbroker_broker.server.observe.latency import REQUEST_STARTED, RPC_BUCKETS, LatencyHistogram


class RpcTimings:
    """Durations by (service, method) and calls by (service, method, code)."""

    def __init__(self) -> None:
        self.durations: dict[tuple[str, str], LatencyHistogram] = {}
        self.codes: Counter[tuple[str, str, str]] = Counter()

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        histogram = self.durations.get((service, method))
        if histogram is None:
            histogram = self.durations[(service, method)] = LatencyHistogram(RPC_BUCKETS)
        histogram.observe(seconds)
        self.codes[(service, method, code)] += 1


def split_method(full_method: str) -> tuple[str, str]:
    """'/bufbroker.v1.Broker/Attach' -> ('bufbroker.v1.Broker', 'Attach')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method


class RpcTimingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, timings: RpcTimings) -> None:
        self.timings = timings

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not inspect.iscoroutinefunction(handler.unary_unary):
            return handler
        service, method = split_method(handler_call_details.method)
        behaviour = handler.unary_unary
        timings = self.timings

        async def timed(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            marker = REQUEST_STARTED.set(started)
            try:
                return await behaviour(request, context)
            finally:
                REQUEST_STARTED.reset(marker)
                code = context.code()
                name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
                timings.observe(service, method, name, time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
