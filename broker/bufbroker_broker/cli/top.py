"""`bufbroker top`: a live view of sessions, buffers and rates, like pw-top."""

from __future__ import annotations

import argparse
import math
import os
import sys

from bufbroker_broker.cli._args import add_socket_dir

SNAPSHOT_FIELDS = """\
JSON (--json): one object per refresh, one per line (JSON Lines; with --once
exactly one line), each after --interval seconds, so every line has rates:
  broker {version, pid}, own_session_id (this top's session),
  stats {sessions, buffers, attachments, mappings, fds_held, fds_received,
         fds_sent, fds_closed, fds_expired} (broker totals),
  rates {seconds (the interval measured), fds_sent_per_second,
         fds_received_per_second, fds_closed_per_second},
  sessions [{id, pid, uid, gid, role, buffers, attachments, mappings, fds_held,
             non_compliant, events_open, name, this_top}],
  buffers [the objects `bufbroker ls --json` prints, plus
           importers [{attachment_id, session_id, pid, name, map_type}]],
  attachments [{id, buffer_id, session_id, importer_pid, importer_name,
                map_type, pinned, mappings, non_compliant}],
  streams [the stream objects `bufbroker ls --json` prints (the HTTP API's
           Stream): per consumer pid, name, mode, stalled and counters with
           fps, lag, held_now, longest_hold, dropped_busy,
           dropped_overwritten; a consumer's counters.fps is measured between
           two of its producer's reports when the producer did not report it].
Without --once or --iterations, --json prints a line per refresh until Ctrl-C.
On an error nothing more goes to stdout: the message goes to stderr, exit 1.
"""


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    top = commands.add_parser(
        "top",
        help="live view of sessions, buffers, streams and rates (like pw-top)",
        description="Show the broker's sessions (pid and name), buffers, their importers, fd rates and "
        "streams (per consumer: fps, lag, held slots, drops; stalled consumers in red), refreshed "
        "every --interval seconds until Ctrl-C. Uses the gRPC introspection calls, so it works with "
        "HTTP off. Its own session shows as idle, marked (this top).",
        epilog=SNAPSHOT_FIELDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_socket_dir(top)
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between refreshes (default 1)"
    )
    how_long = top.add_mutually_exclusive_group()
    how_long.add_argument("--once", action="store_true", help="print one view (rates over one interval) and exit")
    how_long.add_argument("--iterations", type=int, default=0, metavar="N", help="refresh N times, then exit")
    top.add_argument(
        "--json", action="store_true", help="print each refresh as one line of JSON instead of the table (see below)"
    )


def run(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker_broker.cli.top_view import run_top_json, run_top_view

    if not (math.isfinite(args.interval) and args.interval > 0) or args.iterations < 0:
        print("bufbroker top: --interval must be positive and --iterations not negative", file=sys.stderr)
        return 2
    try:
        with bufbroker.connect(args.socket_dir) as session:
            view = run_top_json if args.json else run_top_view
            view(session, args.interval, 1 if args.once else args.iterations)
    except bufbroker.BrokerError as error:
        print(f"bufbroker top: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # `bufbroker top --json | head -1`: the reader has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
