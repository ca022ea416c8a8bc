"""The control-plane baseline: a bare grpc.aio unary echo on a Unix socket.

Same server options as the broker (broker/daemon.py serve()); the handler
returns the request bytes untouched (no protobuf).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc

from bench.common import BROKER_SERVER_OPTIONS


async def serve(path: str) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server(options=BROKER_SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"unix:{path}") == 0:
        raise SystemExit(f"cannot bind {path}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
