"""`bufbroker ls` and `bufbroker top` show streams: a real broker, a real producer and consumers (unrelated processes).

One consumer keeps up (fps > 0); the other (latest mode) holds its first
frame past the stream's short stall timeout with on_stall="report", so its
producer reports it stalled and keeps publishing to the first. Sessions
name themselves (the test clients connect as test-producer and
test-consumer) and both views show the names beside the pids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from bufbroker_broker.server.http.models import Stream, StreamConsumer, StreamCounters
from tests.integration.test_streams import consumer, finish, producer


def _cli(broker, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", *args, "--socket-dir", str(broker.socket_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out


def _flowing_and_stalled(broker):
    source = producer(broker, "cam0", "--slots", "3", "--stall-timeout", "0.3", "--on-stall", "report")
    flowing = consumer(broker, "cam0")
    stuck = consumer(broker, "cam0", "--mode", "latest", "--hold-after", "1")
    source.send("wait-consumers 2")
    source.expect("consumers")
    source.send("publish 1000 0.02")  # 50 fps for as long as the test looks (it kills the producer)
    stuck.expect("holding", seq=1)
    time.sleep(0.8)  # past the stall timeout, and the producer's next report
    return source, flowing, stuck


def _end(source, flowing, stuck) -> None:
    stuck.kill()
    source.kill()
    assert "ended" in finish(flowing)["reason"]


def test_ls_shows_streams_with_named_producer_and_consumers_fps_and_the_stalled_one(broker):
    source, flowing, stuck = _flowing_and_stalled(broker)
    producer_pid, flowing_pid, stuck_pid = source.process.pid, flowing.process.pid, stuck.process.pid

    document = json.loads(_cli(broker, "ls", "--json").stdout)
    assert len(document["buffers"]) == 3
    assert {b["exporter_name"] for b in document["buffers"]} == {"test-producer"}
    (stream,) = document["streams"]
    assert set(stream) == set(Stream.model_fields)
    assert stream["name"] == "cam0" and stream["producer_pid"] == producer_pid
    assert stream["producer_name"] == "test-producer" and stream["on_stall"] == "report"
    assert stream["slot_buffer_ids"] == [b["id"] for b in document["buffers"]]
    assert stream["producer"]["fps"] > 10
    consumers = {c["pid"]: c for c in stream["consumers"]}
    assert set(consumers) == {flowing_pid, stuck_pid}
    assert all(set(c) == set(StreamConsumer.model_fields) for c in consumers.values())
    assert all(set(c["counters"]) == set(StreamCounters.model_fields) for c in consumers.values())
    ok, stalled = consumers[flowing_pid], consumers[stuck_pid]
    assert (ok["name"], ok["mode"], ok["stalled"]) == ("test-consumer", "queue", False)
    assert ok["counters"]["fps"] > 10, ok  # measured by ls between two producer reports
    assert (stalled["mode"], stalled["stalled"]) == ("latest", True)
    assert stalled["counters"]["held_now"] == 1 and stalled["counters"]["longest_hold"] > 0.3
    assert stalled["counters"]["fps"] == 0 and stalled["counters"]["dropped_busy"] > 0
    assert stalled["counters"]["lag"] > 0

    table = _cli(broker, "ls").stdout
    assert f"{producer_pid} (test-producer)" in table  # the buffers' exporter and the stream's producer
    (stream_line,) = [line for line in table.splitlines() if line.startswith("cam0 ")]
    assert f"{producer_pid} (test-producer)" in stream_line and "report after 0.3 s" in stream_line
    (ok_line,) = [line for line in table.splitlines() if f"{flowing_pid} (test-consumer)" in line]
    (stuck_line,) = [line for line in table.splitlines() if f"{stuck_pid} (test-consumer)" in line]
    assert ok_line.split()[3] == "queue" and float(ok_line.split()[4]) > 10 and ok_line.endswith(" no")
    assert stuck_line.split()[3] == "latest" and stuck_line.endswith(" STALLED")
    assert " 1/1 " in stuck_line

    # The filters apply to streams too.
    assert json.loads(_cli(broker, "ls", "--json", "--name", "other").stdout) == {"buffers": [], "streams": []}
    _end(source, flowing, stuck)
    assert json.loads(_cli(broker, "ls", "--json").stdout)["streams"] == []


def test_top_shows_per_consumer_fps_lag_held_drops_and_the_stalled_consumer_in_red(broker):
    source, flowing, stuck = _flowing_and_stalled(broker)
    flowing_pid, stuck_pid = flowing.process.pid, stuck.process.pid

    (line,) = _cli(broker, "top", "--once", "--json", "--interval", "0.7").stdout.splitlines()
    snap = json.loads(line)
    names = {s["pid"]: s["name"] for s in snap["sessions"]}
    assert names[source.process.pid] == "test-producer" and names[stuck_pid] == "test-consumer"
    assert {i["name"] for b in snap["buffers"] for i in b["importers"]} == {"test-consumer"}
    (stream,) = snap["streams"]
    consumers = {c["pid"]: c for c in stream["consumers"]}
    assert stream["producer"]["fps"] > 10
    assert consumers[flowing_pid]["counters"]["fps"] > 10 and not consumers[flowing_pid]["stalled"]
    stalled = consumers[stuck_pid]
    assert stalled["stalled"] and stalled["counters"]["held_now"] == 1 and stalled["counters"]["dropped_busy"] > 0

    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "200"}
    text = _cli(broker, "top", "--once", "--interval", "0.7", env=env).stdout
    assert "streams" in text and "test-producer" in text
    (ok_row,) = [row for row in text.splitlines() if f"{flowing_pid} (test-consumer)" in row]
    (stuck_row,) = [row for row in text.splitlines() if f"{stuck_pid} (test-consumer)" in row]
    assert "\x1b[1;31mSTALLED" in stuck_row and "STALLED" not in ok_row  # red and marked
    plain = [cell.strip() for cell in _strip_ansi(ok_row).split("│")]
    assert plain[4] == "queue" and float(plain[5]) > 10 and plain[9] == "no"
    _end(source, flowing, stuck)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
