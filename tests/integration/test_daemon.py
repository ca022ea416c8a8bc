"""The daemon: socket dir, one broker per dir, signals, plugins, CLI, demo."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import bufbroker
from bufbroker_broker.cli.launch import start_broker, stop_broker
from tests.conftest import REPO_ROOT

NO_HTTP = ["--http", "none"]


def test_socket_dir_is_0770_and_sockets_are_0660(broker):
    assert stat.S_IMODE(broker.socket_dir.stat().st_mode) == 0o770
    for name in ("grpc.sock", "fd.sock"):
        path = broker.socket_dir / name
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660


def test_start_logs_one_line_with_paths_and_version(broker):
    lines = [line for line in broker.log().splitlines() if "serving" in line]
    assert len(lines) == 1
    assert str(broker.socket_dir / "grpc.sock") in lines[0] and str(broker.socket_dir / "fd.sock") in lines[0]
    assert bufbroker.__version__ in lines[0]


def test_a_second_broker_on_a_live_dir_refuses_to_start(broker):
    second = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "serve", "--socket-dir", str(broker.socket_dir), *NO_HTTP],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert f"a live broker (pid {broker.pid}) already serves {broker.socket_dir}" in second.stderr
    with broker.connect() as session:  # the first one is undisturbed
        assert session.stats().pid == broker.pid


def test_stale_sockets_of_a_dead_broker_are_replaced(tmp_path):
    socket_dir = tmp_path / "stale"
    socket_dir.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    dead.bind(str(socket_dir / "fd.sock"))
    dead.close()  # the file stays: what a kill -9 leaves behind
    (socket_dir / "grpc.sock").write_text("left over")
    (socket_dir / "broker.lock").write_text("12345\n")  # not locked by anyone
    process = start_broker(socket_dir, NO_HTTP)
    try:
        with bufbroker.connect(socket_dir) as session:
            assert session.stats().pid == process.pid
    finally:
        assert stop_broker(process) == 0


def test_a_broker_killed_with_sigkill_can_be_replaced(tmp_path):
    socket_dir = tmp_path / "killed"
    first = start_broker(socket_dir, NO_HTTP)
    first.kill()
    first.wait()
    second = start_broker(socket_dir, NO_HTTP)
    try:
        with bufbroker.connect(socket_dir) as session:
            assert session.stats().pid == second.pid
    finally:
        assert stop_broker(second) == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_the_broker_cleanly(tmp_path, signum):
    socket_dir = tmp_path / "sig"
    process = start_broker(socket_dir, NO_HTTP)
    with bufbroker.connect(socket_dir) as session:
        session.export(4096, name="held")
        process.send_signal(signum)
        assert process.wait(15) == 0
    assert not (socket_dir / "grpc.sock").exists() and not (socket_dir / "fd.sock").exists()


def test_connect_without_a_broker_says_how_to_start_one(tmp_path):
    with pytest.raises(bufbroker.Unavailable, match="bufbroker serve --socket-dir"):
        bufbroker.connect(tmp_path / "nobody-here")


def test_default_socket_dir_follows_the_environment(monkeypatch):
    from bufbroker_broker.server.settings import default_socket_dir

    monkeypatch.setenv("XDG_RUNTIME_DIR", "/tmp/xdg-test")
    expected = Path("/run/bufbroker") if os.geteuid() == 0 else Path("/tmp/xdg-test/bufbroker")
    assert default_socket_dir() == expected
    monkeypatch.setenv("BUFBROKER_SOCKET_DIR", "/tmp/explicit")
    assert bufbroker.default_socket_dir() == Path("/tmp/explicit")


def test_ls_lists_buffers_with_exporter_pid_and_offers(broker):
    with broker.connect() as session:
        session.export(8192, name="listed", offers=["segments", "memfd"])
        out = subprocess.run(
            [sys.executable, "-m", "bufbroker_broker", "ls", "--socket-dir", str(broker.socket_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "listed" in line)
    assert str(os.getpid()) in row and "8192" in row and "segments,memfd" in row


def test_help_explains_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    for command in ("serve", "ls", "demo"):
        assert command in out.stdout


def test_demo_completes_prints_the_negotiated_type_and_leaves_nothing_behind():
    before = set(Path(tempfile.gettempdir()).glob("bufbroker-demo-*"))
    out = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "demo", "--frames", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "negotiated mapping type: segments" in out.stdout
    assert "60 frames of 0.88 MiB checked" in out.stdout and "frames/s" in out.stdout and "missed 0" in out.stdout
    assert "(separate commands)" in out.stdout  # producer and consumer are unrelated processes
    assert set(Path(tempfile.gettempdir()).glob("bufbroker-demo-*")) == before


PLUGIN = '''
from google.protobuf import wrappers_pb2
from bufbroker_broker.core.mapping_type import Matched, MapResult, SoftMismatch


class EchoType:
    """A third-party type: matches when the offer's and match's keys agree."""

    name = "echo"
    description = "test plugin"
    offer_message = wrappers_pb2.StringValue
    match_message = wrappers_pb2.StringValue
    handle_message = wrappers_pb2.StringValue

    def check_offer(self, offer, fd_sizes, size):
        return offer

    def check_match(self, match):
        return match

    def match(self, offer, match, ctx):
        return Matched() if offer.value == match.value else SoftMismatch("key differs")

    def finish(self, offer, match, ctx):
        return offer.value

    def map(self, backing, params):
        return MapResult(wrappers_pb2.StringValue(value="echo:" + params), [backing.fds[0].fd])

    def unmap(self, backing, params):
        pass

    def describe(self):
        return self.description


ECHO = EchoType()


class Incomplete:
    name = "incomplete"
    description = "no unmap"
    offer_message = match_message = handle_message = wrappers_pb2.StringValue

    def check_offer(self, *a): pass
    def check_match(self, *a): pass
    def match(self, *a): pass
    def finish(self, *a): pass
    def map(self, *a): pass
    def describe(self): pass


INCOMPLETE = Incomplete()
'''


def _install_plugin(root: Path, target: str) -> dict:
    """A real installed distribution with an entry point in bufbroker.mapping_types."""
    root.mkdir()
    (root / "echo_plugin.py").write_text(PLUGIN)
    info = root / "echo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bufbroker.mapping_types]\n{target.split(':')[1].lower()} = {target}\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_third_party_type_from_an_entry_point_is_negotiated(broker_factory, tmp_path):
    from google.protobuf import wrappers_pb2

    env = _install_plugin(tmp_path / "plugin", "echo_plugin:ECHO")
    broker = broker_factory(env=env)
    assert "mapping types: memfd, segments, udmabuf, dmabuf, echo" in broker.log()
    with broker.connect() as exp, broker.connect() as imp:
        key = wrappers_pb2.StringValue(value="k1")
        buffer = exp.export(4096, offers=[bufbroker.Plugin("echo", key), "memfd"])
        wrong = imp.attach(buffer.id, accept=[bufbroker.Plugin("echo", wrappers_pb2.StringValue(value="k2")), "memfd"])
        assert wrong.map_type == "memfd" and wrong.trace[0].reason == "key differs"
        wrong.detach()
        attachment = imp.attach(buffer.id, accept=[bufbroker.Plugin("echo", key)])
        assert attachment.map_type == "echo"
        with attachment.map() as mapping:
            handle = wrappers_pb2.StringValue()
            assert mapping.handle.plugin.body.Unpack(handle) and handle.value == "echo:k1"
            assert len(mapping.fds) == 1
        attachment.detach()


def test_incomplete_third_party_type_stops_the_broker_at_start(tmp_path):
    env = _install_plugin(tmp_path / "plugin", "echo_plugin:INCOMPLETE")
    out = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "serve", "--socket-dir", str(tmp_path / "run"), *NO_HTTP],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
    )
    assert out.returncode == 1
    assert "mapping type 'incomplete' is incomplete: it lacks unmap" in out.stderr
    assert not (tmp_path / "run" / "fd.sock").exists()
