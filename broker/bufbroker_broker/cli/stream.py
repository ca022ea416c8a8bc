"""`bufbroker stream watch|test-source`: check a pipeline's stream with no code.

``watch NAME`` subscribes and prints, once a second, frames per second,
hand-off latency (publish -> received, CLOCK_MONOTONIC) p50/p99, frames
missed (seq gaps), lag and the generation; ``--json`` prints one object per
line. ``test-source NAME`` produces a stream of numbered frames (the seq in
the first 8 bytes, then a byte pattern of the seq) at ``--fps``, which
``watch --check`` verifies frame by frame.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bufbroker_broker.cli._args import add_socket_dir

SEQ_BYTES = 8


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    stream = commands.add_parser(
        "stream",
        help="watch a stream (fps, latency, drops) or produce a test stream",
        description="Debug streams: `watch` subscribes and reports what arrives; `test-source` publishes numbered "
        "frames so a pipeline can be checked with no code.",
    )
    actions = stream.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    watch = actions.add_parser(
        "watch",
        help="subscribe and print fps, latency p50/p99, drops and lag every second",
        description="Subscribe to stream NAME (waiting for it to appear) and print, every --interval seconds, "
        "frames/s, hand-off latency p50/p99 (publish to receive), frames missed (seq gaps) and lag. "
        "Ends at the producer's end of stream, after --frames or --duration, or on Ctrl-C.",
    )
    watch.add_argument("name", metavar="NAME", help="the stream's name")
    add_socket_dir(watch)
    watch.add_argument("--mode", choices=("queue", "latest"), default="latest", help="delivery mode (default latest)")
    watch.add_argument(
        "--accept",
        default="memfd,segments",
        help="mapping types to accept, in order; each may list (format, modifier) pairs after a slash, joined "
        "by + (memfd/NV12+XRGB8888)",
    )
    watch.add_argument("--wait", type=float, default=30.0, metavar="SECONDS", help="wait this long for the stream")
    watch.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="seconds between reports")
    watch.add_argument("--frames", type=int, default=0, metavar="N", help="stop after N frames (0: no limit)")
    watch.add_argument("--duration", type=float, default=0.0, metavar="SECONDS", help="stop after this long")
    watch.add_argument("--json", action="store_true", help="one JSON object per report, per line")
    watch.add_argument(
        "--check", action="store_true", help="verify test-source's numbered pattern in every frame (exit 1 if wrong)"
    )

    source = actions.add_parser(
        "test-source",
        help="publish numbered test frames to a stream",
        description="Create stream NAME and publish frames of WxH (3 bytes per pixel) at --fps: the seq in the "
        "first 8 bytes, then a byte pattern of the seq, which `bufbroker stream watch NAME --check` verifies.",
    )
    source.add_argument("name", metavar="NAME", help="the stream's name")
    add_socket_dir(source)
    source.add_argument("--size", default="640x480", metavar="WxH", help="frame size in pixels (default 640x480)")
    source.add_argument("--fps", type=float, default=30.0, metavar="N", help="frames per second (default 30)")
    source.add_argument("--slots", type=int, default=4, metavar="N", help="slots in the pool (default 4)")
    source.add_argument("--frames", type=int, default=0, metavar="N", help="stop after N frames (0: no limit)")
    source.add_argument(
        "--offers",
        default="memfd",
        help="mapping types to offer, in order (default memfd); each may list (format, modifier) pairs after a "
        "slash, joined by + (memfd/XRGB8888)",
    )
    source.add_argument(
        "--allow",
        default="",
        metavar="PRINCIPALS",
        help="who may subscribe, comma-separated: uid:N, gid:N, same-uid, any (default same-uid)",
    )
    source.add_argument(
        "--drop",
        choices=("block", "oldest"),
        default="block",
        help="when every slot is held: wait for a consumer (block, the default) or overwrite the oldest frame",
    )
    source.add_argument(
        "--wait-consumers",
        type=int,
        default=0,
        metavar="N",
        help="publish only once N consumers subscribed (waits up to 30 s), so they see every frame from the first",
    )


def run(args: argparse.Namespace) -> int:
    from bufbroker_broker.server.settings import default_socket_dir

    socket_dir = args.socket_dir or Path(os.environ.get("BUFBROKER_SOCKET_DIR") or default_socket_dir())
    import bufbroker

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if args.action == "watch":
            return _watch(args, socket_dir)
        return _test_source(args, socket_dir)
    except KeyboardInterrupt:
        return 0
    except (bufbroker.BrokerError, ValueError) as error:  # no broker, a refused uid, a bad spec: said, not a traceback
        print(f"bufbroker stream {args.action}: {error}", file=sys.stderr)
        return 1


def frame_size(text: str) -> tuple[int, int]:
    """(width, height) from "WxH"; ValueError naming the form."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: give WxH in pixels, e.g. 1920x1080") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"--size {text!r}: width and height must be positive")
    return width, height


def pattern_byte(seq: int) -> int:
    """The byte test-source fills a frame of ``seq`` with (after the seq itself)."""
    return (seq * 31 + 7) % 251


