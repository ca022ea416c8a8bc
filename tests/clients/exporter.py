"""A real exporter process for tests.

    python -m tests.clients.exporter DIR --name N --size BYTES [--offers memfd,segments] [--fill TEXT] [--allow-write]

Registers one buffer filled with TEXT repeated, prints one JSON line
{"id": ..., "name": ...}, then keeps the session open until stdin closes
(or the test kills it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import bufbroker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("--name", default="")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--offers", default="")
    parser.add_argument("--fill", default="bufbroker")
    parser.add_argument("--on-exit", default="revoke", choices=["revoke", "keep"])
    parser.add_argument("--allow", default="", help="comma-separated principals")
    parser.add_argument("--allow-write", action="store_true", help="let importers attach read_write")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    args = parser.parse_args()
    offers = [bufbroker.specs.spec_from_text(o) for o in args.offers.split(",") if o]  # TYPE[:ACCESS][/PAIRS]
    with bufbroker.connect(args.socket_dir) as session:
        buffer = session.export(
            args.size,
            name=args.name or None,
            offers=offers or None,
            on_exporter_exit=args.on_exit,
            allow=[a for a in args.allow.split(",") if a] or None,
            allow_write=args.allow_write,
            labels=dict(label.split("=", 1) for label in args.label) or None,
        )
        pattern = args.fill.encode()
        data = (pattern * (args.size // len(pattern) + 1))[: args.size]
        view = buffer.memoryview()
        view[:] = data
        view.release()
        seen = {"id": buffer.id, "name": buffer.name, "my_pid": os.getpid(), "broker_saw_pid": session.pid}
        print(json.dumps(seen), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
