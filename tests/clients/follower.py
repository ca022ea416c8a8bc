"""A real importer that follows moves of a buffer.

    python -m tests.clients.follower DIR BUFFER [--accept segments,memfd]

Attaches and maps, prints {"ready": ...}; then for every line "read" on
stdin prints {"head": first 16 bytes of the current mapping, "size": ...,
"moves": n}; each move it handled prints {"moved": reason} as it happens.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

import bufbroker

_print_lock = threading.Lock()


def say(obj: dict) -> None:
    with _print_lock:
        print(json.dumps(obj), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("buffer", help="a buffer name, or KEY=VALUE to attach by that label")
    parser.add_argument("--accept", default="segments,memfd")
    args = parser.parse_args()
    with bufbroker.connect(args.socket_dir) as session:
        accept = args.accept.split(",")
        if "=" in args.buffer:
            key, _, value = args.buffer.partition("=")
            attachment = session.attach(labels={key: value}, accept=accept, map=True)
        else:
            attachment = session.attach(args.buffer, accept=accept, map=True)
        attachment.on_move(lambda a, reason: say({"moved": reason, "error": str(a.move_error or "")}))
        session.on_reconnect(lambda s, gap: say({"reconnected": round(gap, 4), "attachment": attachment.id}))
        say({"ready": True, "map_type": attachment.map_type, "attachment": attachment.id})
        for line in sys.stdin:
            if line.strip() != "read":
                continue
            mapping = attachment.wait_mapped(10)
            head = bytes(mapping.views()[0][:16]).decode(errors="replace")
            say({"head": head, "size": sum(e.length for e in mapping.extents), "moves": attachment.moves})
        attachment.detach()


if __name__ == "__main__":
    main()
