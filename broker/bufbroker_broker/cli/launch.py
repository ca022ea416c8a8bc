"""Start a broker as a child process and wait until it serves (demo, tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any


def wait_until_serving(socket_dir: Path, process: subprocess.Popen | None = None, timeout: float | None = None) -> None:
    """Return once DIR/fd.sock accepts connections and DIR/grpc.sock exists.

    ``timeout`` defaults to $BUFBROKER_START_TIMEOUT, else 15 s (slow
    machines, such as the emulated kernel-test VM, set it higher).
    """
    if timeout is None:
        timeout = float(os.environ.get("BUFBROKER_START_TIMEOUT", "15"))
    deadline = time.monotonic() + timeout
    fd_path, grpc_path = socket_dir / "fd.sock", socket_dir / "grpc.sock"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the broker exited with status {process.returncode} before serving {socket_dir}")
        if grpc_path.exists() and fd_path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                probe.connect(str(fd_path))
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.02)
    raise TimeoutError(f"no broker served {socket_dir} within {timeout} s")


def start_broker(
    socket_dir: Path,
    extra_args: Sequence[str] = (),
    env: dict | None = None,
    stderr: int | IO[Any] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen:
    """Run `python -m bufbroker_broker serve --socket-dir DIR` and wait until it serves.

    ``prefix`` goes before the command (e.g. ``["prlimit", "--nofile=64:64", "--"]``).
    """
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "bufbroker_broker", "serve", "--socket-dir", str(socket_dir), *extra_args],
        env={**os.environ, **(env or {})},
        stderr=stderr,
    )
    try:
        wait_until_serving(socket_dir, process)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def stop_broker(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM the broker and return its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
