"""Like containers in a pod: broker, exporter and importer (or a stream's
producer and consumer) in separate mount, PID and network namespaces,
sharing only the socket dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bufbroker_broker.cli.launch import wait_until_serving
from tests.conftest import REPO_ROOT, settled_fd_count, wait_for_fds, warm_up

ISOLATE = ["unshare", "--mount", "--pid", "--net", "--fork", "--mount-proc", "--"]


def _isolation_works() -> str:
    if os.geteuid() != 0:
        return "needs root to create namespaces"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run([*ISOLATE, "true"], capture_output=True, text=True)
    return "" if probe.returncode == 0 else f"unshare failed here: {probe.stderr.strip()}"


pytestmark = pytest.mark.skipif(bool(_isolation_works()), reason=_isolation_works() or "ok")


def _child_pid(parent: int, timeout: float = 10) -> int:
    """The process `unshare --fork` started (the broker, PID 1 in its namespace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise TimeoutError("unshare started no child")


def _isolated(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*ISOLATE, sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_clients_in_other_namespaces_share_a_buffer_through_the_socket_dir(tmp_path):
    socket_dir = tmp_path / "shared"
    broker = _isolated("bufbroker_broker", "serve", "--socket-dir", str(socket_dir), "--http", "none")
    exporter = importer = None
    try:
        wait_until_serving(socket_dir, broker)
        broker_pid = _child_pid(broker.pid)
        warm_up(socket_dir)
        baseline = settled_fd_count(broker_pid)
        exporter = _isolated(
            "tests.clients.exporter",
            str(socket_dir),
            "--name",
            "pod-frame",
            "--offers",
            "segments,memfd",
            "--fill",
            "across-namespaces|",
        )
        seen = json.loads(exporter.stdout.readline())
        # In its own PID namespace the exporter is PID 1; the broker cannot see
        # it at all (the kernel reports pid 0), and needs not: the connection
        # is the identity.
        assert seen["my_pid"] == 1
        assert seen["broker_saw_pid"] == 0
        importer = _isolated("tests.clients.importer", str(socket_dir), "pod-frame", "--accept", "segments,memfd")
        out, _ = importer.communicate(timeout=60)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["map_type"] == "segments"
        assert result["head"].startswith("across-namespaces|across-namespaces|")
        exporter.stdin.close()
        assert exporter.wait(10) == 0
        assert wait_for_fds(broker_pid, baseline) == baseline
        os.kill(broker_pid, signal.SIGTERM)
        assert broker.wait(15) == 0
    finally:
        for process in (importer, exporter, broker):
            if process is None:
                continue
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()


def test_a_stream_carries_frames_between_namespaces(tmp_path):
    socket_dir = tmp_path / "shared"
    broker = _isolated("bufbroker_broker", "serve", "--socket-dir", str(socket_dir), "--http", "none")
    producer = consumer = None
    try:
        wait_until_serving(socket_dir, broker)
        broker_pid = _child_pid(broker.pid)
        warm_up(socket_dir)
        baseline = settled_fd_count(broker_pid)
        where = ("--socket-dir", str(socket_dir))
        consumer = _isolated(
            "bufbroker_broker",
            *("stream", "watch", "pod", *where, "--mode", "queue", "--check", "--json", "--frames", "60"),
        )
        producer = _isolated(
            "bufbroker_broker",
            *("stream", "test-source", "pod", *where, "--size", "64x48", "--fps", "300", "--frames", "60"),
            "--wait-consumers",
            "1",
        )
        out, _ = consumer.communicate(timeout=60)
        assert consumer.returncode == 0, out  # --check: every frame held its number and pattern
        final = json.loads(out.strip().splitlines()[-1])
        assert final["total"] == 60 and final["missed_total"] == 0 and final["last_seq"] == 60, final
        assert producer.wait(30) == 0
        assert wait_for_fds(broker_pid, baseline) == baseline
        os.kill(broker_pid, signal.SIGTERM)
        assert broker.wait(15) == 0
    finally:
        for process in (consumer, producer, broker):
            if process is None:
                continue
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
