"""The read-only JSON API against a real broker and real client processes."""

from __future__ import annotations

import json
import os

from tests.http.conftest import HttpBroker


def _line(process) -> dict:
    line = process.stdout.readline()
    assert line, f"the client exited with status {process.wait()}"
    return json.loads(line)


def test_buffer_list_shows_a_real_exporters_buffer(http_broker: HttpBroker):
    exporter, info = http_broker.broker.exporter("--name", "camera0", "--size", "8192", "--offers", "segments,memfd")
    page = http_broker.json("/v1/buffers")
    assert page["total"] == 1 and page["next_cursor"] is None and page["limit"] == 100
    (buffer,) = page["buffers"]
    assert buffer["id"] == info["id"] and buffer["name"] == "camera0"
    assert buffer["size"] == 8192 and buffer["state"] == "active"
    assert buffer["exporter_pid"] == exporter.pid and buffer["exporter_uid"] == os.getuid()
    assert buffer["offer_types"] == ["segments", "memfd"]
    assert [o["type"] for o in buffer["offers"]] == ["segments", "memfd"]
    assert buffer["offers"][0]["options"]["extents"] == [{"length": "8192"}]
    assert buffer["fd_count"] == 1 and buffer["attachment_count"] == 0 and buffer["generation"] == 1
    assert buffer["allow"] == ["same-uid"] and buffer["on_exporter_exit"] == "revoke"


def test_buffer_detail_has_offers_layout_labels_and_each_attachments_type_and_trace(http_broker: HttpBroker):
    broker = http_broker.broker
    with broker.connect() as exporter:
        exported = exporter.export(
            4096,
            name="frames",
            offers=["segments", "memfd"],
            labels={"camera": "front", "stage": "raw"},
            layout={
                "fourcc": "NV12",
                "width": 64,
                "height": 32,
                "planes": [{"offset": 0, "stride": 64}, {"offset": 2048, "stride": 64}],
            },
        )
        holder = broker.spawn("holder", "frames", "--accept", "memfd,segments")
        assert _line(holder) == {"ready": True}
        compat = broker.spawn("holder", "frames", "--accept", "memfd")
        assert _line(compat) == {"ready": True}
        detail = http_broker.json(f"/v1/buffers/{exported.id}")
        assert detail["labels"] == {"camera": "front", "stage": "raw"}
        assert detail["layout"] == {
            "fourcc": "NV12",
            "width": 64,
            "height": 32,
            "modifier": 0,
            "planes": [{"offset": 0, "stride": 64}, {"offset": 2048, "stride": 64}],
        }
        first, second = detail["attachments"]
        assert first["importer_pid"] == holder.pid and first["map_type"] == "segments"
        assert first["mappings"] == 1 and first["buffer_name"] == "frames"
        assert [(s["offer_type"], s["match_type"], s["verdict"]) for s in first["trace"]] == [
            ("segments", "memfd", "type-differs"),
            ("segments", "segments", "matched"),
        ]
        assert first["matrix"]["offers"] == ["segments", "memfd"]
        assert first["matrix"]["matches"] == ["memfd", "segments"]
        assert first["matrix"]["chosen"] == {"offer_index": 0, "match_index": 1}
        assert [c["verdict"] for c in first["matrix"]["cells"][1]] == ["not-examined", "not-examined"]
        assert second["importer_pid"] == compat.pid and second["map_type"] == "memfd"
        assert [(s["offer_index"], s["verdict"]) for s in second["trace"]] == [(0, "type-differs"), (1, "matched")]
        exported.revoke("done")
        assert _line(holder)["revoked"] == "done" and _line(compat)["revoked"] == "done"
        assert holder.wait(10) == 0 and compat.wait(10) == 0


def test_unknown_buffer_is_404_naming_it(http_broker: HttpBroker):
    response = http_broker.get("/v1/buffers/424242")
    assert response.status_code == 404
    assert "no buffer with id 424242" in response.json()["detail"]


