"""A real stream producer process for tests.

    python -m tests.clients.stream_producer DIR NAME [--slots 3] [--size 65536] [--stall-timeout S]
        [--on-stall reclaim|report] [--drop block|oldest] [--fence-fd FD] [--layout WxH]

Creates the stream, prints {"event": "created", ...}, then obeys one
command per stdin line, printing one JSON line for each:

- ``wait-consumers K``: until K consumers are linked -> {"event": "consumers", "count": K}
- ``publish N [INTERVAL]``: N frames with the numbered pattern, INTERVAL seconds apart;
  {"event": "blocked", "seq": next} when a frame has to wait for a slot, then
  {"event": "published", "seq", "t": CLOCK_MONOTONIC, "waited": seconds} per frame
  and {"event": "done", "last_seq"}. With --fence-fd each frame carries that fd as its fence.
- ``counters``: {"event": "counters", "published", "consumers": per link}
- ``drain``: waits until every frame was released -> {"event": "drained", "ok"}
- ``move WxH``: ``stream.move(layout=GREY WxH)`` (between frames: the next publish is of the new
  generation) -> {"event": "moved", "generation", "size", "last_seq", "took"}
  Sent right after a ``publish``, it lands mid-stream: consumers are still reading that backlog.
- ``close``: ends the stream -> {"event": "closed"} and exits.

Each frame fills the whole slot (its size at the stream's generation now) with the numbered pattern.
With ``--layout WxH`` the slots are GREY frames of that size (``--size`` is not used).
With ``--format FMT`` too they are frames of that format (bufbroker.formats.derive_layout), written
plane by plane with tests/clients/format_pattern.py in the format each frame shows (after a
renegotiation, the new one); ``--formats A,B`` lists what the producer can produce and
``--renegotiate`` lets a consumer move the stream to one of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import bufbroker
from bufbroker import formats
from bufbroker.planes import packed_layout
from tests.clients import format_pattern
from tests.clients.stream_pattern import pattern


def grey(size: str) -> dict:
    width, height = (int(n) for n in size.split("x"))
    return packed_layout("GREY", width, height)[0]


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("name")
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--size", type=int, default=65536)
    parser.add_argument("--stall-timeout", type=float, default=None)
    parser.add_argument("--on-stall", default="reclaim")
    parser.add_argument("--drop", default="block")
    parser.add_argument("--max-held", type=int, default=None)
    parser.add_argument("--fence-fd", type=int, default=None)
    parser.add_argument("--acquire-timeout", type=float, default=30.0)
    parser.add_argument("--layout", default=None)
    parser.add_argument("--format", default=None)
    parser.add_argument("--formats", default=None)
    parser.add_argument("--renegotiate", action="store_true")
    args = parser.parse_args()
    layout = grey(args.layout) if args.layout else None
    if args.format:
        width, height = (int(n) for n in args.layout.split("x"))
        layout = formats.derive_layout(args.format, width, height).to_dict()
    with bufbroker.connect(args.socket_dir, name="test-producer") as session:
        stream = session.create_stream(
            args.name,
            slots=args.slots,
            size=None if args.layout else args.size,
            layout=layout,
            stall_timeout=args.stall_timeout,
            on_stall=args.on_stall,
            drop=args.drop,
            max_held=args.max_held,
            formats=args.formats.split(",") if args.formats else None,
            renegotiate=args.renegotiate,
        )
        emit("created", id=stream.id, slots=stream.slot_count, stall_timeout=stream.stall_timeout)
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "wait-consumers":
                wanted = int(rest[0])
                deadline = time.monotonic() + 10
                while len(stream.consumers()) < wanted and time.monotonic() < deadline:
                    time.sleep(0.002)  # a test script: the broker's StreamLinkOpened lands on another thread
                emit("consumers", count=len(stream.consumers()))
            elif command == "publish":
                count = int(rest[0])
                interval = float(rest[1]) if len(rest) > 1 else 0.0
                for _ in range(count):
                    seq = stream.last_seq + 1
                    started = time.monotonic()
                    try:
                        frame = stream.acquire(0)
                    except TimeoutError:
                        emit("blocked", seq=seq, t=started)
                        frame = stream.acquire(args.acquire_timeout)
                    with frame:
                        if args.format:
                            format_pattern.fill(frame.planes(), seq)  # in the format this frame shows
                        else:
                            size = stream.size
                            frame.memoryview()[:size] = pattern(seq, size)
                        frame.publish(meta=f"frame {seq}".encode(), fence=args.fence_fd)
                    now = time.monotonic()
                    shown = frame.layout["fourcc"] if frame.layout else None
                    emit("published", seq=seq, t=now, waited=now - started, format=shown)
                    if interval:
                        time.sleep(interval)
                emit("done", last_seq=stream.last_seq)
            elif command == "counters":
                emit("counters", published=stream.published, consumers=list(stream.counters().values()))
            elif command == "move":
                started = time.monotonic()
                generation = stream.move(layout=grey(rest[0]))
                emit(
                    "moved",
                    generation=generation,
                    size=stream.size,
                    last_seq=stream.last_seq,
                    took=time.monotonic() - started,
                )
            elif command == "drain":
                emit("drained", ok=stream.drain(10))
            elif command == "close":
                stream.close()
                emit("closed")
                return


if __name__ == "__main__":
    main()
