"""`bufbroker stream test-source` and `bufbroker stream watch`: two unrelated commands meet by stream name."""

from __future__ import annotations

import json
import subprocess
import sys
import time

CLI = [sys.executable, "-m", "bufbroker_broker", "stream"]


def _watch(broker, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "watch", "cam0", "--socket-dir", str(broker.socket_dir), "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reports(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_watch_checks_every_frame_of_test_source(broker):
    watch = _watch(broker, "--mode", "queue", "--check", "--frames", "50", "--interval", "0.2", "--wait", "20")
    source = subprocess.run(
        [
            *(*CLI, "test-source", "cam0", "--socket-dir", str(broker.socket_dir), "--size", "64x48"),
            *("--fps", "200", "--frames", "50", "--wait-consumers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert source.returncode == 0, source.stderr
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    final = _reports(out)[-1]
    assert final["total"] == 50 and final["missed_total"] == 0 and final["last_seq"] == 50, final
    assert final["map_type"] == "memfd"
    assert any(r["fps"] > 0 and r["latency_p50_us"] for r in _reports(out)), out


def test_watch_check_fails_on_a_frame_without_the_pattern(broker):
    watch = _watch(broker, "--mode", "queue", "--check", "--frames", "3", "--wait", "20")
    with broker.connect() as session:
        stream = session.create_stream("cam0", slots=2, size=64)
        deadline = time.monotonic() + 20
        while not stream.consumers():
            assert time.monotonic() < deadline and watch.poll() is None, "watch did not subscribe"
            time.sleep(0.005)
        for _ in range(3):
            with stream.acquire(timeout=5) as frame:
                frame.memoryview()[:] = b"\xee" * 64  # no seq, no pattern
                frame.publish()
        stream.drain(timeout=10)
        out, err = watch.communicate(timeout=60)
        stream.close()
    assert watch.returncode == 1, out + err
    assert "does not hold its pattern" in err


def test_watch_says_how_long_it_waited_for_a_stream_that_never_came(broker):
    watch = _watch(broker, "--wait", "0.3")
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 1
    assert "cam0" in err and "0.3" in err, err


def test_test_source_refuses_a_bad_size():
    run = subprocess.run([*CLI, "test-source", "cam0", "--size", "big"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "give WxH in pixels" in run.stderr


def test_watch_without_a_broker_says_so_in_one_line_not_a_traceback(tmp_path):
    run = subprocess.run(
        [*CLI, "watch", "cam0", "--socket-dir", str(tmp_path / "nobody")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("bufbroker stream watch: ") and "Traceback" not in run.stderr, run.stderr


def test_watch_names_a_bad_format_pair_in_its_accept_list(broker):
    watch = _watch(broker, "--accept", "memfd/NV13")
    _, err = watch.communicate(timeout=30)
    assert watch.returncode == 1 and "unknown pixel format 'NV13'" in err and "Traceback" not in err, err


def test_test_source_allow_decides_who_may_subscribe(broker):
    def source(*allow: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                *(*CLI, "test-source", "cam0", "--socket-dir", str(broker.socket_dir)),
                *("--size", "16x16", "--fps", "20", "--frames", "60", *allow),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for_stream() -> None:
        deadline = time.monotonic() + 20
        while (
            "cam0"
            not in subprocess.run(
                [*CLI[:-1], "ls", "--socket-dir", str(broker.socket_dir)], capture_output=True, text=True, timeout=30
            ).stdout
        ):
            assert time.monotonic() < deadline, "test-source never created its stream"
            time.sleep(0.1)

    others_only = source("--allow", "uid:54321")
    wait_for_stream()
    refused = _watch(broker, "--wait", "0.5", "--frames", "1")
    _, err = refused.communicate(timeout=30)
    assert refused.returncode == 1, err
    assert "does not allow uid:0 gid:0: its exporter allows [uid:54321]; ask it to add you to allow=" in err, err
    others_only.kill()
    others_only.communicate()

    anyone = source("--allow", "any")
    watch = _watch(broker, "--check", "--frames", "5", "--wait", "20")
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    assert _reports(out)[-1]["total"] == 5
    anyone.kill()
    anyone.communicate()
