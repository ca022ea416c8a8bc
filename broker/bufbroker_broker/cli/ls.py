"""`bufbroker ls`: the broker's buffers, one line each."""

from __future__ import annotations

import argparse
import sys

from bufbroker_broker.cli._args import add_socket_dir


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ls = commands.add_parser("ls", help="list registered buffers", description="List the broker's buffers.")
    add_socket_dir(ls)


def run(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker.v1 import broker_pb2 as pb

    try:
        with bufbroker.connect(args.socket_dir) as session:
            buffers = session.buffers()
    except bufbroker.BrokerError as error:
        print(f"bufbroker: {error}", file=sys.stderr)
        return 1
    print(f"{'ID':>6}  {'NAME':<24} {'PID':>7} {'SIZE':>12}  {'STATE':<8} {'OFFERS':<20} {'ATTACHMENTS':>11}")
    for b in buffers:
        state = "active" if b.state == pb.BUFFER_STATE_ACTIVE else "revoked"
        print(
            f"{b.id:>6}  {b.name or '-':<24} {b.exporter_pid:>7} {b.size:>12}  {state:<8} "
            f"{','.join(b.offer_types):<20} {b.attachment_count:>11}"
        )
    if not buffers:
        print("(no buffers registered)")
    return 0
