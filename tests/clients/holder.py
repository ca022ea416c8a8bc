"""A real importer that holds a mapping until the buffer is revoked.

    python -m tests.clients.holder DIR BUFFER [--accept memfd]

Attaches and maps, prints {"ready": true}, then waits (up to 60 s) for the
revocation and prints {"revoked": reason, "head": first bytes still read
through its mapping}.
"""

from __future__ import annotations

import argparse
import json
import threading

import bufbroker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("buffer")
    parser.add_argument("--accept", default="memfd")
    args = parser.parse_args()
    revoked = threading.Event()
    reasons = []
    with bufbroker.connect(args.socket_dir) as session:
        attachment = session.attach(args.buffer, accept=args.accept.split(","), map=True)
        attachment.on_revoke(lambda a, reason: (reasons.append(reason), revoked.set()))
        view = attachment.mapping.memoryview()
        print(json.dumps({"ready": True}), flush=True)
        revoked.wait(60)
        head = bytes(view[:9]).decode(errors="replace")
        print(json.dumps({"revoked": reasons[0] if reasons else None, "head": head}), flush=True)
        view.release()


if __name__ == "__main__":
    main()
