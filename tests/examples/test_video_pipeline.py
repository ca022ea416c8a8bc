"""The video pipeline example: real PyAV codecs, three real processes, a real broker.

A short run (small frames, the resolution switching halfway) must carry
every frame once, in order, through the pool; the decoder moves its
buffers to the new layout and the consumers follow; nothing is left
behind in the broker.
"""

from __future__ import annotations

import subprocess
import sys

import av  # noqa: F401  (the test extra installs PyAV; without it this should fail, not skip)

from bufbroker.v1 import broker_pb2 as pb
from examples.video_pipeline.checks import LUMA_TOLERANCE, bufbroker_problems
from examples.video_pipeline.decoder import POOL, choose_offers
from examples.video_pipeline.run import run_bufbroker
from examples.video_pipeline.source import write_source
from tests.conftest import REPO_ROOT

FRAMES = 32
FIRST, SECOND = (320, 180), (480, 270)  # 270: not a multiple of 4, so the encoder's copy path runs too


def test_pipeline_carries_every_frame_once_in_order_across_a_resolution_change(broker, tmp_path):
    source = write_source(tmp_path / "source.h264", FRAMES, FIRST, SECOND)
    result = run_bufbroker(broker.socket_dir, tmp_path / "source.h264", tmp_path / "out.h264")

    stats = result["analyser"]["stats"]
    assert [s["seq"] for s in stats] == list(range(FRAMES))
    # The statistic read from the pixels: the frame number in the barcode, and the mean luma.
    assert [s["number"] for s in stats] == list(range(FRAMES))
    for seen, made in zip(stats, source):
        assert abs(seen["mean_luma"] - made.mean_luma) <= LUMA_TOLERANCE, (seen, made)
    assert [s["size"] for s in stats] == [FIRST] * (FRAMES // 2) + [SECOND] * (FRAMES // 2)

    # The resolution change: each slot moved once, with the new layout, after the switch.
    moves = result["decoder"]["moves"]
    assert sorted(m["slot"] for m in moves) == list(range(POOL))
    assert all(m["frame"] >= FRAMES // 2 and m["size"] == SECOND and m["generation"] == 2 for m in moves)
    assert all(m["non_compliant"] == [] for m in moves)
    for consumer in ("analyser", "encoder"):
        assert result["attached"][consumer]["map_type"] == "segments"
        assert result[consumer]["maps"] == 2 * POOL  # the first map and one re-map per slot
        assert result[consumer]["mapped_regions"] == POOL  # the old backing was let go

    # The encoder saw the frames in order and wrote all of them.
    assert result["encoder"]["problems"] == []
    assert result["encoder"]["frames"] == FRAMES
    assert [o["number"] for o in result["encoder"]["output"]] == list(range(FRAMES))
    assert [o["size"] for o in result["encoder"]["output"]] == [FIRST] * (FRAMES // 2) + [SECOND] * (FRAMES // 2)

    # Only ids crossed: a few hundred bytes of hand-off messages, no pixels.
    assert result["decoder"]["handoff_messages"] == FRAMES + 1
    assert bufbroker_problems(result, source) == []

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
    assert "analyser accepts segments, memfd (read-only) -> negotiated segments" in report
    assert "encoder accepts segments, memfd (read-only) -> negotiated segments" in report
    assert "frames per second, end to end" in report and "bufbroker vs pipes:" in report
    assert "every check passed" in report
