"""Formats in negotiation end to end: (format, modifier) pairs between real processes, real fds.

The exporter and importer are separate processes (tests/clients) that
share only the broker's socket dir; `bufbroker explain` is a third. The
stream tests run a producer and consumers as unrelated processes that
write and check every frame plane by plane in the format it shows
(tests/clients/format_pattern.py). The broker's fds return to their
baseline at teardown (the broker fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import bufbroker
from bufbroker.backing import make_memfd
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mpb
from tests.conftest import REPO_ROOT
from tests.integration.test_streams import Client, finish, producer

OFFERS = "segments/NV12:I915_Y_TILED,memfd/NV12+XRGB8888"


def consumer(broker, name: str, *args: str) -> Client:
    """A stream consumer process; the test waits for its "subscribed" (or "refused") line itself."""
    return Client(broker.spawn("stream_consumer", name, *args))


def test_pairs_are_negotiated_exporter_first_between_processes_with_real_fds(broker):
    exporter, info = broker.exporter("--name", "paired", "--offers", OFFERS, "--fill", "pixels")
    got = broker.run("importer", "paired", "--accept", "segments/NV12,memfd/XRGB8888+NV12")
    assert got["map_type"] == "memfd" and got["format"] == "NV12:LINEAR", got  # the exporter's pair order wins
    assert got["head"].startswith("pixelspixels") and got["length"] == 4096
    steps = [(s["offer_type"], s["match_type"], s["verdict"], s["format"]) for s in got["trace"]]
    assert steps == [
        ("segments", "segments", "soft-mismatch", ""),
        ("segments", "memfd", "type-differs", ""),
        ("memfd", "segments", "type-differs", ""),
        ("memfd", "memfd", "matched", "NV12:LINEAR"),
    ]
    assert got["trace"][0]["reason"] == (
        "formats: the exporter offers [NV12:I915_Y_TILED], the importer accepts [NV12:LINEAR]: "
        "no (format, modifier) pair in common"
    )
    refused = broker.run("importer", "paired", "--accept", "memfd/RGB565")
    assert refused["error"] == "NoCommonMappingType", refused
    assert (
        "formats: the exporter offers [NV12:LINEAR, XRGB8888:LINEAR], the importer accepts [RGB565:LINEAR]"
        in (refused["message"])
    )
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_explain_shows_each_pair_verdict_and_the_chosen_pair(broker):
    exporter, _ = broker.exporter("--name", "explained", "--offers", OFFERS)

    def explain(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "bufbroker_broker", "explain", "--socket-dir", str(broker.socket_dir)]
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)

    text = explain("explained", "--accept", "segments/NV12,memfd/XRGB8888")
    assert text.returncode == 0, text.stderr
    assert "offer 1: memfd/NV12:LINEAR+XRGB8888:LINEAR" in text.stdout
    assert "* matched XRGB8888:LINEAR" in text.stdout
    assert "formats: the exporter offers [NV12:I915_Y_TILED], the importer accepts [NV12:LINEAR]" in text.stdout
    as_json = json.loads(explain("explained", "--accept", "segments/NV12,memfd/XRGB8888", "--json").stdout)
    cells = as_json["matrix"]["cells"]
    assert cells[0][0]["verdict"] == "soft-mismatch" and cells[1][1] == {
        "verdict": "matched",
        "reason": "",
        "converter": "",
        "format": "XRGB8888:LINEAR",
    }
    bad = explain("explained", "--accept", "memfd/NV13")
    assert bad.returncode == 2 and "unknown pixel format 'NV13'" in bad.stderr
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_a_malformed_pair_list_on_the_wire_is_invalid_argument_and_changes_nothing(broker):
    with broker.connect() as exporting, broker.connect() as importing:
        buffer = exporting.export(4096, offers=["memfd"])
        request = pb.AttachRequest(
            buffer_id=buffer.id,
            accept=[mpb.Match(memfd=mpb.MemfdMatch(), formats=[mpb.FormatPair(format="NV12")] * 2)],
            access=mpb.ACCESS_READ,
        )
        with pytest.raises(bufbroker.InvalidArgument, match=r"match 0 formats\[1\] repeats NV12:LINEAR"):
            importing.call("Attach", request)
        assert importing.attach(buffer.id, accept=["memfd"]).map_type == "memfd"


def test_a_layout_that_breaks_its_format_s_rules_is_refused_naming_the_plane(broker):
    with broker.connect() as exporting:
        short_stride = {"fourcc": "NV12", "width": 64, "height": 32, "planes": [{"offset": 0, "stride": 32}] * 2}
        with pytest.raises(
            bufbroker.InvalidArgument,
            match=r"layout: NV12 64x32: plane 0 \(Y\): stride too small: 32 is shorter than a row",
        ):
            exporting.export(4096, layout=short_stride)
        overlapping = {
            "fourcc": "NV12",
            "width": 64,
            "height": 32,
            "planes": [{"offset": 0, "stride": 64}, {"offset": 1024, "stride": 64}],
        }
        with pytest.raises(bufbroker.InvalidArgument, match=r"plane 1 \(UV\)"):
            exporting.export(4096, layout=overlapping)
        # However many fds the planes live in, a layout lists at most 4 planes (checked before anything else).
        many = {"fourcc": "NV12", "width": 64, "height": 32, "planes": [{"offset": 0, "stride": 64}] * 5000}
        planes = [make_memfd("y", 4096), make_memfd("uv", 4096)]
        try:
            with pytest.raises(bufbroker.InvalidArgument, match=r"layout: 5000 planes; a frame has at most 4"):
                exporting.export(fd=planes, offers=["segments"], layout=many)
        finally:
            for fd in planes:
                os.close(fd)
        good = exporting.export(4096, layout=bufbroker.formats.derive_layout("NV12", 64, 32).to_dict())
        assert good.info.layout.planes[1].offset == 2048


def test_a_consumer_needing_another_format_renegotiates_the_stream_and_both_read_the_new_format(broker):
    source = producer(
        broker,
        "cam",
        "--slots",
        "3",
        "--layout",
        "64x48",
        "--format",
        "NV12",
        "--formats",
        "NV12,XRGB8888",
        "--renegotiate",
    )
    both = consumer(broker, "cam", "--accept", "memfd/NV12+XRGB8888", "--planes", "--frames", "40")
    both.expect("subscribed")
    source.send("wait-consumers 1")
    source.expect("consumers", count=1)
    source.send("publish 20")
    source.expect("done", timeout=30)
    assert both.expect("frame", seq=20)
    rgb = consumer(broker, "cam", "--accept", "memfd/XRGB8888", "--planes", "--frames", "20")
    rgb.expect("subscribed", timeout=20)  # subscribed once the producer moved the slots to XRGB8888
    source.send("wait-consumers 2")  # its link reaches the producer on the producer's event stream
    source.expect("consumers", count=2)
    source.send("publish 20")
    source.expect("done", timeout=30)
    first, second = finish(both, timeout=30), finish(rgb, timeout=30)
    assert first["torn"] == [] and second["torn"] == [], (first["torn"][:3], second["torn"][:3])
    assert first["seqs"] == list(range(1, 41)) and second["seqs"] == list(range(21, 41))
    assert first["formats"] == ["NV12"] * 20 + ["XRGB8888"] * 20
    assert second["formats"] == ["XRGB8888"] * 20
    assert first["generations"][19] + 1 == first["generations"][20] == second["generations"][0]

    # Nobody can produce RGB565: refused with the trace and why no renegotiation helps.
    none = consumer(broker, "cam", "--accept", "memfd/RGB565")
    refused = none.expect("refused")
    assert refused["error"] == "NoCommonMappingType"
    assert (
        "cannot renegotiate: of the formats its producer can produce [NV12:LINEAR, XRGB8888:LINEAR]"
        in (refused["message"])
    )
    assert refused["trace"][0]["reason"].startswith("formats: the exporter offers [XRGB8888:LINEAR]")
    # A pair it could produce, but for a mapping type the slots do not offer: moving would not help.
    other_type = consumer(broker, "cam", "--accept", "segments/NV12").expect("refused")
    assert "the accept list names none of the slots' mapping types" in other_type["message"]
    source.send("close")
    source.expect("closed")


def test_a_stream_without_renegotiate_keeps_its_format_and_says_so(broker):
    source = producer(broker, "fixed", "--slots", "2", "--layout", "32x16", "--format", "NV12")
    refused = consumer(broker, "fixed", "--accept", "memfd/XRGB8888").expect("refused")
    assert "stream 'fixed' was created without renegotiate, so its format stays" in refused["message"]
    fine = consumer(broker, "fixed", "--accept", "memfd/NV12", "--planes", "--frames", "5")
    fine.expect("subscribed")
    source.send("wait-consumers 1")
    source.expect("consumers", count=1)
    source.send("publish 5")
    end = finish(fine)
    assert end["torn"] == [] and end["formats"] == ["NV12"] * 5
    source.send("close")
    source.expect("closed")


def test_a_stream_renegotiates_at_most_once_every_few_seconds(broker):
    source = producer(
        broker,
        "flip",
        "--slots",
        "2",
        "--layout",
        "32x16",
        "--format",
        "NV12",
        "--formats",
        "NV12,XRGB8888",
        "--renegotiate",
    )
    rgb = consumer(broker, "flip", "--accept", "memfd/XRGB8888", "--planes", "--frames", "1")
    rgb.expect("subscribed", timeout=20)  # moved the stream to XRGB8888
    source.send("wait-consumers 1")
    source.expect("consumers", count=1)
    source.send("publish 1")
    assert finish(rgb)["formats"] == ["XRGB8888"]
    # Back to NV12 at once: refused (a consumer cannot flip everyone's stream back and forth).
    refused = consumer(broker, "flip", "--accept", "memfd/NV12").expect("refused")
    assert refused["error"] == "FailedPrecondition"
    assert "changed its format" in refused["message"]
    assert "at most once every 5 s (setting stream_renegotiate_interval)" in refused["message"]
    source.send("close")
    source.expect("closed")
