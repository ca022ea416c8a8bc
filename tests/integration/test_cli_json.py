"""The machine-readable CLI: `ls --json` (with --name / --label), `top --json`, `explain --json`, over gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import bufbroker


def _cli(broker, *args: str, socket_dir=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bufbroker_broker", *args, "--socket-dir", str(socket_dir or broker.socket_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _ls(broker, *args: str) -> list[dict]:
    out = _cli(broker, "ls", "--json", *args)
    assert out.returncode == 0, out.stderr
    document = json.loads(out.stdout)
    assert document["streams"] == []  # these tests make no stream (tests/integration/test_cli_streams.py does)
    return document["buffers"]


def test_ls_json_pages_past_100_buffers_and_filters_by_name_and_labels(broker):
    with broker.connect() as exporter, broker.connect() as importer:
        exported = {}
        for i in range(150):  # ListBuffers pages at 100: this takes two pages
            labels = {"parity": "even" if i % 2 == 0 else "odd"}
            if i % 3 == 0:
                labels["cam"] = "front"
            buffer = exporter.export(4096 + i, name=f"frame-{i}", labels=labels, offers=["segments", "memfd"])
            exported[buffer.id] = (i, labels)
        first = min(exported)
        importer.attach(first, accept=["memfd"])

        listed = _ls(broker)
        assert [b["id"] for b in listed] == sorted(exported)
        for b in listed:
            i, labels = exported[b["id"]]
            assert b["name"] == f"frame-{i}" and b["labels"] == labels and b["size"] == 4096 + i
            assert b["exporter_pid"] == os.getpid() and b["exporter_session_id"] == exporter.id
            assert b["exporter_name"] == ""  # the session did not name itself
            assert b["state"] == "active" and b["offer_types"] == ["segments", "memfd"]
            assert [o["type"] for o in b["offers"]] == ["segments", "memfd"]
            assert b["attachment_count"] == (1 if b["id"] == first else 0)
            assert b["pinned"] is False and b["layout"] is None

        even = _ls(broker, "--label", "parity=even")
        assert [b["name"] for b in even] == [f"frame-{i}" for i in range(0, 150, 2)]
        both = _ls(broker, "--label", "parity=even", "--label", "cam=front")
        assert [b["name"] for b in both] == [f"frame-{i}" for i in range(0, 150, 6)]
        assert _ls(broker, "--label", "parity=even", "--label", "cam=back") == []
        assert _ls(broker, "--label", "cam=") == []  # an empty value matches only an empty value
        assert [b["labels"] for b in _ls(broker, "--name", "frame-149")] == [{"parity": "odd"}]
        assert [b["id"] for b in _ls(broker, "--name", "frame-3", "--label", "cam=front")] == [first + 3]
        assert _ls(broker, "--name", "frame-3", "--label", "parity=even") == []
        assert _ls(broker, "--name", "nope") == []

        table = _cli(broker, "ls", "--label", "cam=front")
        assert table.returncode == 0 and len(table.stdout.splitlines()) == 1 + 50
        assert "frame-147" in table.stdout and "frame-148" not in table.stdout
        assert "(no buffers match)" in _cli(broker, "ls", "--name", "nope").stdout

    for bad in ("novalue", "=value"):
        out = _cli(broker, "ls", "--json", "--label", bad)
        assert out.returncode == 2 and out.stdout == ""
        assert f"argument --label: expected KEY=VALUE, got '{bad}'" in out.stderr


def test_ls_json_without_a_broker_says_so_on_stderr_and_exits_1(broker, tmp_path):
    out = _cli(broker, "ls", "--json", socket_dir=tmp_path / "nobody")
    assert out.returncode == 1 and out.stdout == ""
    assert "no broker is serving" in out.stderr


def test_top_once_json_is_one_snapshot_with_sessions_buffers_importers_and_rates(broker):
    exporter, info = broker.exporter("--name", "watched", "--offers", "segments,memfd")
    holder = broker.spawn("holder", "watched", "--accept", "segments")
    assert holder.stdout.readline().strip() == '{"ready": true}'

    out = _cli(broker, "top", "--once", "--json", "--interval", "0.2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1
    snap = json.loads(lines[0])
    assert snap["broker"]["pid"] == broker.pid
    assert snap["stats"]["sessions"] == 3 and snap["stats"]["buffers"] == 1
    assert snap["stats"]["attachments"] == 1 and snap["stats"]["mappings"] == 1
    assert snap["rates"]["seconds"] >= 0.2
    assert snap["rates"]["fds_sent_per_second"] == 0.0 and snap["rates"]["fds_received_per_second"] == 0.0

    sessions = {s["pid"]: s for s in snap["sessions"]}
    assert sessions[exporter.pid]["role"] == "exporter" and sessions[exporter.pid]["buffers"] == 1
    assert sessions[holder.pid]["role"] == "importer" and sessions[holder.pid]["mappings"] == 1
    own = [s for s in snap["sessions"] if s["this_top"]]
    assert len(own) == 1 and own[0]["id"] == snap["own_session_id"] and own[0]["role"] == "idle"
    assert own[0]["pid"] not in (exporter.pid, holder.pid)

    [buffer] = snap["buffers"]
    assert buffer["id"] == info["id"] and buffer["name"] == "watched"
    assert buffer["exporter_pid"] == exporter.pid and buffer["offer_types"] == ["segments", "memfd"]
    [importer] = buffer["importers"]
    assert importer["pid"] == holder.pid and importer["map_type"] == "segments"
    assert importer["session_id"] == sessions[holder.pid]["id"]
    [attachment] = snap["attachments"]
    assert attachment["id"] == importer["attachment_id"] and attachment["buffer_id"] == info["id"]
    assert attachment["importer_pid"] == holder.pid and attachment["mappings"] == 1

    live = _cli(broker, "top", "--json", "--iterations", "3", "--interval", "0.1")
    assert live.returncode == 0, live.stderr
    frames = [json.loads(line) for line in live.stdout.splitlines()]
    assert len(frames) == 3 and all(f["buffers"][0]["name"] == "watched" for f in frames)
    assert all(f["rates"]["seconds"] >= 0.1 for f in frames)
    exporter.stdin.close()
    assert exporter.wait(10) == 0 and holder.wait(10) == 0


def test_top_json_rejects_bad_flags_and_reports_a_missing_broker(broker, tmp_path):
    for flags, message in (
        (["--interval", "0"], "--interval must be positive"),
        (["--interval", "nan"], "--interval must be positive"),
        (["--iterations", "-1"], "--iterations not negative"),
    ):
        out = _cli(broker, "top", "--json", *flags)
        assert out.returncode == 2 and out.stdout == "" and message in out.stderr
    both = _cli(broker, "top", "--json", "--once", "--iterations", "2")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    gone = _cli(broker, "top", "--once", "--json", "--interval", "0.1", socket_dir=tmp_path / "nobody")
    assert gone.returncode == 1 and gone.stdout == "" and "no broker is serving" in gone.stderr


def _verdicts(result: dict) -> list[tuple]:
    return [(s["offer_index"], s["match_index"], s["verdict"]) for s in result["trace"]]


def test_explain_json_would_attach_matches_a_real_attach(broker):
    exporter, info = broker.exporter("--name", "camera0", "--offers", "segments,memfd")
    out = _cli(broker, "explain", "camera0", "--accept", "memfd,segments", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["would_attach"] is True and result["map_type"] == "segments"
    assert result["error"] is None and result["error_code"] is None
    assert result["buffer"]["id"] == info["id"] and result["buffer"]["name"] == "camera0"
    assert result["buffer"]["exporter_pid"] == exporter.pid
    assert result["offers"] == ["segments", "memfd"] and result["accept"] == ["memfd", "segments"]
    assert result["access"] == "read"
    assert _verdicts(result) == [(0, 0, "type-differs"), (0, 1, "matched")]
    matrix = result["matrix"]
    assert matrix["offers"] == ["segments", "memfd"] and matrix["matches"] == ["memfd", "segments"]
    assert matrix["chosen"] == {"offer_index": 0, "match_index": 1}
    assert [[c["verdict"] for c in row] for row in matrix["cells"]] == [
        ["type-differs", "matched"],
        ["not-examined", "not-examined"],
    ]
    assert broker.run("importer", "camera0", "--accept", "memfd,segments")["map_type"] == result["map_type"]

    by_id = _cli(broker, "explain", str(info["id"]), "--accept", "memfd", "--json")
    assert by_id.returncode == 0, by_id.stderr
    result = json.loads(by_id.stdout)
    assert result["buffer"]["id"] == info["id"] and result["map_type"] == "memfd"
    assert _verdicts(result) == [(0, 0, "type-differs"), (1, 0, "matched")]

    compat = json.loads(_cli(broker, "explain", "camera0", "--json").stdout)
    assert compat["accept"] == [] and compat["map_type"] == "memfd" and compat["matrix"]["matches"] == ["memfd"]
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_explain_json_exits_1_with_the_reason_when_nothing_matches(broker):
    with broker.connect() as exporter:
        exporter.export(4096, name="read-only", offers=[bufbroker.Memfd(access="read")])
        out = _cli(broker, "explain", "read-only", "--accept", "memfd", "--access", "read_write", "--json")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert result["would_attach"] is False and result["map_type"] is None and result["error_code"] is None
    assert result["error"].startswith("no common mapping type")
    assert _verdicts(result) == [(0, 0, "soft-mismatch")]
    assert result["trace"][0]["reason"].startswith("access: importer wants read_write")
    assert result["matrix"]["cells"][0][0]["reason"] == result["trace"][0]["reason"]
    assert result["matrix"]["chosen"] is None and result["buffer"]["name"] == "read-only"


def test_explain_json_exits_2_with_the_error_as_json_when_it_cannot_ask(broker, tmp_path):
    with broker.connect() as exporter:
        exporter.export(4096, name="camera0", offers=["memfd"])
        cases = [
            (["nope", "--accept", "memfd"], "no buffer named 'nope'", "NOT_FOUND", None),
            (["camera0", "--accept", "holographic"], "unknown mapping type 'holographic'", "INVALID_ARGUMENT", None),
            (["0"], "buffer id 0 is out of range", "INVALID_ARGUMENT", None),
            (["camera0"], "no broker is serving", "UNAVAILABLE", tmp_path / "nobody"),
        ]
        for args, message, code, socket_dir in cases:
            out = _cli(broker, "explain", *args, "--json", socket_dir=socket_dir)
            assert out.returncode == 2, (args, out.stdout, out.stderr)
            assert message in out.stderr
            result = json.loads(out.stdout)
            assert result["would_attach"] is False and result["map_type"] is None and result["buffer"] is None
            assert message in result["error"] and result["trace"] == [] and result["matrix"] is None
            assert result["error_code"] == code
