"""`bufbroker top`: a live view of sessions, buffers and rates, like pw-top."""

from __future__ import annotations

import argparse
import sys

from bufbroker_broker.cli._args import add_socket_dir


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = commands.add_parser(
        "top",
        help="live view of sessions, buffers and rates (like pw-top)",
        description="Show the broker's sessions, buffers, their importers and fd rates, refreshed "
        "every --interval seconds until Ctrl-C. Uses the gRPC introspection calls, so it works with "
        "HTTP off. Its own session shows as idle, marked (this top).",
    )
    add_socket_dir(top)
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between refreshes (default 1)"
    )
    how_long = top.add_mutually_exclusive_group()
    how_long.add_argument("--once", action="store_true", help="print one view (rates over one interval) and exit")
    how_long.add_argument("--iterations", type=int, default=0, metavar="N", help="refresh N times, then exit")


def run(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker_broker.cli.top_view import run_top_view

    if args.interval <= 0 or args.iterations < 0:
        print("bufbroker top: --interval must be positive and --iterations not negative", file=sys.stderr)
        return 2
    try:
        with bufbroker.connect(args.socket_dir) as session:
            run_top_view(session, args.interval, 1 if args.once else args.iterations)
    except bufbroker.BrokerError as error:
        print(f"bufbroker top: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
