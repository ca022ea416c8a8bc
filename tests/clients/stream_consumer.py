"""A real stream consumer process for tests.

    python -m tests.clients.stream_consumer DIR NAME [--mode queue|latest] [--max-held 1] [--frames N]
        [--delay S] [--hold-after K] [--hold-for S] [--fence-timeout S] [--async] [--wait S]

Subscribes, prints {"event": "subscribed", "next_seq"?...}, then for each
frame checks the numbered pattern twice (on receipt and just before
release: a slot written while held shows as torn) and prints
{"event": "frame", "seq", "t"}. ``--delay`` sleeps that long per frame
(a slow consumer). ``--hold-after K`` stops releasing after K frames:
it prints {"event": "holding", "seq", "slot"} and keeps the frame ``--hold-for``
seconds (default: until killed), then touches it and prints
{"event": "reclaimed", "error"} or {"event": "not-reclaimed"}.
``--fence-timeout`` waits for each frame's fence: {"event": "fence-waiting"}
then {"event": "fence-signalled", "waited"}. It ends after ``--frames``
frames or at the end of the stream: {"event": "end", "received",
"torn": [...], "skipped", "reason", "seqs", "generations", "shapes"}
(per frame received: its seq, generation and "WxH:bytes" of its layout).
``--accept memfd/NV12+XRGB8888`` subscribes with those (format, modifier) pairs
(bufbroker.specs.spec_from_text); ``--planes`` checks each frame plane by plane
with tests/clients/format_pattern.py instead, and "formats" in the end line
lists each frame's format. A refused subscribe prints {"event": "refused",
"error", "message", "trace"} and exits.

The pattern is checked across the whole slot as the frame's generation
has it (``frame.size``); when the frame has a layout, the slot must be
exactly the bytes that layout needs, and the view must be that size.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time

import bufbroker
from bufbroker.planes import plane_shapes
from tests.clients import format_pattern
from tests.clients.stream_pattern import check


def layout_bytes(layout: dict) -> int:
    shapes = plane_shapes(layout["fourcc"], layout["width"], layout["height"])
    return max(p["offset"] + p["stride"] * (rows - 1) + row for (rows, row), p in zip(shapes, layout["planes"]))


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Checker:
    def __init__(self, args: argparse.Namespace, sub: bufbroker.Subscription) -> None:
        self.args = args
        self.sub = sub
        self.received = 0
        self.torn: list[str] = []
        self.seqs: list[int] = []
        self.generations: list[int] = []
        self.shapes: list[str] = []
        self.formats: list[str] = []

    def frame(self, frame: bufbroker.ConsumerFrame) -> bool:
        """Handle one frame; False when the consumer should stop."""
        args = self.args
        if args.fence_timeout is not None:
            emit("fence-waiting", seq=frame.seq, fences=len(frame.fences))
            started = time.monotonic()
            signalled = frame.wait_fence(args.fence_timeout)
            emit("fence-signalled", seq=frame.seq, signalled=signalled, waited=time.monotonic() - started)
        size = frame.size
        layout = frame.layout
        if frame.memoryview().nbytes != size:
            self.torn.append(f"frame {frame.seq}: a view of {frame.memoryview().nbytes} bytes, the slot has {size}")
        if layout is not None and layout_bytes(layout) != size:
            self.torn.append(f"frame {frame.seq}: {size} bytes, its layout {layout} needs {layout_bytes(layout)}")
        shape = f"{layout['width']}x{layout['height']}:{size}" if layout else f"-:{size}"
        self.formats.append(layout["fourcc"] if layout else "")
        problem = (
            format_pattern.check(frame.planes(), frame.seq)
            if args.planes
            else check(frame.memoryview(), frame.seq, size)
        )
        if problem:
            self.torn.append(problem)
        if frame.meta != f"frame {frame.seq}".encode():
            self.torn.append(f"frame {frame.seq}: meta {frame.meta!r}")
        self.received += 1
        self.seqs.append(frame.seq)
        self.generations.append(frame.generation)
        self.shapes.append(shape)
        emit("frame", seq=frame.seq, t=time.monotonic())
        if args.hold_after is not None and self.received >= args.hold_after:
            emit("holding", seq=frame.seq, slot=frame.slot)
            time.sleep(args.hold_for)
            try:
                frame.memoryview()
                frame.release()
                emit("not-reclaimed", seq=frame.seq)
            except bufbroker.SlotReclaimed as error:
                emit("reclaimed", seq=frame.seq, error=str(error))
            return False
        if args.delay:
            time.sleep(args.delay)
        problem = (
            format_pattern.check(frame.planes(), frame.seq)
            if args.planes
            else check(frame.memoryview(), frame.seq, size)
        )
        if problem:
            self.torn.append(f"{problem} (before release)")
        frame.release()
        return not (args.frames and self.received >= args.frames)

    def end(self, reason: str) -> None:
        emit(
            "end",
            received=self.received,
            torn=self.torn,
            skipped=self.sub.skipped,
            seqs=self.seqs,
            generations=self.generations,
            shapes=self.shapes,
            formats=self.formats,
            stale=self.sub.stale,
            reason=reason,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket_dir")
    parser.add_argument("name")
    parser.add_argument("--mode", default="queue")
    parser.add_argument("--max-held", type=int, default=1)
    parser.add_argument("--frames", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hold-after", type=int, default=None)
    parser.add_argument("--hold-for", type=float, default=3600.0)
    parser.add_argument("--fence-timeout", type=float, default=None)
    parser.add_argument("--async", dest="use_async", action="store_true")
    parser.add_argument("--wait", type=float, default=10.0)
    parser.add_argument("--accept", default="memfd")
    parser.add_argument("--planes", action="store_true")
    args = parser.parse_args()
    accept = [bufbroker.specs.spec_from_text(entry) for entry in args.accept.split(",")]
    with bufbroker.connect(args.socket_dir, name="test-consumer") as session:
        try:
            sub = session.subscribe(args.name, accept=accept, mode=args.mode, max_held=args.max_held, wait=args.wait)
        except bufbroker.BrokerError as error:
            trace = [dataclasses.asdict(step) for step in error.trace]
            emit("refused", error=type(error).__name__, message=error.message, trace=trace)
            return
        emit("subscribed", link_id=sub.link_id, slots=sub.slot_count, max_held=sub.max_held)
        checker = Checker(args, sub)
        reason = "frames"
        if args.use_async:

            async def consume() -> str:
                async for frame in sub.frames_async():
                    if not checker.frame(frame):
                        return "frames"
                return "end of stream"

            reason = asyncio.run(consume())
        else:
            try:
                while checker.frame(sub.receive(30)):
                    pass
            except bufbroker.EndOfStream as error:
                reason = str(error)
        if sub.producer_hello is not None:
            emit("hello", next_seq=sub.producer_hello.next_seq)
        checker.end(reason)
        sub.close()


if __name__ == "__main__":
    main()
