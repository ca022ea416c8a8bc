"""`bufbroker demo`: a broker, a producer and a consumer of one stream, end to end.

The producer and the consumer are unrelated processes — the commands
`bufbroker stream test-source demo` and `bufbroker stream watch demo
--check` — that find each other by the stream's name through the broker and
share nothing else: no pipes, no parent's queues. The producer writes
numbered frames into a pool of 4 slots; the consumer reads each through its
own mapping, checks the frame's number and pattern and releases the slot;
the pixels never travel and the frames never pass through the broker.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BROKER_ARGS = ["--log-level", "warning", "--http", "none"]


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = commands.add_parser(
        "demo",
        help="run a broker, a stream producer and a consumer, and check every frame",
        description="Start a broker in a temp dir, then two unrelated processes that find each other by the "
        "stream's name: `bufbroker stream test-source demo` publishes numbered frames through a pool of 4 slots "
        "and `bufbroker stream watch demo --check` receives, checks and releases each. Prints the negotiated "
        "mapping type, frames per second and hand-off latency; leaves nothing behind.",
    )
    demo.add_argument("--frames", type=int, default=240, help="frames to send (default 240)")
    demo.add_argument(
        "--size", default="640x480", metavar="WxH", help="frame size, 3 bytes per pixel (default 640x480)"
    )
    demo.add_argument(
        "--fps", type=float, default=0.0, metavar="N", help="frames per second (default 0: as fast as slots come back)"
    )
    demo.add_argument(
        "--restart-broker-at",
        type=int,
        default=None,
        metavar="FRAME",
        help="kill the broker with SIGKILL after this many frames and start a new one: frames keep flowing on the "
        "stream's link while no broker runs, and the demo counts the frames lost (0 expected)",
    )


def run(args: argparse.Namespace) -> int:
    return run_demo(args.frames, args.size, args.fps, args.restart_broker_at)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bufbroker_broker", *args]


def _last_report(lines: list[str]) -> dict[str, Any] | None:
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def run_demo(frames: int = 240, size: str = "640x480", fps: float = 0.0, restart_at: int | None = None) -> int:
    from bufbroker_broker.cli.launch import start_broker, stop_broker
    from bufbroker_broker.cli.stream import frame_size

    try:
        width, height = frame_size(size)
    except ValueError as error:
        print(f"bufbroker demo: {error}", file=sys.stderr)
        return 2
    if frames <= 0:
        print("bufbroker demo: --frames must be positive", file=sys.stderr)
        return 2
    if restart_at is not None and fps == 0:
        fps = 400.0  # paced, so the restart lands mid-stream
    socket_dir = Path(tempfile.mkdtemp(prefix="bufbroker-demo-"))
    broker = None
    children: list[subprocess.Popen[str]] = []
    dir_args = ("--socket-dir", str(socket_dir / "s"))
    try:
        print(f"bufbroker demo: starting a broker in {socket_dir / 's'}", flush=True)
        broker = start_broker(socket_dir / "s", BROKER_ARGS)
        watch = subprocess.Popen(
            [
                *_cli("stream", "watch", "demo", *dir_args, "--mode", "queue", "--check", "--json"),
                *("--interval", "0.2", "--frames", str(frames), "--accept", "segments,memfd", "--wait", "30"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(watch)
        source = subprocess.Popen(
            [
                *_cli("stream", "test-source", "demo", *dir_args, "--size", size, "--fps", str(fps)),
                *("--frames", str(frames), "--offers", "segments,memfd", "--wait-consumers", "1"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(source)
        print(f"bufbroker demo: producer pid {source.pid} and consumer pid {watch.pid} (separate commands)", flush=True)
        assert watch.stdout is not None
        lines: list[str] = []
        restarted = False
        started = time.monotonic()
        deadline = started + 120
        for line in watch.stdout:
            lines.append(line.strip())
            report = _last_report(lines[-1:])
            if restart_at is not None and not restarted and report and report["last_seq"] >= restart_at:
                broker = _restart(socket_dir / "s", broker, report["last_seq"])
                restarted = True
            if time.monotonic() > deadline:
                raise RuntimeError("the consumer did not finish within 120 s")
        elapsed = time.monotonic() - started
        if watch.wait(30) != 0:
            raise RuntimeError(f"the consumer exited with status {watch.returncode}: a frame failed its check")
        if source.wait(30) != 0:
            raise RuntimeError(f"the producer exited with status {source.returncode}")
        final = _last_report(lines)
        if final is None or final["total"] != frames:
            raise RuntimeError(f"the consumer saw {final and final['total']} of {frames} frames")
        mib = width * height * 3 / (1 << 20)
        print(f"bufbroker demo: the consumer's slots negotiated mapping type: {final['map_type']}")
        if restarted:
            print(f"bufbroker demo: frames lost across the broker restart: {final['missed_total']}")
        print(
            f"bufbroker demo: {final['total']} frames of {mib:.2f} MiB checked in {elapsed:.2f} s: "
            f"{final['total'] / elapsed:.0f} frames/s, missed {final['missed_total']} (zero-copy: the pixels never travel)"
        )
        status = stop_broker(broker)
        broker = None
        if status != 0:
            raise RuntimeError(f"the broker exited with status {status}")
        return 0
    except (RuntimeError, OSError) as error:
        print(f"bufbroker demo: failed: {error}", file=sys.stderr)
        return 1
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        if broker is not None:
            stop_broker(broker)
        shutil.rmtree(socket_dir, ignore_errors=True)


def _restart(socket_dir: Path, broker: Any, seq: int) -> Any:
    """SIGKILL the broker and start a new one in the same dir; returns the new one."""
    from bufbroker_broker.cli.launch import start_broker

    broker.kill()
    broker.wait()
    killed_at = time.monotonic()
    broker = start_broker(socket_dir, BROKER_ARGS)
    gap = time.monotonic() - killed_at
    print(
        f"bufbroker demo: broker killed with SIGKILL at frame {seq}; a new one serves after {gap * 1000:.0f} ms; "
        "frames kept flowing on the stream's link meanwhile",
        flush=True,
    )
    return broker
