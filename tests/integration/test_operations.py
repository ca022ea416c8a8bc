"""Operating the broker: settings, health, HTTP probes, graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.raw_client import RawClient


def _config_show_output(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "config", "show", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("BUFBROKER_")}, **(env or {})},
    )


def _config_show(*args: str, env: dict | None = None, header: str = "# offline: ") -> dict[str, tuple[str, str]]:
    """The settings table `config show ARGS` prints (after its first line, which starts with ``header``)."""
    out = _config_show_output(*args, env=env)
    assert out.returncode == 0, out.stderr
    first, *lines = out.stdout.splitlines()
    assert first.startswith(header), first
    shown = {}
    for line in lines:
        setting, rest = line.split("=", 1)
        value, origin = rest.split("#", 1)
        shown[setting.strip()] = (value.strip(), origin.strip())
    return shown


def test_settings_precedence_is_flags_then_environment_then_file_then_defaults(tmp_path):
    config = tmp_path / "bufbroker.toml"
    config.write_text(
        '[broker]\nlog_level = "debug"\ndrain_timeout = 7.5\nmax_send_queue = 99\nhttp = "127.0.0.1:9000"\n'
    )
    env = {"BUFBROKER_DRAIN_TIMEOUT": "3", "BUFBROKER_HTTP": "127.0.0.1:9001"}
    shown = _config_show("--config", str(config), "--http", "none", env=env)
    assert shown["http"] == ("none", "flag --http")
    assert shown["drain_timeout"] == ("3.0", "environment BUFBROKER_DRAIN_TIMEOUT")
    assert shown["log_level"] == ("debug", f"config file {config}")
    assert shown["max_send_queue"] == ("99", f"config file {config}")
    assert shown["pending_fd_timeout"] == ("10.0", "default")


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["--http", "nowhere"], {}, "http = 'nowhere' (from flag --http): "),
        ([], {"BUFBROKER_DRAIN_TIMEOUT": "-1"}, "drain_timeout = '-1' (from environment BUFBROKER_DRAIN_TIMEOUT)"),
        (["--log-level", "loud"], {}, "log_level = 'loud' (from flag --log-level): Value error, must be one of"),
    ],
)
def test_invalid_settings_fail_at_start_naming_field_value_and_why(tmp_path, args, env, expected):
    out = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "serve", "--socket-dir", str(tmp_path / "run"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert out.returncode == 2
    assert expected in out.stderr
    assert not (tmp_path / "run" / "fd.sock").exists()


def test_offline_config_show_says_it_shows_this_shell_not_a_running_broker(broker_factory):
    broker_factory("--http", f"127.0.0.1:{_free_port()}")  # a running broker does not change the offline answer
    out = _config_show_output("--http", "127.0.0.1:9123")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("# offline: ")
    assert "in this shell" in first and "not those of a running broker" in first and "--running" in first
    assert _config_show("--http", "127.0.0.1:9123")["http"] == ("127.0.0.1:9123", "flag --http")


def test_config_show_running_reports_the_brokers_own_settings_and_sources(broker_factory, tmp_path):
    port = _free_port()
    token = tmp_path / "admin-token"
    token.write_text("s3cret-admin-token-0123456789\n")
    token.chmod(0o600)
    broker = broker_factory(
        "--http", f"127.0.0.1:{port}", "--admin-token-file", str(token), env={"BUFBROKER_MOVE_TIMEOUT": "0.75"}
    )
    out = _config_show_output("--running", "--socket-dir", str(broker.socket_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(f"# running: the broker at {broker.socket_dir} (pid {broker.pid}")
    shown = _config_show("--running", "--socket-dir", str(broker.socket_dir), header="# running: ")
    assert shown["http"] == (f"127.0.0.1:{port}", "flag --http")
    assert shown["move_timeout"] == ("0.75", "environment BUFBROKER_MOVE_TIMEOUT")
    assert shown["drain_timeout"] == ("5.0", "default")
    assert shown["socket_dir"] == (str(broker.socket_dir), "flag --socket-dir")
    assert shown["admin_token_file"] == (str(token), "flag --admin-token-file")
    assert "s3cret" not in out.stdout
    # This shell's defaults are not what the broker runs with.
    assert _config_show()["http"] == ("127.0.0.1:8377", "default")


def test_config_show_running_refuses_setting_flags_and_needs_a_broker(tmp_path):
    refused = _config_show_output("--running", "--http", "127.0.0.1:9000", "--socket-dir", str(tmp_path))
    assert refused.returncode == 2 and "--http would not apply" in refused.stderr
    missing = _config_show_output("--running", "--socket-dir", str(tmp_path / "nobody"))
    assert missing.returncode == 1 and "no broker is serving" in missing.stderr


def test_unknown_setting_in_the_config_file_is_refused(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("socket_dirr = '/tmp/x'\n")
    out = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "config", "show", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "unknown setting(s) socket_dirr" in out.stderr


def test_health_command_exits_0_when_serving_and_1_when_not(broker, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "health", "--socket-dir", str(broker.socket_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "bufbroker_broker",
            "health",
            "--socket-dir",
            str(tmp_path / "none"),
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1


def test_grpc_reflection_lists_the_broker_and_health_services(broker):
    with grpc.insecure_channel(f"unix:{broker.socket_dir / 'grpc.sock'}") as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "bufbroker.v1.Broker" in services and "grpc.health.v1.Health" in services


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_http_health_readiness_and_metrics(broker_factory):
    port = _free_port()
    broker = broker_factory("--http", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    assert _get(f"{base}/healthz") == (200, json.dumps({"status": "ok"}, separators=(",", ":")))
    status, body = _get(f"{base}/readyz")
    assert status == 200 and "ready" in body
    with broker.connect() as session:
        session.export(4096, name="metered")
        status, text = _get(f"{base}/metrics")
        assert status == 200
        assert 'bufbroker_buffers{state="active"} 1.0' in text
        assert session.token not in text


def test_sigterm_revokes_with_reason_waits_for_importers_and_exits_0(broker_factory):
    broker = broker_factory("--drain-timeout", "5")
    exporter, info = broker.exporter("--name", "drained", "--offers", "memfd")
    holder = broker.spawn("holder", "drained")
    assert json.loads(holder.stdout.readline()) == {"ready": True}
    started = time.monotonic()
    broker.process.send_signal(signal.SIGTERM)
    result = json.loads(holder.stdout.readline())
    assert result == {"revoked": "broker shutting down", "head": "bufbroker"}
    assert broker.process.wait(10) == 0
    # The importer acknowledged at once, so the broker did not wait out the deadline.
    assert time.monotonic() - started < 4
    assert holder.wait(10) == 0


def test_sigterm_gives_up_on_a_silent_importer_at_the_deadline(broker_factory):
    broker = broker_factory("--drain-timeout", "1")
    with broker.connect() as exporter, RawClient(broker.socket_dir) as silent:
        buffer = exporter.export(4096)
        from bufbroker.v1 import broker_pb2 as pb

        silent.call("Attach", pb.AttachRequest(buffer_id=buffer.id))  # never acknowledges
        started = time.monotonic()
        broker.process.send_signal(signal.SIGTERM)
        assert broker.process.wait(10) == 0
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5
    assert "not detached within 1.0 s" in broker.log()


def test_http_address_in_use_fails_at_start_and_cleans_up(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bufbroker_broker",
                "serve",
                "--socket-dir",
                str(tmp_path / "run"),
                "--http",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}: the address is in use" in out.stderr
    assert not (tmp_path / "run" / "grpc.sock").exists() and not (tmp_path / "run" / "fd.sock").exists()


def test_session_limits_answer_resource_exhausted_naming_the_limit(broker_factory):
    import bufbroker

    broker = broker_factory(
        "--max-buffers-per-session", "2", "--max-attachments-per-session", "1", "--max-mappings-per-session", "1"
    )
    with broker.connect() as exp, broker.connect() as imp:
        first = exp.export(4096, offers=["memfd"])
        exp.export(4096)
        with pytest.raises(bufbroker.ResourceExhausted, match=r"max_buffers_per_session = 2"):
            exp.export(4096)
        attachment = imp.attach(first.id, accept=["memfd"], map=True)
        with pytest.raises(bufbroker.ResourceExhausted, match=r"max_mappings_per_session = 1"):
            attachment.map()
        with pytest.raises(bufbroker.ResourceExhausted, match=r"max_attachments_per_session = 1"):
            imp.attach(first.id, accept=["memfd"])
        attachment.detach()
        again = imp.attach(first.id, accept=["memfd"], map=True)  # detach freed the attachment and its mapping
        again.mapping.close()
        again.map().close()  # unmap frees a mapping too
        again.detach()
        imp.attach(first.id, accept=["memfd"]).detach()  # freed: allowed again
    assert broker.stats().buffers == 0


def test_oversized_request_is_refused_and_the_broker_keeps_serving(broker_factory):
    import bufbroker

    broker = broker_factory("--max-request-bytes", "65536")
    with broker.connect() as session:
        with pytest.raises(bufbroker.BrokerError) as raised:
            session.export(4096, labels={"big": "x" * 100_000})
        assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 65536 (setting max_request_bytes)" in str(raised.value)  # the SDK names the setting
        assert session.export(4096).id > 0


def test_unclaimed_fds_beyond_the_pending_limit_are_refused_naming_it(broker_factory):
    broker = broker_factory("--max-pending-fds", "4")
    fds = [os.memfd_create(f"pending{i}", os.MFD_ALLOW_SEALING) for i in range(5)]
    with RawClient(broker.socket_dir) as raw:
        raw.send_fds("first", fds[:3])
        raw.send_fds("second", fds[3:])  # 5 > 4 unclaimed
        notice = raw.receive().message.notice
        assert notice.nonce == "second" and notice.code == "RESOURCE_EXHAUSTED"
        assert "at most 4 fds" in notice.message and "max_pending_fds" in notice.message
    for fd in fds:
        os.close(fd)


def test_start_raises_the_fd_soft_limit_to_the_hard_limit_and_reports_it(broker_factory):
    from pathlib import Path

    broker = broker_factory(prefix=("prlimit", "--nofile=256:4096", "--"))
    assert "fd limit 4096" in broker.log()
    limits = Path(f"/proc/{broker.pid}/limits").read_text()
    assert any(
        line.startswith("Max open files") and line.split()[3:5] == ["4096", "4096"] for line in limits.splitlines()
    )
