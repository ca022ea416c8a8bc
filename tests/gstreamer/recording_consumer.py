"""A Python consumer that records what a stream delivers, run as its own process.

    python -m tests.gstreamer.recording_consumer DIR NAME OUT [--frames N] [--mode queue]

Subscribes (waiting up to 30 s for the stream), appends each frame's bytes
(as its layout says: ``Layout.size`` bytes) to OUT and prints one JSON line
per frame ({"seq", "layout", "meta", "map_type"}) and a last one
({"end": "eos"|"frames", "frames", "seconds"}: from the first frame to the last).
Prints {"subscribed": true} once subscribed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import bufbroker
from bufbroker import formats


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("name")
    parser.add_argument("out")
    parser.add_argument("--frames", type=int, default=0)
    parser.add_argument("--mode", default="queue")
    parser.add_argument("--quiet", action="store_true", help="no line per frame, do not write OUT")
    args = parser.parse_args()
    count, first, last, end = 0, 0.0, 0.0, "frames"
    with bufbroker.connect(args.socket_dir, name="recording-consumer") as session, open(args.out, "wb") as out:
        sub = session.subscribe(args.name, accept=["memfd"], mode=args.mode, wait=30)
        print(json.dumps({"subscribed": True}), flush=True)
        with sub:
            while not args.frames or count < args.frames:
                try:
                    frame = sub.receive(timeout=30)
                except bufbroker.EndOfStream:
                    end = "eos"
                    break
                with frame:
                    last = time.monotonic()
                    first = first or last
                    count += 1
                    if args.quiet:
                        continue
                    layout = formats.Layout.from_dict(frame.layout)
                    out.write(frame.memoryview()[: layout.size])
                    line = {
                        "seq": frame.seq,
                        "layout": frame.layout,
                        "meta": frame.meta.decode(),
                        "map_type": frame.mapping.type,
                    }
                    print(json.dumps(line), flush=True)
    print(json.dumps({"end": end, "frames": count, "seconds": last - first}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
