"""`bufbroker demo`: a broker, an exporter and an importer, end to end.

The exporter writes numbered frames into a pool of 4 buffers and tells the
importer which slot holds which frame (index and checksum only: the pixels
never travel); the importer reads each frame through its own mapping of the
buffer, checks the checksum and hands the slot back.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

POOL = 4
HEADER = struct.Struct("<QQ")  # frame number, payload length


def _frame_payload(block: bytes, number: int, length: int) -> bytes:
    shift = (number * 4099) % len(block)
    rotated = block[shift:] + block[:shift]
    return rotated[:length]


def exporter_main(
    socket_dir: str, frames: int, frame_size: int, ready, to_importer, from_importer, pace: float, reconnects
) -> None:
    import bufbroker

    block = bytes(range(256)) * ((frame_size + 255) // 256)
    payload_size = frame_size - HEADER.size
    with bufbroker.connect(socket_dir) as session:
        session.on_reconnect(lambda s, gap: reconnects.put(("exporter", gap)))
        pool = [
            session.export(frame_size, name=f"demo-frame-{i}", offers=["segments", "memfd"], labels={"demo": "1"})
            for i in range(POOL)
        ]
        views = [b.memoryview() for b in pool]
        ready.send([b.name for b in pool])
        free = list(range(POOL))
        for number in range(frames):
            if not free:
                free.append(from_importer.recv())
            slot = free.pop(0)
            payload = _frame_payload(block, number, payload_size)
            views[slot][: HEADER.size] = HEADER.pack(number, payload_size)
            views[slot][HEADER.size : HEADER.size + payload_size] = payload
            to_importer.send((slot, number, zlib.crc32(payload)))
            if pace:
                time.sleep(pace)
        to_importer.send(None)
        # Keep the pool registered until the importer has detached from it.
        while from_importer.recv() != "done":
            pass
        for view in views:
            view.release()


def importer_main(socket_dir: str, names: list, from_exporter, to_exporter, result, progress, reconnects) -> None:
    import bufbroker

    with bufbroker.connect(socket_dir) as session:
        session.on_reconnect(lambda s, gap: reconnects.put(("importer", gap)))
        attachments = [session.attach(name, accept=["segments", "memfd"], map=True) for name in names]
        views = [a.map().memoryview() if a.mapping is None else a.mapping.memoryview() for a in attachments]
        map_type = attachments[0].map_type
        checked, expected, started = 0, 0, time.perf_counter()
        while True:
            item = from_exporter.recv()
            if item is None:
                break
            slot, number, crc = item
            view = views[slot]
            got_number, length = HEADER.unpack(view[: HEADER.size])
            if got_number != number or got_number != expected:
                raise SystemExit(f"frame {expected}: slot {slot} holds frame {got_number}, expected {number}")
            if zlib.crc32(view[HEADER.size : HEADER.size + length]) != crc:
                raise SystemExit(f"frame {number}: checksum mismatch in slot {slot}")
            checked += 1
            expected += 1
            progress.value = checked
            to_exporter.send(slot)
        elapsed = time.perf_counter() - started
        for view in views:
            view.release()
        for attachment in attachments:
            attachment.detach()
        to_exporter.send("done")
        result.send({"map_type": map_type, "frames": checked, "seconds": elapsed, "trace": attachments[0].trace})


def restart_broker(socket_dir: Path, broker, progress, at_frame: int, reconnects) -> tuple:
    """Kill the broker with SIGKILL once ``at_frame`` frames passed; start a new one.

    Returns the new broker and the seconds until both sessions were whole again.
    """
    from bufbroker_broker.cli.launch import start_broker

    while progress.value < at_frame:
        time.sleep(0.001)
    frame = progress.value
    broker.kill()
    broker.wait()
    killed_at = time.monotonic()
    broker = start_broker(socket_dir, ["--log-level", "warning", "--http", "none"])
    gaps = dict(reconnects.get(timeout=30) for _ in range(2))
    gap = time.monotonic() - killed_at
    print(
        f"bufbroker demo: broker killed with SIGKILL at frame {frame}; a new one started; "
        f"sessions back after {gap * 1000:.0f} ms (exporter {gaps['exporter'] * 1000:.0f} ms, "
        f"importer {gaps['importer'] * 1000:.0f} ms); frames kept flowing through the mappings",
        flush=True,
    )
    return broker, gap


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = commands.add_parser(
        "demo",
        help="run a broker, an exporter and an importer, and check every frame",
        description="Start a broker in a temp dir, an exporter process writing numbered frames "
        "into a pool of 4 buffers and an importer process that attaches with "
        "accept=[segments, memfd], maps and checks every frame's checksum. Prints the "
        "negotiated type and frames per second; leaves nothing behind.",
    )
    demo.add_argument("--frames", type=int, default=240, help="frames to send (default 240)")
    demo.add_argument(
        "--frame-size", type=int, default=1 << 20, metavar="BYTES", help="bytes per frame (default 1 MiB)"
    )
    demo.add_argument(
        "--restart-broker-at",
        type=int,
        default=None,
        metavar="FRAME",
        help="kill the broker with SIGKILL after this many frames and start a new one: the "
        "pipeline keeps running and the demo prints how long the sessions took to come back",
    )


def run(args: argparse.Namespace) -> int:
    return run_demo(args.frames, args.frame_size, args.restart_broker_at)


def run_demo(frames: int = 240, frame_size: int = 1 << 20, restart_at: int | None = None) -> int:
    from bufbroker_broker.cli.launch import start_broker, stop_broker

    if frame_size <= HEADER.size:
        print(f"bufbroker demo: --frame-size must exceed {HEADER.size} bytes", file=sys.stderr)
        return 2
    socket_dir = Path(tempfile.mkdtemp(prefix="bufbroker-demo-"))
    ctx = multiprocessing.get_context("spawn")
    broker = None
    children = []
    try:
        print(f"bufbroker demo: starting a broker in {socket_dir}", flush=True)
        broker = start_broker(socket_dir, ["--log-level", "warning", "--http", "none"])
        ready_recv, ready_send = ctx.Pipe(duplex=False)
        to_imp_recv, to_imp_send = ctx.Pipe(duplex=False)
        to_exp_recv, to_exp_send = ctx.Pipe(duplex=False)
        result_recv, result_send = ctx.Pipe(duplex=False)
        progress = ctx.Value("l", 0)
        reconnects = ctx.Queue()
        pace = 0.002 if restart_at is not None else 0.0  # so the restart lands mid-stream
        exporter = ctx.Process(
            target=exporter_main,
            args=(str(socket_dir), frames, frame_size, ready_send, to_imp_send, to_exp_recv, pace, reconnects),
            name="demo-exporter",
        )
        exporter.start()
        children.append(exporter)
        if not ready_recv.poll(30):
            raise RuntimeError("the exporter did not register its pool within 30 s")
        names = ready_recv.recv()
        print(f"bufbroker demo: exporter pid {exporter.pid} registered {', '.join(names)}", flush=True)
        importer = ctx.Process(
            target=importer_main,
            args=(str(socket_dir), names, to_imp_recv, to_exp_send, result_send, progress, reconnects),
            name="demo-importer",
        )
        importer.start()
        children.append(importer)
        if restart_at is not None:
            broker, _ = restart_broker(socket_dir, broker, progress, min(restart_at, frames - 1), reconnects)
        deadline = time.monotonic() + 120
        while not result_recv.poll(0.1):
            dead = [c for c in children if not c.is_alive()]
            if dead and not result_recv.poll(0.5):
                raise RuntimeError(f"{dead[0].name} exited with status {dead[0].exitcode} before the end")
            if time.monotonic() > deadline:
                raise RuntimeError("the importer did not finish within 120 s")
        result = result_recv.recv()
        for child in children:
            child.join(30)
            if child.exitcode != 0:
                raise RuntimeError(f"{child.name} exited with status {child.exitcode}")
        fps = result["frames"] / result["seconds"] if result["seconds"] else float("inf")
        mib = frame_size / (1 << 20)
        print(f"bufbroker demo: importer pid {importer.pid} negotiated mapping type: {result['map_type']}")
        for step in result["trace"]:
            print(
                f"    offer {step.offer_index} {step.offer_type} x match {step.match_index} {step.match_type}: {step.verdict}"
            )
        print(
            f"bufbroker demo: {result['frames']} frames of {mib:.2f} MiB checked in "
            f"{result['seconds']:.2f} s: {fps:.0f} frames/s, {fps * mib:.0f} MiB/s (zero-copy)"
        )
        status = stop_broker(broker)
        broker = None
        if status != 0:
            raise RuntimeError(f"the broker exited with status {status}")
        return 0
    except (RuntimeError, EOFError, queue.Empty) as error:
        print(f"bufbroker demo: failed: {error}", file=sys.stderr)
        return 1
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
        if broker is not None:
            stop_broker(broker)
        shutil.rmtree(socket_dir, ignore_errors=True)