def test_sessions_report_pid_uid_gid_role_holdings_and_compliance(http_broker: HttpBroker):
    broker = http_broker.broker
    exporter, info = broker.exporter("--name", "shared", "--offers", "memfd")
    holder = broker.spawn("holder", "shared", "--accept", "memfd")
    assert _line(holder) == {"ready": True}
    sessions = {s["pid"]: s for s in http_broker.json("/v1/sessions")["sessions"]}
    exp, imp = sessions[exporter.pid], sessions[holder.pid]
    assert (exp["role"], exp["buffers"], exp["attachments"], exp["fds_held"]) == ("exporter", 1, 0, 1)
    assert exp["buffer_ids"] == [info["id"]] and exp["uid"] == os.getuid() and exp["gid"] == os.getgid()
    assert (imp["role"], imp["buffers"], imp["attachments"], imp["mappings"]) == ("importer", 0, 1, 1)
    assert imp["non_compliant"] is False and imp["events_open"] is True
    attachments = http_broker.json("/v1/attachments", params={"session_id": imp["id"]})["attachments"]
    assert [a["id"] for a in attachments] == imp["attachment_ids"]
    exporter.stdin.close()  # the exporter ends: its buffer is revoked, the holder hears it
    assert _line(holder)["revoked"] == "exporter session ended"
    assert holder.wait(10) == 0 and exporter.wait(10) == 0


def test_attachments_filter_by_buffer(http_broker: HttpBroker):
    broker = http_broker.broker
    with broker.connect() as exporter, broker.connect() as importer:
        one = exporter.export(4096, offers=["memfd"])
        two = exporter.export(4096, offers=["segments"])
        a1 = importer.attach(one.id, accept=["memfd"])
        a2 = importer.attach(two.id, accept=["segments"])
        everything = http_broker.json("/v1/attachments")["attachments"]
        assert [a["id"] for a in everything] == [a1.id, a2.id]
        only_two = http_broker.json("/v1/attachments", params={"buffer_id": two.id})["attachments"]
        assert [(a["id"], a["map_type"]) for a in only_two] == [(a2.id, "segments")]


def test_mapping_types_lists_every_registered_type_with_host_support(http_broker: HttpBroker):
    types = {t["name"]: t for t in http_broker.json("/v1/mapping-types")["mapping_types"]}
    assert {"memfd", "segments"} <= set(types)
    assert types["memfd"]["supported"] is True and "compat" in types["memfd"]["description"]


def test_buffer_filters_by_name_label_exporter_pid_mapping_type_and_state(http_broker: HttpBroker):
    broker = http_broker.broker
    proc, seen = broker.exporter("--name", "from-a-process", "--offers", "segments")
    with broker.connect() as exporter:
        front = exporter.export(4096, name="front", offers=["memfd"], labels={"camera": "front", "rig": "a"})
        exporter.export(4096, name="back", offers=["memfd", "segments"], labels={"camera": "back", "rig": "a"})
        gone = exporter.export(4096, name="gone", offers=["memfd"])
        gone.revoke("test")

        def names(**params) -> list[str]:
            return [b["name"] for b in http_broker.json("/v1/buffers", params=params)["buffers"]]

        assert names(name="front") == ["front"]
        assert names(label="rig=a") == ["front", "back"]
        assert names(label=["rig=a", "camera=back"]) == ["back"]
        assert names(exporter_pid=proc.pid) == ["from-a-process"]
        assert names(mapping_type="segments") == ["from-a-process", "back"]
        assert names(state="revoked") == ["gone"]
        assert names(state="active", mapping_type="memfd") == ["front", "back"]
        assert names(name="nothing-like-this") == []
        bad = http_broker.get("/v1/buffers", params={"label": "no-equals-sign"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "label", 0]
        assert http_broker.get("/v1/buffers", params={"state": "melted"}).status_code == 422
        assert front.id in [b["id"] for b in http_broker.json("/v1/buffers")["buffers"]]


def test_overview_and_stats_agree_with_the_registry(http_broker: HttpBroker):
    broker = http_broker.broker
    with broker.connect() as exporter, broker.connect() as importer:
        buffer = exporter.export(4096, name="seen", offers=["memfd"])
        importer.attach(buffer.id, accept=["memfd"], map=True)
        overview = http_broker.json("/v1/overview")
        stats = overview["stats"]
        assert (stats["sessions"], stats["buffers"], stats["attachments"], stats["mappings"]) == (2, 1, 1, 1)
        assert stats["fds_held"] == 1 and stats["pid"] == broker.pid
        assert stats["negotiations"]["matched"] >= 1
        assert [b["name"] for b in overview["buffers"]] == ["seen"] and overview["buffers_total"] == 1
        assert [a["buffer_id"] for a in overview["attachments"]] == [buffer.id]
        assert {s["id"] for s in overview["sessions"]} == {exporter.id, importer.id}
        assert http_broker.json("/v1/stats")["last_event_id"] >= 4


def test_health_and_readiness_answer(http_broker: HttpBroker):
    assert http_broker.json("/healthz") == {"status": "ok"}
    assert http_broker.json("/readyz") == {"status": "ready"}
