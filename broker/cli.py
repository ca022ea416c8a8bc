"""The `bufbroker` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from broker import __version__

DESCRIPTION = """\
bufbroker shares memory buffers between processes on one Linux host.
An exporter registers a buffer with the mapping types it offers; an
importer attaches with the types it accepts; the broker negotiates one
(exporter order wins) and passes the real file descriptors.
"""


def _socket_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socket-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory holding grpc.sock and fd.sock (default: $BUFBROKER_SOCKET_DIR, "
        "else $XDG_RUNTIME_DIR/bufbroker, or /run/bufbroker as root)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bufbroker", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"bufbroker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run the broker daemon",
        description="Run the broker: gRPC on DIR/grpc.sock, the fd channel on DIR/fd.sock. "
        "Stops cleanly (exit 0) on SIGINT or SIGTERM.",
    )
    _socket_dir_argument(serve)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--pending-fd-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="close fds sent under a nonce that no RegisterBuffer claims within this time (default 10)",
    )

    ls = commands.add_parser("ls", help="list registered buffers", description="List the broker's buffers.")
    _socket_dir_argument(ls)

    demo = commands.add_parser(
        "demo",
        help="run a broker, an exporter and an importer, and check every frame",
        description="Start a broker in a temp dir, an exporter process writing numbered frames "
        "into a pool of 4 buffers and an importer process that attaches with "
        "accept=[segments, memfd], maps and checks every frame's checksum. Prints the "
        "negotiated type and frames per second; leaves nothing behind.",
    )
    demo.add_argument("--frames", type=int, default=240, help="frames to send (default 240)")
    demo.add_argument("--frame-size", type=int, default=1 << 20, metavar="BYTES", help="bytes per frame (default 1 MiB)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return run_serve(args)
    if args.command == "ls":
        return run_ls(args)
    if args.command == "demo":
        from broker.demo import run_demo

        return run_demo(args.frames, args.frame_size)
    raise AssertionError(args.command)


def run_serve(args: argparse.Namespace) -> int:
    from broker.api.fd_channel import Limits
    from broker.daemon import Config, StartupError, default_socket_dir, serve

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = Config(
        socket_dir=args.socket_dir or default_socket_dir(),
        limits=Limits(pending_fd_timeout=args.pending_fd_timeout),
    )
    try:
        asyncio.run(serve(config))
    except StartupError as error:
        print(f"bufbroker: cannot start: {error}", file=sys.stderr)
        return 1
    except TypeError as error:  # an incomplete mapping type plugin
        print(f"bufbroker: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


def run_ls(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker.v1 import broker_pb2 as pb

    try:
        with bufbroker.connect(args.socket_dir) as session:
            buffers = session.buffers()
    except bufbroker.BrokerError as error:
        print(f"bufbroker: {error}", file=sys.stderr)
        return 1
    header = f"{'ID':>6}  {'NAME':<24} {'PID':>7} {'SIZE':>12}  {'STATE':<8} {'OFFERS':<20} {'ATTACHMENTS':>11}"
    print(header)
    for b in buffers:
        state = "active" if b.state == pb.BUFFER_STATE_ACTIVE else "revoked"
        print(
            f"{b.id:>6}  {b.name or '-':<24} {b.exporter_pid:>7} {b.size:>12}  {state:<8} "
            f"{','.join(b.offer_types):<20} {b.attachment_count:>11}"
        )
    if not buffers:
        print("(no buffers registered)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
