"""`bufbroker health`: exit 0 when the broker answers SERVING (for probes that cannot speak HTTP)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bufbroker_broker.cli._args import add_socket_dir


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    health = commands.add_parser(
        "health",
        help="exit 0 if the broker serves, 1 if not (for probes)",
        description="Ask the broker's gRPC health service (grpc.health.v1) on DIR/grpc.sock; "
        "exit 0 when it answers SERVING, 1 otherwise. For probes that cannot speak HTTP.",
    )
    add_socket_dir(health)
    health.add_argument(
        "--timeout", type=float, default=3.0, metavar="SECONDS", help="give up after this long (default 3)"
    )


def run(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from bufbroker_broker.server.settings import default_socket_dir

    socket_dir = args.socket_dir or Path(os.environ.get("BUFBROKER_SOCKET_DIR") or default_socket_dir())
    target = f"unix:{socket_dir / 'grpc.sock'}"
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"bufbroker health: no answer from {socket_dir}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"bufbroker health: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
