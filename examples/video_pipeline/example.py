"""`bufbroker example video`: set everything up, run both pipelines, print the report.

Everything lives in a temp dir (the broker's sockets, the generated
source, the encoded outputs, the stages' results) and is removed at the
end. The bufbroker run starts the three stages as separate commands
(``run.run_bufbroker``); this process only starts them and reads their
results.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid: int, quiet: float = 0.2, timeout: float = 3.0) -> int:
    """The broker's fd count once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    count, since = _fd_count(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.02)
        now = _fd_count(pid)
        if now != count:
            count, since = now, time.monotonic()
    return count


def _warm_up(socket_dir: Path) -> None:
    """One export/attach/map cycle, so the broker's lazily opened fds exist before the baseline."""
    import bufbroker

    with bufbroker.connect(socket_dir) as exporter, bufbroker.connect(socket_dir) as importer:
        buffer = exporter.export(4096, offers=["segments", "memfd"])
        attachment = importer.attach(buffer.id, accept=["segments"], map=True)
        attachment.detach()
        buffer.unregister()


def run_example(frames: int, first: tuple[int, int], second: tuple[int, int], compare: bool = True) -> int:
    from bufbroker_broker.cli.launch import start_broker, stop_broker
    from examples.video_pipeline import checks, report
    from examples.video_pipeline.piped import pipe_frame_layout
    from examples.video_pipeline.run import run_bufbroker, run_piped
    from examples.video_pipeline.source import write_source

    workdir = Path(tempfile.mkdtemp(prefix="bufbroker-video-"))
    broker = None
    try:
        began = time.monotonic()
        source = write_source(workdir / "source.h264", frames, first, second)
        source_seconds = time.monotonic() - began
        socket_dir = workdir / "broker"
        broker = start_broker(socket_dir, ["--log-level", "warning", "--http", "none"])
        print(
            f"bufbroker example video: broker in {socket_dir}; to watch a stream while it runs: "
            f"bufbroker stream watch decoded --socket-dir {socket_dir}",
            flush=True,
        )
        _warm_up(socket_dir)
        baseline = settled_fd_count(broker.pid)
        result = run_bufbroker(socket_dir, workdir / "source.h264", workdir / "bufbroker.h264")
        after = settled_fd_count(broker.pid)
        import bufbroker

        with bufbroker.connect(socket_dir) as session:
            held = session.stats().fds_held
        problems = checks.bufbroker_problems(result, source)
        if after != baseline or held:
            problems.append(f"the broker holds {after - baseline} more fds than before the run ({held} in its ledger)")
        piped = None
        if compare:
            largest = max(pipe_frame_layout(*size)[1] for size in (first, second))
            piped = run_piped(workdir / "source.h264", workdir / "piped.h264", largest)
            problems += checks.piped_problems(piped, source)
        print(
            report.format_report(source, source_seconds, result, piped, (baseline, after, held), problems), flush=True
        )
        status = stop_broker(broker)
        broker = None
        if status != 0:
            print(f"bufbroker example video: the broker exited with status {status}", file=sys.stderr)
            return 1
        return 1 if problems else 0
    except (RuntimeError, TimeoutError, EOFError) as error:
        print(f"bufbroker example video: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        if broker is not None:
            stop_broker(broker)
        shutil.rmtree(workdir, ignore_errors=True)


QUICK = {"frames": 48, "first": (320, 180), "second": (480, 270)}


def run_from_args(args) -> int:
    """`bufbroker example video` with its parsed flags: frames, width, height, switch_to, quick, no_compare."""
    if args.quick:
        frames, first, second = QUICK["frames"], QUICK["first"], QUICK["second"]
    else:
        frames, first = args.frames, (args.width, args.height)
        try:
            second = parse_size(args.switch_to) if args.switch_to else (first[0] * 3 // 4 * 2, first[1] * 3 // 4 * 2)
        except ValueError as error:
            print(f"bufbroker example video: {error}", file=sys.stderr)
            return 2
    for width, height in (first, second):
        # x264 needs even sizes; the barcode needs room for 16 blocks in two rows.
        if width % 2 or height % 2 or width < 64 or height < 48:
            print(f"bufbroker example video: {width}x{height}: sizes must be even, at least 64x48", file=sys.stderr)
            return 2
    if not 2 <= frames < 1 << 16:
        print(
            "bufbroker example video: --frames must be 2 to 65535 (the size switches halfway; "
            "the barcode holds 16 bits)",
            file=sys.stderr,
        )
        return 2
    try:
        import av  # noqa: F401
    except ImportError:
        print("bufbroker example video: needs PyAV: pip install 'bufbroker[video]'", file=sys.stderr)
        return 2
    return run_example(frames, first, second, compare=not args.no_compare)


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise ValueError(f"--switch-to {text!r} is not WIDTHxHEIGHT, e.g. 1920x1080")
    return int(width), int(height)
