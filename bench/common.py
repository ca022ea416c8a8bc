"""Shared helpers: statistics, machine info, child processes, the echo baseline."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ECHO_METHOD = "/bench.Echo/Echo"
FRAME_METHOD = "/bench.Frames/Get"
# The broker's own server options (broker/daemon.py serve()).
BROKER_SERVER_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 1 << 20)]
UNLIMITED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]

now = time.perf_counter


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def p50(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def p99(samples: Sequence[float]) -> float:
    return percentile(samples, 99)


def child_env() -> dict[str, str]:
    """Environment for bench child processes: bench/ importable from the checkout."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}


def spawn(module: str, *args: str, **kwargs: Any) -> subprocess.Popen:
    """Run `python -m MODULE ARGS` with line-based stdin/stdout for commands."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=child_env(),
        **kwargs,
    )


def ask(process: subprocess.Popen, command: str, timeout_note: str = "") -> Any:
    """Send one command line to a child; return its JSON answer line."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(command + "\n")
    process.stdin.flush()
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"bench child {process.args} exited ({process.poll()}) on {command!r} {timeout_note}")
    return json.loads(line)


def finish(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Close a child's stdin (it exits on EOF) and reap it; kill it if it hangs."""
    try:
        if process.stdin is not None:
            process.stdin.close()
    except OSError:
        pass
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def wait_for_socket(path: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.02)
    raise TimeoutError(f"nothing listened on {path} within {timeout} s")


def start_echo_server(path: Path) -> subprocess.Popen:
    """The control-plane baseline: a bare grpc.aio unary echo on a Unix socket."""
    process = subprocess.Popen([sys.executable, "-m", "bench.echo_server", str(path)], env=child_env())
    try:
        wait_for_socket(path)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def proc_status(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes (kB fields) or as a count."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            value = int(parts[1])
            return value * 1024 if len(parts) > 2 and parts[2] == "kB" else value
    raise KeyError(field)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        info["mem_total_bytes"] = proc_meminfo("MemTotal")
    except (OSError, KeyError):
        pass
    try:
        info["loadavg"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        pass
    try:
        import grpc

        info["grpcio"] = grpc.__version__
    except Exception:
        pass
    try:
        import bufbroker

        info["bufbroker"] = bufbroker.__version__
    except Exception:
        pass
    return info


def proc_meminfo(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def read_all(view: Any) -> int:
    """Read every byte of a buffer (numpy when available); returns a checksum."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is in the test extras
        import zlib

        return zlib.adler32(view)
    array = np.frombuffer(view, dtype=np.uint64 if len(view) % 8 == 0 else np.uint8)
    total = int(array.sum(dtype=np.uint64))
    del array
    return total


def fill(view: Any, seed: int = 1) -> None:
    """Write every byte of a writable buffer."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        pattern = bytes((seed + i) & 0xFF for i in range(4096))
        for offset in range(0, len(view), 4096):
            chunk = view[offset : offset + 4096]
            chunk[:] = pattern[: len(chunk)]
        return
    array = np.frombuffer(view, dtype=np.uint8)
    array.fill(seed & 0xFF)
    del array


def emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def size_label(size: int) -> str:
    if size % (1 << 20) == 0:
        return f"{size >> 20}MiB"
    if size % (1 << 10) == 0:
        return f"{size >> 10}KiB"
    return f"{size}B"


def maybe(value: float | None, digits: int = 3) -> float | None:
    if value is None or value != value:
        return None
    return round(value, digits)
