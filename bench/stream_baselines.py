"""Baselines of the `streams` bench group (issue 15): frame hand-off between processes.

1920x1080x3 frames in a pool of 4 slots, measured four ways the issue names:

- `floor`: AF_UNIX SOCK_SEQPACKET between two Python processes carrying a
  24-byte (slot, seq, timestamp) message over a shared memfd passed once with
  SCM_RIGHTS; releases come back the same way. `floor(consumers=4)` is the
  1->4 variant (a slot is free when all four released it).
- `iceoryx2`: its Python bindings, publish-subscribe of a u8 slice (the frame)
  with a user header (seq, timestamp), an Event service for the wake-up, and a
  second publish-subscribe + Event back for the releases.
- `mp_queue`: `multiprocessing.shared_memory` + `multiprocessing.Queue`
  (slot numbers down one queue, releases up another), what people use today.
- `grpc_bytes`: gRPC bidi streaming of the frame bytes over a Unix socket.

Each baseline function returns {name, p50_us, p99_us, fps, frames, notes, ...}:
p50/p99 of the hand-off latency (producer's publish -> consumer holds a readable
frame, time.monotonic_ns() in the consumer minus the publish timestamp the
message carries) over a paced run, and unpaced frames/s 1->1 (the producer
publishes as fast as slots come back). Producer and consumers are separate
processes started by this one (bench/stream_peer.py) that share only a path in
a temp dir; the multiprocessing baseline runs under its own host process, so
its resource tracker goes with it.

`python -m bench.stream_baselines [--quick] [--json PATH]` prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import child_env, p50, p99

FRAME = 1920 * 1080 * 3
SLOTS = 4
GRPC_PACED_FPS = 60.0
Log = Callable[[str], None]


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def plan(quick: bool) -> dict[str, Any]:
    """Frame counts: paced latency run, then unpaced frames/s (bounded by frames and seconds)."""
    if quick:
        return {"warmup": 5, "paced": 40, "fps": 200.0, "unpaced": 20000, "unpaced_s": 0.3, "timeout": 20.0}
    return {"warmup": 30, "paced": 300, "fps": 200.0, "unpaced": 200000, "unpaced_s": 2.0, "timeout": 60.0}


def children_of(pid: int | None = None) -> list[int]:
    """Every live descendant of PID (default: this process), from /proc."""
    root = os.getpid() if pid is None else pid
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields and fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _peer_args(transport: str, path: str, knobs: dict[str, Any], consumers: int) -> list[str]:
    return [
        transport,
        path,
        "--consumers",
        str(consumers),
        "--warmup",
        str(knobs["warmup"]),
        "--paced",
        str(knobs["paced"]),
        "--fps",
        str(knobs["fps"]),
        "--unpaced",
        str(knobs["unpaced"]),
        "--unpaced-s",
        str(knobs["unpaced_s"]),
        "--timeout",
        str(knobs["timeout"]),
    ]


def _json_line(path: Path) -> dict[str, Any] | None:
    """The last JSON object line a peer wrote (libraries may log to stdout before it)."""
    for line in reversed(path.read_text(errors="replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _run_peers(roles: list[tuple[str, list[str]]], workdir: Path, timeout: float) -> list[dict[str, Any]]:
    """Start `python -m bench.stream_peer ROLE ARGS` for each role; wait; return their JSON lines.

    Output goes to files (no pipe can fill); every child is killed and reaped in
    the finally, whatever happened.
    """
    procs: list[tuple[subprocess.Popen, Path, Path, str]] = []
    try:
        for i, (role, args) in enumerate(roles):
            out, err = workdir / f"peer{i}.out", workdir / f"peer{i}.err"
            with out.open("wb") as out_f, err.open("wb") as err_f:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench.stream_peer", role, *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out_f,
                    stderr=err_f,
                    env=child_env(),
                    cwd=workdir,
                    start_new_session=True,
                )
            procs.append((proc, out, err, f"{role} {args[0]}"))
        # Poll them all: the first to fail ends the run (its peers would only wait out their timeouts).
        deadline = time.monotonic() + timeout + 10
        failures: list[str] = []
        running = list(procs)
        while running and not failures:
            for item in list(running):
                proc, _, err, label = item
                code = proc.poll()
                if code is None:
                    continue
                running.remove(item)
                if code != 0:
                    tail = err.read_text(errors="replace").strip().splitlines()[-8:]
                    failures.append(f"{label} exited {code}: {' | '.join(tail)}")
            if running and not failures:
                if time.monotonic() > deadline:
                    failures.append(f"{', '.join(item[3] for item in running)} timed out")
                else:
                    time.sleep(0.02)
        if failures:
            raise RuntimeError("; ".join(failures))
        results = []
        for _, out, _, label in procs:
            got = _json_line(out)
            if got is None:
                raise RuntimeError(f"{label} printed no result")
            results.append(got)
        return results
    finally:
        for proc, _, _, _ in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 9)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _summary(
    name: str, producer: dict[str, Any], consumers: list[dict[str, Any]], notes: str, **extra: Any
) -> dict[str, Any]:
    latencies = [ns / 1000.0 for c in consumers for ns in c["latencies_ns"]]
    errors = sum(c["errors"] for c in consumers)
    first_error = next((c["first_error"] for c in consumers if c["first_error"]), "")
    fps = producer["unpaced"] / producer["unpaced_s"] if producer["unpaced_s"] > 0 else None
    delivered = min(c["frames"] for c in consumers)
    if errors:
        notes = (notes + "; " if notes else "") + f"{errors} frame check errors, first: {first_error}"
    return {
        "name": name,
        "p50_us": round(p50(latencies), 1) if latencies else None,
        "p99_us": round(p99(latencies), 1) if latencies else None,
        "fps": round(fps, 1) if fps is not None else None,
        "frames": delivered,
        "notes": notes,
        "consumers": len(consumers),
        "paced_samples": len(latencies),
        "unpaced_frames": producer["unpaced"],
        "unpaced_s": round(producer["unpaced_s"], 3),
        "errors": errors,
        **extra,
    }


def _skipped(name: str, reason: str) -> dict[str, Any]:
    return {"name": name, "p50_us": None, "p99_us": None, "fps": None, "frames": 0, "notes": f"skipped: {reason}"}


class _Workdir:
    """A temp dir removed on exit, under WORKDIR when given (the test checks it is left empty)."""

    def __init__(self, parent: Path | None, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _socket_pair_run(
    name: str,
    transport: str,
    consumers: int,
    quick: bool,
    workdir: Path | None,
    log: Log,
    notes: str,
    path_of: Callable[[Path], str],
    cleanup: Callable[[Path], None] | None = None,
    paced_fps: float | None = None,
) -> dict[str, Any]:
    knobs = plan(quick)
    if paced_fps:
        knobs["fps"] = paced_fps
    # Peer output under WORKDIR; the shared path in a short dir of its own
    # (AF_UNIX paths, iceoryx2's among them, must fit in 108 bytes).
    with _Workdir(workdir, f"bb-streams-{transport}-") as tmp, _Workdir(None, "bbs-") as shared:
        path = path_of(shared)
        roles = [("producer", _peer_args(transport, path, knobs, consumers))]
        roles += [("consumer", _peer_args(transport, path, knobs, consumers)) for _ in range(consumers)]
        try:
            got = _run_peers(roles, tmp, knobs["timeout"])
        finally:
            if cleanup is not None:
                cleanup(shared)
    entry = _summary(name, got[0], got[1:], notes, paced_fps=knobs["fps"])
    log(f"  {name}: p50 {entry['p50_us']} us, p99 {entry['p99_us']} us, {entry['fps']} frames/s")
    return entry


# ---------------------------------------------------------------- the baselines


def floor(quick: bool = False, consumers: int = 1, workdir: Path | None = None, log: Log = _stderr_log) -> dict:
    """SOCK_SEQPACKET + memfd: the floor. consumers=4 is the 1->4 variant."""
    return _socket_pair_run(
        "floor_seqpacket_memfd" + ("" if consumers == 1 else f"_1to{consumers}"),
        "floor",
        consumers,
        quick,
        workdir,
        log,
        "24-byte (slot, phase, seq, ts) messages on AF_UNIX SOCK_SEQPACKET (listening socket path), "
        "memfd of 4 frames passed once with SCM_RIGHTS, 16-byte releases back on the same socket"
        + ("" if consumers == 1 else f"; {consumers} consumer processes, slot free when all released; p50/p99 pooled"),
        lambda tmp: str(tmp / "floor.sock"),
    )


def iceoryx2_importable() -> str:
    """'' when `import iceoryx2` works in the interpreter the peers run; else why not."""
    probe = subprocess.run(
        [sys.executable, "-c", "import iceoryx2; print(getattr(iceoryx2, '__version__', ''))"],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        return lines[-1] if lines else f"import iceoryx2 exited {probe.returncode}"
    return ""


def _iox_unlink(tmp: Path) -> None:
    """Remove the run's iceoryx2 shared memory (its prefix is the run's own; see stream_peer.iox_prefix)."""
    from bench.stream_peer import iox_prefix

    prefix = iox_prefix(str(tmp))
    for entry in os.listdir("/dev/shm"):
        if entry.startswith(prefix):
            try:
                os.unlink(os.path.join("/dev/shm", entry))
            except OSError:
                pass


def _iceoryx2_version() -> str:
    try:
        from importlib.metadata import version

        return version("iceoryx2")
    except Exception:
        return "?"


def iceoryx2(quick: bool = False, consumers: int = 1, workdir: Path | None = None, log: Log = _stderr_log) -> dict:
    """iceoryx2 Python bindings: pub-sub of a u8 slice + user header, Event services for wake-up and release."""
    name = "iceoryx2_pubsub_slice_event" + ("" if consumers == 1 else f"_1to{consumers}")
    reason = iceoryx2_importable()
    if reason:
        return _skipped(name, reason)
    return _socket_pair_run(
        name,
        "iceoryx2",
        consumers,
        quick,
        workdir,
        log,
        f"iceoryx2 {_iceoryx2_version()}: publish-subscribe of Slice[c_uint8] (one frame, loan_slice_uninit) "
        "with a (seq, ts, phase, slot) user header, zero-copy read through as_memory_view(); wake-up by an "
        "Event service (listener.timed_wait). iceoryx2 tells the publisher nothing when a subscriber drops a "
        "sample, so the 4-frame pool is enforced by releases on a second pub-sub (u64 seq) + Event back; "
        "iceoryx2 sizes its own data segment (the loaned chunk is its choice, not one of 4 fixed slots)",
        lambda tmp: str(tmp),
        cleanup=_iox_unlink,
    )


def mp_queue(quick: bool = False, workdir: Path | None = None, log: Log = _stderr_log) -> dict:
    """multiprocessing.shared_memory (4 slots) + multiprocessing.Queue down and up."""
    knobs = plan(quick)
    name = "mp_shared_memory_queue"
    with _Workdir(workdir, "bb-streams-mp-") as tmp:
        got = _run_peers([("mp-host", _peer_args("mp", str(tmp), knobs, 1))], tmp, knobs["timeout"])
    entry = _summary(
        name,
        got[0]["producer"],
        got[0]["consumers"],
        "one shared_memory segment of 4 frames; (slot, phase, seq, ts) tuples on a multiprocessing.Queue, "
        "(slot, seq) releases on a second one; producer and consumer are 'spawn' children of one host process "
        "(the queues need a common parent)",
        paced_fps=knobs["fps"],
        shm_name=got[0]["shm_name"],
    )
    log(f"  {name}: p50 {entry['p50_us']} us, p99 {entry['p99_us']} us, {entry['fps']} frames/s")
    return entry


def grpc_bytes(quick: bool = False, workdir: Path | None = None, log: Log = _stderr_log) -> dict:
    """gRPC bidi streaming of the 6 MB frame bytes over a Unix socket; releases up the same call."""
    try:
        import grpc

        version = grpc.__version__
    except ImportError as error:  # pragma: no cover - grpcio is a dependency
        return _skipped("grpc_bidi_stream_bytes", str(error))
    return _socket_pair_run(
        "grpc_bidi_stream_bytes",
        "grpc",
        1,
        quick,
        workdir,
        log,
        f"grpcio {version}, sync server, one bidi call: frame messages (24-byte header + 6,220,800 bytes, "
        "identity serializers) down, 16-byte releases up, at most 4 in flight; max message 32 MiB; "
        "the publish timestamp is taken before the copy into bytes; paced at "
        f"{GRPC_PACED_FPS:.0f} fps, not 200: at 200 fps 6 MB frames exceed what one call carries here, and "
        "p50 would be queueing behind earlier frames rather than the hand-off",
        lambda tmp: str(tmp / "grpc.sock"),
        paced_fps=GRPC_PACED_FPS,
    )


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (from /proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bufbroker_streams(
    quick: bool = False, consumers: int = 1, workdir: Path | None = None, log: Log = _stderr_log
) -> dict:
    """bufbroker streams: a broker, a producer and ``consumers`` consumer processes finding each other by name.

    Adds the broker's CPU seconds per frame (it should not see frames at all)
    and whether its fd count came back to where it was before the peers.
    """
    from bufbroker_broker.cli.launch import start_broker, stop_broker

    knobs = plan(quick)
    name = "bufbroker_streams" + ("" if consumers == 1 else f"_1to{consumers}")
    with _Workdir(workdir, "bb-streams-bufbroker-") as tmp, _Workdir(None, "bbs-") as shared:
        socket_dir = shared / "s"
        broker = start_broker(socket_dir, ["--http", "none", "--log-level", "warning"])
        try:
            fds_before = len(os.listdir(f"/proc/{broker.pid}/fd"))
            cpu_before = _cpu_seconds(broker.pid)
            roles = [("producer", _peer_args("bufbroker", str(socket_dir), knobs, consumers))]
            roles += [
                ("consumer", _peer_args("bufbroker", str(socket_dir), knobs, consumers)) for _ in range(consumers)
            ]
            got = _run_peers(roles, tmp, knobs["timeout"])
            cpu = _cpu_seconds(broker.pid) - cpu_before
            deadline = time.monotonic() + 3
            while (
                fds_after := len(os.listdir(f"/proc/{broker.pid}/fd"))
            ) != fds_before and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop_broker(broker)
    frames = got[0]["frames"]
    entry = _summary(
        name,
        got[0],
        got[1:],
        "create_stream/acquire/publish and subscribe/receive/release over the SDK; one SOCK_SEQPACKET link per "
        "consumer set up by the broker, frames never pass through it",
        paced_fps=knobs["fps"],
        broker_cpu_s_per_frame=round(cpu / frames, 9) if frames else None,
        broker_cpu_s=round(cpu, 3),
        broker_fds_leaked=fds_after - fds_before,
    )
    log(
        f"  {name}: p50 {entry['p50_us']} us, p99 {entry['p99_us']} us, {entry['fps']} frames/s, "
        f"broker {cpu:.3f} CPU s for {frames} frames"
    )
    return entry


BASELINES: dict[str, Callable[..., dict]] = {
    "floor": floor,
    "floor_1to4": lambda **kw: floor(consumers=4, **kw),
    "iceoryx2": iceoryx2,
    "iceoryx2_1to4": lambda **kw: iceoryx2(consumers=4, **kw),
    "mp_queue": mp_queue,
    "grpc_bytes": grpc_bytes,
}


def run_all(
    quick: bool = False, only: list[str] | None = None, workdir: Path | None = None, log: Log = _stderr_log
) -> list[dict[str, Any]]:
    results = []
    for key, fn in BASELINES.items():
        if only and key not in only:
            continue
        log(f"{key} ...")
        try:
            results.append(fn(quick=quick, workdir=workdir, log=log))
        except Exception as error:
            results.append(
                {
                    "name": key,
                    "p50_us": None,
                    "p99_us": None,
                    "fps": None,
                    "frames": 0,
                    "notes": "",
                    "error": str(error),
                }
            )
            log(f"  {key} failed: {error}")
    return results


def table(results: list[dict[str, Any]]) -> str:
    def fmt(value: Any) -> str:
        return "n/a" if value is None else (f"{value:,.1f}" if isinstance(value, float) else str(value))

    lines = [
        "| baseline | consumers | p50 us | p99 us | frames/s 1->N | frames | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        note = f"error: {r['error']}" if r.get("error") else r.get("notes", "")
        lines.append(
            f"| {r['name']} | {r.get('consumers', '')} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} | "
            f"{fmt(r['fps'])} | {r['frames']} | {note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few frames: all baselines in < 20 s")
    parser.add_argument("--only", action="append", choices=list(BASELINES), help="run only these (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = run_all(quick=args.quick, only=args.only)
    print(table(results))
    print(
        f"\n{FRAME:,}-byte frames, pool of {SLOTS}; {time.monotonic() - started:.1f} s"
        + (" (quick)" if args.quick else "")
    )
    if args.json:
        args.json.write_text(json.dumps({"quick": args.quick, "results": results}, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
