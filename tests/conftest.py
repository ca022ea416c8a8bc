"""Fixtures: a real broker process in a temp dir, real client processes.

Every test that uses ``broker`` also checks, at teardown, that the broker's
open fd count (/proc/<pid>/fd) is back at its baseline and that its ledger
holds no client fds, and that SIGTERM stops it with exit status 0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import bufbroker
from bufbroker_broker.cli.launch import start_broker, stop_broker

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        type=float,
        default=None,
        metavar="MINUTES",
        help="run tests/adversarial's load test for this many minutes instead of the CI bound (30 s)",
    )


def json_line(process: subprocess.Popen) -> dict:
    """The next JSON line a client process printed (fails if it exited instead)."""
    line = process.stdout.readline()
    assert line, f"the client exited with status {process.wait()}"
    return json.loads(line)


def follower_read(follower: subprocess.Popen) -> dict:
    """Ask a tests.clients.follower process to read its current mapping."""
    follower.stdin.write("read\n")
    follower.stdin.flush()
    return json_line(follower)


def call_channels(*sessions: bufbroker.Session) -> int:
    """Call channels these SDK sessions hold: one broker fd each, for as long as the session lives.

    A session opens a second one when two of its threads call at once (say,
    its events thread acknowledging a revoke while the main thread detaches).
    """
    return sum(len(session._link.calls._all) for session in sessions)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid: int, quiet: float = 0.2, timeout: float = 3.0) -> int:
    """The fd count once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    count, since = fd_count(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = fd_count(pid)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return count


def wait_for_fds(pid: int, expected: int, timeout: float = 2.0) -> int:
    """Poll until the fd count equals ``expected``; return the last count."""
    deadline = time.monotonic() + timeout
    count = fd_count(pid)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        count = fd_count(pid)
    return count


@dataclass
class BrokerProcess:
    process: subprocess.Popen
    socket_dir: Path
    log_path: Path
    baseline_fds: int = 0
    clients: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def fd_count(self) -> int:
        return fd_count(self.pid)

    def connect(self) -> bufbroker.Session:
        return bufbroker.connect(self.socket_dir)

    def stats(self):
        with self.connect() as session:
            return session.stats()

    def log(self) -> str:
        return self.log_path.read_text()

    def settled_fd_count(self) -> int:
        return settled_fd_count(self.pid)

    def wait_for_fds(self, expected: int, timeout: float = 2.0) -> int:
        return wait_for_fds(self.pid, expected, timeout)

    def spawn(self, module: str, *args: str) -> subprocess.Popen:
        """Start ``python -m tests.clients.<module> DIR args...`` (stdin/stdout piped)."""
        process = subprocess.Popen(
            [sys.executable, "-m", f"tests.clients.{module}", str(self.socket_dir), *args],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.clients.append(process)
        return process

    def spawn_code(self, code: str) -> subprocess.Popen:
        """Start ``python -c code DIR`` (stdin/stdout piped)."""
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(self.socket_dir)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.clients.append(process)
        return process

    def run(self, module: str, *args: str, timeout: float = 60) -> dict:
        """Run a client process to completion; return the JSON line it printed."""
        process = self.spawn(module, *args)
        out, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"{module} exited {process.returncode}: {out}"
        return json.loads(out.strip().splitlines()[-1])

    def exporter(self, *args: str) -> tuple[subprocess.Popen, dict]:
        """Start an exporter process; return it and its {"id", "name"} line."""
        process = self.spawn("exporter", *args)
        line = process.stdout.readline()
        assert line, f"the exporter exited with status {process.wait()} before registering"
        return process, json.loads(line)


def warm_up(socket_dir: Path) -> None:
    """One full cycle, so the broker's lazily opened fds exist before the baseline."""
    with bufbroker.connect(socket_dir) as exporter, bufbroker.connect(socket_dir) as importer:
        buffer = exporter.export(4096, offers=["segments", "memfd"])
        attachment = importer.attach(buffer.id, accept=["segments"])
        attachment.map().close()
        attachment.detach()
        buffer.unregister()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Callable[..., BrokerProcess]:
    """Start brokers with extra `serve` arguments; each is checked at teardown."""
    started: list[BrokerProcess] = []

    def start(
        *extra_args: str, env: dict | None = None, name: str = "run", prefix: tuple = (), base: Path | None = None
    ) -> BrokerProcess:
        socket_dir = (base or tmp_path) / name
        log_path = tmp_path / f"{name}-broker.log"
        log_file = open(log_path, "w")
        if not any(arg.startswith("--http") for arg in extra_args):
            extra_args = ("--http", "none", *extra_args)
        try:
            process = start_broker(
                socket_dir, ["--log-level", "debug", *extra_args], env=env, stderr=log_file, prefix=prefix
            )
        finally:
            log_file.close()
        broker = BrokerProcess(process, socket_dir, log_path)
        started.append(broker)
        warm_up(socket_dir)
        broker.baseline_fds = broker.settled_fd_count()
        return broker

    yield start

    problems = []
    for broker in started:
        for client in broker.clients:
            if client.poll() is None:
                client.kill()
            client.wait()
            for stream in (client.stdin, client.stdout):
                if stream is not None:
                    stream.close()
        if broker.process.poll() is not None:
            continue  # the test stopped or killed it itself
        count = broker.wait_for_fds(broker.baseline_fds)
        if count != broker.baseline_fds:
            problems.append(f"broker fd count {count}, baseline {broker.baseline_fds}: fds leaked")
        held = broker.stats().fds_held
        if held != 0:
            problems.append(f"broker ledger holds {held} client fds after every client ended")
        status = stop_broker(broker.process)
        if status != 0:
            problems.append(f"broker exited with status {status} on SIGTERM; log:\n{broker.log()[-2000:]}")
    assert not problems, "; ".join(problems)


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    """A real broker serving tmp_path/run with default settings."""
    return broker_factory()


@pytest.fixture
def open_base():
    """A dir other uids can traverse (pytest's tmp root is 0700), for brokers and clients of several uids."""
    base = tempfile.mkdtemp(prefix="bufbroker-uids-")
    os.chmod(base, 0o755)
    yield Path(base)
    shutil.rmtree(base, ignore_errors=True)