def _test_source(args: argparse.Namespace, socket_dir: Path) -> int:
    import bufbroker

    try:
        width, height = frame_size(args.size)
    except ValueError as error:
        print(f"bufbroker stream test-source: {error}", file=sys.stderr)
        return 2
    size = width * height * 3
    offers = [bufbroker.specs.spec_from_text(name) for name in args.offers.split(",") if name]
    period = 1.0 / args.fps if args.fps > 0 else 0.0
    with bufbroker.connect(socket_dir, name=f"test-source {args.name}") as session:
        allow = [principal.strip() for principal in args.allow.split(",") if principal.strip()] or None
        stream = session.create_stream(
            args.name, slots=args.slots, size=size, offers=offers, drop=args.drop, allow=allow
        )
        deadline = time.monotonic() + 30
        while len(stream.consumers()) < args.wait_consumers:
            if time.monotonic() > deadline:
                print(f"bufbroker stream test-source: {args.wait_consumers} consumers did not subscribe in 30 s")
                stream.close()
                return 1
            time.sleep(0.005)
        print(f"bufbroker stream test-source: publishing {args.name} ({width}x{height}, {args.fps:g} fps)", flush=True)
        published, next_at = 0, time.monotonic()
        try:
            while not args.frames or published < args.frames:
                with stream.acquire(timeout=5.0) as frame:
                    view = frame.memoryview()
                    seq = stream.last_seq + 1
                    view[SEQ_BYTES:] = bytes([pattern_byte(seq)]) * (size - SEQ_BYTES)
                    view[:SEQ_BYTES] = seq.to_bytes(SEQ_BYTES, "little")
                    published_seq = frame.publish(meta=json.dumps({"width": width, "height": height}).encode())
                    if published_seq != seq:
                        raise RuntimeError(f"published seq {published_seq}, expected {seq}")
                published += 1
                if period:
                    next_at += period
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        next_at = time.monotonic()
            # Queue consumers may still be owed frames: let them have every one before the end of stream.
            if not stream.drain(timeout=10.0):
                print("bufbroker stream test-source: consumers did not take every frame within 10 s", file=sys.stderr)
        finally:
            stream.close()
    return 0


def _watch(args: argparse.Namespace, socket_dir: Path) -> int:
    import bufbroker

    accept = [bufbroker.specs.spec_from_text(name) for name in args.accept.split(",") if name]
    report = _Report(args.name)
    bad = 0
    deadline = time.monotonic() + args.duration if args.duration else None
    with bufbroker.connect(socket_dir, name=f"watch {args.name}") as session:
        try:
            subscription = session.subscribe(args.name, accept=accept, mode=args.mode, wait=args.wait)
        except bufbroker.BrokerError as error:
            print(f"bufbroker stream watch: {error}", file=sys.stderr)
            return 1
        report.map_type = subscription.attachments[0].map_type if subscription.attachments else ""
        next_report = time.monotonic() + args.interval
        with subscription:
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                try:
                    frame = subscription.receive(timeout=min(args.interval, 0.25))
                except TimeoutError:
                    frame = None
                except bufbroker.EndOfStream:
                    report.ended = True
                    break
                if frame is not None:
                    with frame:
                        received = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                        report.frame(frame.seq, received - frame.timestamp_ns, frame.generation)
                        if args.check and not _pattern_ok(frame):
                            bad += 1
                            print(
                                f"bufbroker stream watch: frame {frame.seq} does not hold its pattern", file=sys.stderr
                            )
                now = time.monotonic()
                if now >= next_report:
                    _print(report.take(now), args.json)
                    next_report = now + args.interval
                if args.frames and report.total >= args.frames:
                    break
        _print(report.take(time.monotonic(), final=True), args.json)
    return 1 if bad else 0


def _pattern_ok(frame: Any) -> bool:
    view = frame.memoryview()
    if int.from_bytes(view[:SEQ_BYTES], "little") != frame.seq:
        return False
    expected = pattern_byte(frame.seq)
    return bool(view[SEQ_BYTES] == expected and view[len(view) - 1] == expected)


class _Report:
    """What arrived since the last report: frames, latencies, seq gaps."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0
        self.missed_total = 0
        self.ended = False
        self.map_type = ""
        self._latencies: list[int] = []
        self._last_seq = 0
        self._missed = 0
        self._generation = 0
        self._since = time.monotonic()

    def frame(self, seq: int, latency_ns: int, generation: int) -> None:
        if self._last_seq and seq > self._last_seq + 1:
            self._missed += seq - self._last_seq - 1
        self._last_seq = max(self._last_seq, seq)
        self._latencies.append(latency_ns)
        self._generation = generation
        self.total += 1

    def take(self, now: float, final: bool = False) -> dict[str, Any]:
        latencies = sorted(self._latencies)
        period = max(now - self._since, 1e-9)
        self.missed_total += self._missed
        out = {
            "stream": self.name,
            "fps": round(len(latencies) / period, 1),
            "latency_p50_us": round(_percentile(latencies, 0.50) / 1e3, 1) if latencies else None,
            "latency_p99_us": round(_percentile(latencies, 0.99) / 1e3, 1) if latencies else None,
            "frames": len(latencies),
            "missed": self._missed,
            "last_seq": self._last_seq,
            "generation": self._generation,
            "total": self.total,
            "missed_total": self.missed_total,
            "map_type": self.map_type,
        }
        if final:
            out["ended"] = self.ended
        self._latencies, self._missed, self._since = [], 0, now
        return out


def _percentile(ordered: list[int], fraction: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report), flush=True)
        return
    latency = (
        f"latency p50 {report['latency_p50_us']:.0f} us p99 {report['latency_p99_us']:.0f} us"
        if report["latency_p50_us"] is not None
        else "no frames"
    )
    tail = " (end of stream)" if report.get("ended") else ""
    print(
        f"{report['stream']}: {report['fps']:.1f} fps, {latency}, missed {report['missed']}, "
        f"seq {report['last_seq']}, generation {report['generation']}, total {report['total']}{tail}",
        flush=True,
    )
