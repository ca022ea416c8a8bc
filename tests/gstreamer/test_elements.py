"""bufbrokersink and bufbrokersrc in real gst-launch-1.0 pipelines, against Python peers, all separate processes.

Every process (broker, gst-launch-1.0, the Python producer or consumer)
is started with subprocess; they share only the broker's socket dir.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bufbroker_broker.cli.stream import SEQ_BYTES, pattern_byte
from tests.apt import APT_TIMEOUT
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(2 * APT_TIMEOUT + 300)  # the first test may install GStreamer

WIDTH, HEIGHT = 1280, 720
NV12_SIZE = WIDTH * HEIGHT * 3 // 2
CAPS = f"video/x-raw,format=NV12,width={WIDTH},height={HEIGHT}"


def gst_launch(env: dict[str, str], pipeline: str, *flags: str, **kwargs) -> subprocess.Popen:
    """Start ``gst-launch-1.0 -m PIPELINE`` (-m: bus messages, e.g. the elements' stats, on stdout; -v: caps)."""
    return subprocess.Popen(
        ["gst-launch-1.0", "-m", *flags, *pipeline.split()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, (
        f"{process.args} exited {process.returncode}\nstdout: {out[-3000:]}\nstderr: {err[-3000:]}"
    )
    return out, err


def stats(out: str, element: str) -> dict[str, int]:
    """The {frames, copies} of the ``bufbrokersink-stats``/``bufbrokersrc-stats`` message gst-launch -m printed."""
    match = re.search(rf"{element}-stats, frames=\(guint64\)(\d+), copies=\(guint64\)(\d+)", out)
    assert match, f"no {element}-stats message in:\n{out[-2000:]}"
    return {"frames": int(match.group(1)), "copies": int(match.group(2))}


def python_client(broker, module: str, *args: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", f"tests.gstreamer.{module}", str(broker.socket_dir), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    broker.clients.append(process)
    return process


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def recorded_frames(lines: list[dict]) -> list[dict]:
    """The per-frame lines of recording_consumer (not its subscribed/end lines)."""
    return [line for line in lines if "seq" in line]


def first_line(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    assert line, f"{process.args} exited {process.wait()} first: {process.stderr.read()[-2000:]}"
    return json.loads(line)


def reference_frames(env: dict[str, str], tmp_path: Path, source: str, caps: str, frames: int) -> bytes:
    """What ``source ! caps`` produces, written by filesink in a pipeline of its own."""
    out = tmp_path / "reference.raw"
    finish(gst_launch(env, f"{source} num-buffers={frames} ! {caps} ! filesink location={out}"))
    return out.read_bytes()


def numbered_frame_ok(data: bytes | memoryview, seq: int) -> bool:
    expected = bytes([pattern_byte(seq)]) * (len(data) - SEQ_BYTES)
    return int.from_bytes(data[:SEQ_BYTES], "little") == seq and data[SEQ_BYTES:] == expected


# --- the elements load and describe themselves ---------------------------------------------


@pytest.mark.parametrize("element", ["bufbrokersink", "bufbrokersrc"])
def test_gst_inspect_lists_every_property_with_its_description(gst_env, element):
    result = subprocess.run(["gst-inspect-1.0", element], env=gst_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    own = {
        "bufbrokersink": ["socket-dir", "stream", "slots", "offers", "labels", "stall-timeout", "wait-consumers"],
        "bufbrokersrc": ["socket-dir", "stream", "accept", "mode", "wait", "max-held"],
    }[element]
    for name in [*own, "frames", "copies"]:
        match = re.search(rf"^  {re.escape(name)}\s+: (.+)$", result.stdout, re.MULTILINE)
        assert match and len(match.group(1)) > 10, f"{element} property {name} has no description:\n{result.stdout}"
    assert "NV12" in result.stdout and "I420" in result.stdout


# --- (a) GStreamer produces, Python consumes -------------------------------------------------


def test_sink_publishes_every_videotestsrc_frame_a_python_consumer_reads_pixel_exact(broker, gst_env, tmp_path):
    frames = 30
    source = "videotestsrc pattern=ball"  # a moving ball: every frame differs
    expected = reference_frames(gst_env, tmp_path, source, CAPS, frames)
    recorded = tmp_path / "recorded.raw"
    consumer = python_client(broker, "recording_consumer", "cam0", str(recorded))  # waits for the stream
    sink = gst_launch(
        gst_env,
        f"{source} num-buffers={frames} ! {CAPS} ! bufbrokersink stream=cam0 socket-dir={broker.socket_dir} "
        "wait-consumers=1 sync=false",
    )
    out, _ = finish(sink)
    lines = json_lines(finish(consumer)[0])
    assert lines[-1]["end"] == "eos" and lines[-1]["frames"] == frames
    got = recorded_frames(lines)
    assert [line["seq"] for line in got] == list(range(1, frames + 1))
    assert got[0]["layout"]["fourcc"] == "NV12" and got[0]["map_type"] == "memfd"
    metas = [json.loads(line["meta"]) for line in got]
    assert [meta["pts"] for meta in metas] == [n * 10**9 // 30 for n in range(frames)]  # videotestsrc: 30/1
    assert metas[0]["framerate"] == [30, 1] and metas[0]["duration"] > 0
    data = recorded.read_bytes()
    assert len(data) == len(expected) == frames * NV12_SIZE
    bad = [
        n + 1
        for n in range(frames)
        if data[n * NV12_SIZE : (n + 1) * NV12_SIZE] != expected[n * NV12_SIZE : (n + 1) * NV12_SIZE]
    ]
    assert not bad, f"frames {bad} differ from what videotestsrc made"
    assert stats(out, "bufbrokersink") == {"frames": frames, "copies": frames}  # one copy per frame


# --- (b) Python produces, GStreamer consumes ------------------------------------------------


def test_src_delivers_every_numbered_frame_in_order_without_copying(broker, gst_env, tmp_path):
    frames = 60
    producer = python_client(broker, "numbered_producer", "cam1", str(frames))
    assert first_line(producer)["size"] == NV12_SIZE
    out_file = tmp_path / "out.raw"
    src = gst_launch(
        gst_env,
        f"bufbrokersrc stream=cam1 socket-dir={broker.socket_dir} ! {CAPS},framerate=30/1 ! "
        f"filesink location={out_file} enable-last-sample=false",
    )
    out, _ = finish(src)
    finish(producer)
    data = out_file.read_bytes()
    assert len(data) == frames * NV12_SIZE, f"{len(data) / NV12_SIZE} frames written, {frames} published"
    bad = [
        seq for seq in range(1, frames + 1) if not numbered_frame_ok(data[(seq - 1) * NV12_SIZE : seq * NV12_SIZE], seq)
    ]
    assert not bad, f"frames {bad} are not what the producer wrote there (order or content)"
    assert stats(out, "bufbrokersrc") == {"frames": frames, "copies": 0}


# --- (c) caps changes mid-stream --------------------------------------------------------------


def test_src_follows_a_resolution_change_with_new_caps(broker, gst_env, tmp_path):
    frames, switch_at = 20, 11
    producer = python_client(broker, "numbered_producer", "cam2", str(frames), "--switch-at", str(switch_at))
    first_line(producer)
    out_file = tmp_path / "out.raw"
    src = gst_launch(
        gst_env,
        f"bufbrokersrc stream=cam2 socket-dir={broker.socket_dir} ! filesink location={out_file} enable-last-sample=false",
        "-v",
    )
    out, _ = finish(src)
    finish(producer)
    small = 640 * 360 * 3 // 2
    sizes = [NV12_SIZE] * (switch_at - 1) + [small] * (frames - switch_at + 1)
    data = out_file.read_bytes()
    assert len(data) == sum(sizes)
    offset = 0
    for seq, size in enumerate(sizes, start=1):
        assert numbered_frame_ok(data[offset : offset + size], seq), f"frame {seq} ({size} bytes) is wrong"
        offset += size
    assert "width=(int)640, height=(int)360" in out, "gst-launch -m shows no caps of the new size"


def test_sink_moves_the_stream_when_caps_change_and_the_consumer_follows(broker, gst_env, tmp_path):
    small, big = "video/x-raw,format=NV12,width=640,height=360", CAPS
    each = 8
    recorded = tmp_path / "recorded.raw"
    consumer = python_client(broker, "recording_consumer", "cam3", str(recorded))
    # concat plays one source after the other: the sink sees new caps in the middle of the stream.
    sink = gst_launch(
        gst_env,
        f"concat name=c ! bufbrokersink stream=cam3 socket-dir={broker.socket_dir} wait-consumers=1 sync=false "
        f"videotestsrc num-buffers={each} pattern=snow ! {small} ! c. "
        f"videotestsrc num-buffers={each} pattern=ball ! {big} ! c.",
    )
    out, _ = finish(sink)
    lines = json_lines(finish(consumer)[0])
    assert lines[-1] == {**lines[-1], "end": "eos", "frames": 2 * each}
    sizes = [(line["layout"]["width"], line["layout"]["height"]) for line in recorded_frames(lines)]
    assert sizes == [(640, 360)] * each + [(WIDTH, HEIGHT)] * each
    expected_big = reference_frames(gst_env, tmp_path, "videotestsrc pattern=ball", big, each)
    data = recorded.read_bytes()
    assert data[each * 640 * 360 * 3 // 2 :] == expected_big, "the frames after the move are not videotestsrc's"
    assert stats(out, "bufbrokersink")["frames"] == 2 * each


# --- (d) kill -9 of either side -----------------------------------------------------------------


def test_kill_9_of_the_gstreamer_producer_ends_the_python_consumers_stream(broker, gst_env, tmp_path):
    consumer = python_client(broker, "recording_consumer", "cam4", str(tmp_path / "r.raw"), "--quiet")
    sink = gst_launch(
        gst_env,
        f"videotestsrc is-live=true ! {CAPS},framerate=30/1 ! bufbrokersink stream=cam4 socket-dir={broker.socket_dir}",
    )
    assert first_line(consumer) == {"subscribed": True}
    time.sleep(2.0)
    assert sink.poll() is None, sink.communicate()
    os.kill(sink.pid, signal.SIGKILL)
    sink.communicate()
    out, err = consumer.communicate(timeout=30)
    end = json_lines(out)[-1]
    assert end["end"] == "eos" and end["frames"] > 10, (out, err)
    assert broker.wait_for_fds(broker.baseline_fds, timeout=10) == broker.baseline_fds


def test_kill_9_of_the_gstreamer_consumer_frees_its_slots_for_the_python_producer(broker, gst_env, tmp_path):
    producer = python_client(broker, "numbered_producer", "cam5", "1000000", "--slots", "3", "--stop-when-alone")
    first_line(producer)
    src = gst_launch(gst_env, f"bufbrokersrc stream=cam5 socket-dir={broker.socket_dir} ! fakesink sync=false")
    time.sleep(2.0)
    assert src.poll() is None, src.communicate()
    os.kill(src.pid, signal.SIGKILL)
    src.communicate()
    # Its slots came back at once (the link closed): the producer, seeing no consumer left, ends cleanly.
    out, err = producer.communicate(timeout=60)
    assert producer.returncode == 0, err
    assert json_lines(out)[-1]["published"] > 10
    assert broker.wait_for_fds(broker.baseline_fds, timeout=10) == broker.baseline_fds


def test_src_reports_a_missing_stream_as_a_clear_error(broker, gst_env):
    src = gst_launch(gst_env, f"bufbrokersrc stream=nobody socket-dir={broker.socket_dir} wait=0.5 ! fakesink")
    out, err = src.communicate(timeout=60)
    assert src.returncode != 0
    assert "no stream 'nobody'" in out + err and "bufbroker ls" in out + err
