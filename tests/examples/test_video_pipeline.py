"""The video pipeline example: real PyAV codecs, three real processes, a real broker.

The decoder, the analyser and the encoder are separate commands (started
with subprocess, sharing only the broker's socket dir) that find each
other by stream name. A short run (small frames, the resolution switching
halfway) must carry every frame once, in order, through the streams; the
decoder moves its stream to the new layout and the consumers follow;
nothing is left behind in the broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import av  # noqa: F401  (the test extra installs PyAV; without it this should fail, not skip)
import pytest

from bufbroker.v1 import broker_pb2 as pb
from examples.video_pipeline.checks import LUMA_TOLERANCE, bufbroker_problems
from examples.video_pipeline.decoder import POOL, choose_offers
from examples.video_pipeline.run import STAGE_ORDER, run_bufbroker
from examples.video_pipeline.source import write_source
from tests.conftest import REPO_ROOT

FRAMES = 32
FIRST, SECOND = (320, 180), (480, 270)  # 270: not a multiple of 4, so the encoder's copy path runs too
SIZES = [FIRST] * (FRAMES // 2) + [SECOND] * (FRAMES // 2)


def test_pipeline_carries_every_frame_once_in_order_across_a_resolution_change(broker, tmp_path):
    source = write_source(tmp_path / "source.h264", FRAMES, FIRST, SECOND)
    result = run_bufbroker(broker.socket_dir, tmp_path / "source.h264", tmp_path / "out.h264", timeout=120)

    # Three unrelated processes, none of them this one.
    assert len(set(result["pids"].values())) == 3

    stats = result["analyser"]["stats"]
    assert [s["seq"] for s in stats] == list(range(FRAMES))
    assert [s["stream_seq"] for s in stats] == list(range(1, FRAMES + 1))  # one stream, every frame once
    # The statistic read from the pixels: the frame number in the barcode, and the mean luma.
    assert [s["number"] for s in stats] == list(range(FRAMES))
    for seen, made in zip(stats, source):
        assert abs(seen["mean_luma"] - made.mean_luma) <= LUMA_TOLERANCE, (seen, made)
    assert [tuple(s["size"]) for s in stats] == SIZES
    # Each frame carries the generation it was written at: 1, then 2 after the move.
    assert [s["generation"] for s in stats] == [1] * (FRAMES // 2) + [2] * (FRAMES // 2)

    # The resolution change: one stream.move() to the new layout, before the first frame of the new size.
    moves = result["decoder"]["moves"]
    assert [(m["frame"], tuple(m["size"]), m["generation"]) for m in moves] == [(FRAMES // 2, SECOND, 2)]
    # The format was negotiated, not assumed: PyAV decodes to yuv420p, so the decoder's slots offer
    # YUV420:LINEAR (and it says it can convert to NV12); both consumers accept YUV420 and NV12 and got
    # the decoder's first choice on every slot, and said so.
    assert result["ready"]["decodes_to"] == "yuv420p"
    assert result["ready"]["format"] == "YUV420:LINEAR" and result["decoder"]["negotiated"] == "YUV420"
    assert result["ready"]["can_produce"] == ["YUV420:LINEAR", "NV12:LINEAR"]
    assert result["ready"]["layout"]["fourcc"] == "YUV420"
    for consumer in ("analyser", "encoder"):
        attached = result["attached"][consumer]
        assert attached["accepts"] == ["YUV420:LINEAR", "NV12:LINEAR"]
        assert attached["format"] == "YUV420:LINEAR" and attached["formats"] == ["YUV420:LINEAR"] * POOL
        assert attached["trace"][-1]["verdict"] == "matched" and attached["trace"][-1]["format"] == "YUV420:LINEAR"
    assert [s["format"] for s in stats] == ["YUV420"] * FRAMES
    # Zero copy where PyAV can wrap the slot: 180 rows wrap, 270 (not a multiple of 4) is copied.
    assert result["encoder"]["wrapped"] == FRAMES // 2
    assert list(result["encoder"]["copied"].values()) == [FRAMES // 2]
    for consumer in ("analyser", "encoder"):
        assert result["attached"][consumer]["map_type"] == "segments"
        assert result[consumer]["maps"] == 2 * POOL  # the first map and one re-map per slot
        assert result[consumer]["mapped_regions"] == POOL  # the old backing was let go
        assert result[consumer]["skipped"] == 0

    # The encoder saw the frames in order, each after the analyser, and wrote all of them.
    assert result["encoder"]["problems"] == []
    assert result["encoder"]["frames"] == FRAMES
    assert [o["number"] for o in result["encoder"]["output"]] == list(range(FRAMES))
    assert [tuple(o["size"]) for o in result["encoder"]["output"]] == SIZES

    # Only frame messages crossed, on the links (never through the broker): per frame one datagram to
    # each consumer of 'decoded' and one to the encoder on 'analysed', and a release back for each;
    # plus a hello each way per link (3 links) and a bye per link. No pixels.
    meters = [result[stage]["meter"] for stage in ("decoder", "analyser", "encoder")]
    messages = sum(m["link_messages"] for m in meters)
    assert 6 * FRAMES + 2 * 3 + 3 <= messages <= 6 * FRAMES + 16, messages
    assert sum(m["link_bytes"] for m in meters) < 64 * messages
    assert bufbroker_problems(result, source) == []

    assert broker.wait_for_fds(broker.baseline_fds) == broker.baseline_fds
    assert broker.stats().fds_held == 0


def test_an_encoder_that_takes_only_nv12_renegotiates_the_decoders_stream_and_every_check_passes(broker, tmp_path):
    # The decoder decodes to YUV420 but can convert to NV12; an encoder accepting only NV12 makes the
    # stream move its slots to NV12 when it subscribes. The analyser (YUV420 or NV12) follows.
    source = write_source(tmp_path / "source.h264", 8, FIRST, SECOND)
    result = run_bufbroker(
        broker.socket_dir,
        tmp_path / "source.h264",
        tmp_path / "out.h264",
        timeout=120,
        extra={"encoder": ["--formats", "NV12"]},
    )
    assert bufbroker_problems(result, source) == []
    assert result["ready"]["format"] == "YUV420:LINEAR" and result["decoder"]["negotiated"] == "NV12"
    encoder = result["attached"]["encoder"]
    assert encoder["accepts"] == ["NV12:LINEAR"] and encoder["formats"] == ["NV12:LINEAR"] * POOL
    assert [s["format"] for s in result["analyser"]["stats"]] == ["NV12"] * 8
    assert [m["format"] for m in result["decoder"]["moves"]] == ["NV12"]  # the resolution change kept it
    assert result["encoder"]["wrapped"] == 4  # NV12 wraps too (180 rows); 270 rows copy
    assert broker.wait_for_fds(broker.baseline_fds) == broker.baseline_fds


def test_a_stage_accepting_a_format_the_decoder_cannot_produce_fails_at_subscribe_naming_both_lists(broker, tmp_path):
    # libx264 takes 4:4:4, but this decoder produces YUV420 (or NV12 by converting): no pair in common,
    # and no renegotiation can help, so the encoder's subscribe fails, with the trace's reason.
    write_source(tmp_path / "source.h264", 4, FIRST, SECOND)
    with pytest.raises(RuntimeError) as failed:
        run_bufbroker(
            broker.socket_dir,
            tmp_path / "source.h264",
            tmp_path / "out.h264",
            timeout=60,
            extra={"encoder": ["--formats", "YUV444"]},
        )
    message = str(failed.value)
    assert message.startswith("the encoder exited with status 1: "), message
    assert "video encoder: NoCommonMappingType: " in message
    assert "the exporter offers [YUV420:LINEAR], the importer accepts [YUV444:LINEAR]" in message
    assert "[YUV420:LINEAR, NV12:LINEAR]" in message  # what the decoder could produce
    # The stage prints the broker's trace: the slot offer's pair was refused for each mapping type.
    assert "video encoder: the broker's trace:" in message
    assert "offer 1 segments   x match 0 segments   -> soft-mismatch  (formats: the exporter offers" in message
    assert broker.wait_for_fds(broker.baseline_fds) == broker.baseline_fds
    assert broker.stats().fds_held == 0


def test_a_stage_refuses_a_format_it_cannot_read_before_it_connects(tmp_path):
    from examples.video_pipeline.reader import parse_pairs

    assert parse_pairs("YUV420, NV12:LINEAR", ("YUV420", "NV12")) == ["YUV420:LINEAR", "NV12:LINEAR"]
    with pytest.raises(ValueError, match="the analyser cannot read XRGB8888: it reads YUV420, NV12"):
        parse_pairs("XRGB8888", ("YUV420", "NV12"), "analyser")
    with pytest.raises(ValueError, match="NV12:I915_Y_TILED is not LINEAR"):
        parse_pairs("NV12:I915_Y_TILED", ("NV12",), "encoder")


def test_stages_find_each_other_by_name_whatever_order_they_start_in(broker, tmp_path):
    source = write_source(tmp_path / "source.h264", 8, FIRST, SECOND)
    result = run_bufbroker(
        broker.socket_dir, tmp_path / "source.h264", tmp_path / "out.h264", timeout=120, order=STAGE_ORDER[::-1]
    )
    assert [s["number"] for s in result["analyser"]["stats"]] == list(range(8))
    assert bufbroker_problems(result, source) == []
    assert broker.wait_for_fds(broker.baseline_fds) == broker.baseline_fds


def test_bufbroker_stream_watch_joins_the_pipeline_without_holding_it_up(broker, tmp_path):
    # A third consumer of 'decoded', in latest mode: the decoder waits only for the analyser and the
    # encoder (by session name) and never for the watcher, which gets what it has time for.
    watch = subprocess.Popen(
        [
            *(sys.executable, "-m", "bufbroker_broker", "stream", "watch", "decoded"),
            *("--socket-dir", str(broker.socket_dir), "--mode", "latest", "--json", "--interval", "0.1"),
            *("--wait", "60", "--accept", "segments,memfd"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    broker.clients.append(watch)
    with broker.connect() as session:  # the watcher subscribes right after it connects: wait for that
        deadline = time.monotonic() + 30
        while not any(s.pid == watch.pid for s in session.call("ListSessions", pb.ListSessionsRequest()).sessions):
            assert time.monotonic() < deadline and watch.poll() is None, "the watcher did not connect"
            time.sleep(0.02)
    source = write_source(tmp_path / "source.h264", FRAMES, FIRST, SECOND)
    result = run_bufbroker(broker.socket_dir, tmp_path / "source.h264", tmp_path / "out.h264", timeout=120)
    assert bufbroker_problems(result, source) == []
    out, _ = watch.communicate(timeout=30)
    assert watch.returncode == 0, out
    final = json.loads(out.strip().splitlines()[-1])
    assert final["ended"] and 1 <= final["total"] <= FRAMES and final["last_seq"] <= FRAMES
    assert final["generation"] == 2 and final["map_type"] == "segments"
    assert broker.wait_for_fds(broker.baseline_fds) == broker.baseline_fds


def test_a_failing_stage_fails_the_run_at_once_and_leaves_nothing_behind(broker, tmp_path):
    # No source: the decoder exits 1 before creating its stream; the consumers, waiting for it, are killed.
    with pytest.raises(RuntimeError, match=r"(?s)the decoder exited with status 1: .*No such file"):
        run_bufbroker(broker.socket_dir, tmp_path / "missing.h264", tmp_path / "out.h264", timeout=30)
    assert broker.wait_for_fds(broker.baseline_fds) == broker.baseline_fds
    assert broker.stats().fds_held == 0


def test_decoder_offers_udmabuf_first_only_when_the_broker_registers_it(broker):
    with broker.connect() as session:
        offers, note = choose_offers(session)
        registered = {t.name for t in session.call("ListMappingTypes", pb.ListMappingTypesRequest()).mapping_types}
        if "udmabuf" in registered:
            assert offers == ["udmabuf", "segments", "memfd"] and note.startswith("offered first")
        else:
            assert offers == ["segments", "memfd"] and "registers no udmabuf" in note
        # Whatever it chose, the broker takes it (a page-sized buffer, as udmabuf needs).
        session.export(4096, name="offers-probe", offers=offers).unregister()


def test_example_video_command_prints_the_report_and_exits_0(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", "example", "video", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    report = process.stdout
    assert "48 frames, 320x180 -> 480x270 at frame 24" in report
    assert "separate commands that found each other by stream name" in report
    assert "stream.move() to 480x270 (generation 2) before frame 24" in report
    assert "PyAV decodes to yuv420p, so every slot offer carries YUV420:LINEAR" in report
    for stage in ("analyser", "encoder"):
        assert (
            f"{stage} accepts segments, memfd with YUV420:LINEAR, NV12:LINEAR (read-only) -> negotiated "
            "segments, YUV420:LINEAR"
        ) in report
    assert "frames per second, end to end" in report and "bufbroker vs pipes:" in report
    assert "every check passed" in report
