"""A Python producer of numbered frames, run as its own process: ``python -m tests.gstreamer.numbered_producer``.

    DIR NAME FRAMES [--size WxH] [--format NV12] [--wait-consumers N] [--switch-at K --switch-size WxH]

Frame ``seq`` holds the seq in its first 8 bytes and ``pattern_byte(seq)``
(bufbroker stream test-source's pattern) in every other byte of the
layout. With ``--switch-at K`` the stream moves to ``--switch-size`` before
frame K; with ``--stop-when-alone`` it stops once no consumer is left. Prints one JSON line once the stream exists ({"stream", "size"}),
one at the end ({"published"}).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import bufbroker
from bufbroker import formats
from bufbroker_broker.cli.stream import SEQ_BYTES, frame_size, pattern_byte


def fill(view: memoryview, seq: int, size: int) -> None:
    view[SEQ_BYTES:size] = bytes([pattern_byte(seq)]) * (size - SEQ_BYTES)
    view[:SEQ_BYTES] = seq.to_bytes(SEQ_BYTES, "little")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("name")
    parser.add_argument("frames", type=int)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--format", default="NV12")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--wait-consumers", type=int, default=1)
    parser.add_argument("--switch-at", type=int, default=0)
    parser.add_argument("--switch-size", default="640x360")
    parser.add_argument("--framerate", default="30/1")
    parser.add_argument("--stop-when-alone", action="store_true", help="stop once the consumers are all gone")
    args = parser.parse_args()
    width, height = frame_size(args.size)
    layout = formats.derive_layout(args.format, width, height, align=4)
    rate = [int(part) for part in args.framerate.split("/")]
    with bufbroker.connect(args.socket_dir, name="numbered-producer") as session:
        stream = session.create_stream(args.name, slots=args.slots, size=layout.size, layout=layout.to_dict())
        print(json.dumps({"stream": args.name, "size": layout.size}), flush=True)
        deadline = time.monotonic() + 30
        while len(stream.consumers()) < args.wait_consumers:
            if time.monotonic() > deadline:
                print(f"numbered_producer: no {args.wait_consumers} consumers in 30 s", file=sys.stderr)
                return 1
            time.sleep(0.005)
        started = time.monotonic()
        published = 0
        for seq in range(1, args.frames + 1):
            if args.stop_when_alone and not stream.consumers():
                break
            if args.switch_at and seq == args.switch_at:
                width, height = frame_size(args.switch_size)
                layout = formats.derive_layout(args.format, width, height, align=4)
                stream.move(size=layout.size, layout=layout.to_dict(), timeout=10.0)
            with stream.acquire(timeout=10.0) as frame:
                fill(frame.memoryview(), seq, layout.size)
                meta = {"pts": (seq - 1) * 10**9 * rate[1] // rate[0], "duration": 10**9 * rate[1] // rate[0]}
                meta["framerate"] = rate
                if frame.publish(meta=json.dumps(meta).encode()) != seq:
                    raise RuntimeError(f"published seq {stream.last_seq}, expected {seq}")
            published = seq
        elapsed = time.monotonic() - started
        stream.drain(timeout=10.0)
        stream.close()
    print(json.dumps({"published": published, "seconds": elapsed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
