"""POST /v1/explain and `bufbroker explain`: a dry run equals what a real attach chooses."""

from __future__ import annotations

import subprocess
import sys

import pytest

import bufbroker
from tests.http.conftest import HttpBroker

# (exporter offers, importer accept list, importer access)
CASES = [
    ("segments,memfd", "memfd,segments", "read"),  # exporter order wins: segments
    ("memfd,segments", "segments,memfd", "read"),  # ... even against the importer's order
    ("segments,memfd", "memfd", "read_write"),
    ("memfd", "", "read"),  # a compat importer
    ("segments", "memfd", "read"),  # a converter may serve it
    ("segments", "udmabuf", "read"),  # ... or say why not (no /dev/udmabuf here)
]


def _steps(trace: list[dict]) -> list[tuple]:
    return [
        (s["offer_index"], s["offer_type"], s["match_index"], s["match_type"], s["verdict"], s["reason"]) for s in trace
    ]


@pytest.mark.parametrize("offers, accept, access", CASES)
def test_explain_predicts_what_a_real_attach_then_chooses(http_broker: HttpBroker, offers, accept, access):
    broker = http_broker.broker
    exporter, info = broker.exporter("--name", "target", "--offers", offers)
    response = http_broker.post(
        "/v1/explain", json={"buffer_name": "target", "accept": [a for a in accept.split(",") if a], "access": access}
    )
    assert response.status_code == 200, response.text
    explained = response.json()
    assert http_broker.json("/v1/attachments")["attachments"] == []  # a dry run attaches nothing
    attached = broker.run("importer", "target", "--accept", accept, "--access", access)
    if "error" in attached:
        assert explained["would_attach"] is False and explained["map_type"] is None
        assert explained["error"] == attached["message"]
    else:
        assert explained["would_attach"] is True and explained["error"] is None
        assert explained["map_type"] == attached["map_type"]
    assert _steps(explained["trace"]) == _steps(attached["trace"])
    matrix = explained["matrix"]
    assert matrix["offers"] == offers.split(",")
    assert matrix["matches"] == ([a for a in accept.split(",") if a] or ["memfd"])
    last = {(s["offer_index"], s["match_index"]): s for s in explained["trace"]}  # a converted pair has two steps
    for (offer, match), step in last.items():
        assert matrix["cells"][offer][match] == {
            "verdict": step["verdict"],
            "reason": step["reason"],
            "converter": step["converter"],
            "format": step["format"],
        }
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_explain_against_an_offers_list_needs_no_buffer(http_broker: HttpBroker):
    result = http_broker.post(
        "/v1/explain",
        json={"offers": ["segments:read", "memfd:read_write"], "accept": ["segments", "memfd"], "access": "read_write"},
    ).json()
    assert result["would_attach"] is True and result["map_type"] == "memfd"
    cells = result["matrix"]["cells"]
    assert cells[0][0]["verdict"] == "soft-mismatch" and "read only" in cells[0][0]["reason"]
    assert cells[0][1]["verdict"] == "type-differs"
    assert cells[1] == [
        {"verdict": "type-differs", "reason": "", "converter": "", "format": ""},
        {"verdict": "matched", "reason": "", "converter": "", "format": ""},
    ]
    assert result["matrix"]["chosen"] == {"offer_index": 1, "match_index": 1}


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"buffer_name": "no-such-buffer", "accept": ["memfd"]}, 404, "no buffer named 'no-such-buffer'"),
        ({"accept": ["memfd"]}, 400, "name a buffer (buffer_id or buffer_name) or give a non-empty offers list"),
        ({"offers": ["memfd"], "accept": ["holographic"]}, 400, "unknown mapping type 'holographic'"),
        ({"offers": ["memfd:sideways"], "accept": ["memfd"]}, 400, "access 'sideways' is not one of read, read_write"),
        ({"buffer_id": 1, "buffer_name": "x", "accept": []}, 400, "not both"),
    ],
)
def test_explain_refuses_bad_questions_with_a_clear_message(http_broker: HttpBroker, body, status, message):
    response = http_broker.post("/v1/explain", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


def _cli(broker, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", *args, "--socket-dir", str(broker.socket_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_explain_command_prints_the_trace_matrix_with_http_off(broker):
    exporter, info = broker.exporter("--name", "camera0", "--offers", "segments,memfd", "--allow-write")
    out = _cli(broker, "explain", "camera0", "--accept", "memfd,segments")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"buffer {info['id']} (camera0): offers [segments, memfd]; accept [memfd, segments], access read"
    assert lines[1].split() == ["match", "0:", "memfd", "match", "1:", "segments"]
    assert lines[2].split() == ["offer", "0:", "segments", "type-differs", "*", "matched"]
    assert lines[3].split() == ["offer", "1:", "memfd", "not-examined", "not-examined"]
    assert lines[-1] == "an attach would negotiate segments"
    attached = broker.run("importer", "camera0", "--accept", "memfd,segments")
    assert attached["map_type"] == "segments"

    # The example: whatever this host can do with udmabuf, explain says what attach then does.
    example = _cli(broker, "explain", "camera0", "--accept", "udmabuf,memfd")
    assert example.returncode == 0, example.stdout + example.stderr
    chosen = broker.run("importer", "camera0", "--accept", "udmabuf,memfd")["map_type"]
    assert example.stdout.splitlines()[-1] == f"an attach would negotiate {chosen}"
    by_id = _cli(broker, "explain", str(info["id"]), "--accept", "memfd", "--access", "read_write")
    assert by_id.returncode == 0 and by_id.stdout.splitlines()[-1] == "an attach would negotiate memfd"
    nothing = _cli(broker, "explain", "camera0", "--accept", "holographic")
    assert nothing.returncode == 2 and "unknown mapping type 'holographic'" in nothing.stderr
    missing = _cli(broker, "explain", "nope", "--accept", "memfd")
    assert missing.returncode == 2 and "no buffer named 'nope'" in missing.stderr
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_explain_command_exits_1_and_shows_why_when_nothing_matches(broker):
    with broker.connect() as exporter:
        exporter.export(4096, name="read-only", offers=[bufbroker.Memfd(access="read")])
        out = _cli(broker, "explain", "read-only", "--accept", "memfd", "--access", "read_write")
    assert out.returncode == 1
    assert "offer 0: memfd  * " not in out.stdout and "offer 0: memfd  soft-mismatch" in out.stdout
    assert (
        "offer 0 x match 0: soft-mismatch: access: importer wants read_write, the offer allows read only" in out.stdout
    )
    assert out.stdout.splitlines()[-1].startswith("an attach would fail: no common mapping type")
