"""/metrics: what it counts, `promtool check metrics`, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

import bufbroker
from tests.http.conftest import APT_TIMEOUT, HttpBroker, free_port

pytestmark = pytest.mark.timeout(APT_TIMEOUT + 120)  # the first test may install prometheus


def _samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} for every sample line."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def _busy_broker(http: HttpBroker) -> None:
    """Exercise everything the metrics count, with real client processes."""
    broker = http.broker
    exporter, info = broker.exporter("--name", "metered", "--offers", "segments,memfd", "--size", "8192")
    assert broker.run("importer", "metered", "--accept", "memfd,segments")["map_type"] == "segments"
    assert broker.run("importer", "metered", "--accept", "memfd")["map_type"] == "memfd"
    assert http.post("/v1/explain", json={"buffer_id": info["id"], "accept": ["segments"]}).json()["would_attach"]
    with broker.connect() as session:
        read_only = session.export(4096, offers=[bufbroker.Memfd(access="read")])
        with pytest.raises(bufbroker.NoCommonMappingType):
            session.attach(read_only.id, accept=["memfd"], access="read_write")
        moving = session.export(4096, name="moving", offers=["memfd"])
        moving.move(8192, reason="resize")
        moving.revoke("done")
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_metrics_count_sessions_buffers_negotiations_fds_moves_and_rpcs(http_broker: HttpBroker):
    before = _samples(http_broker.get("/metrics").text)  # after the fixture's warm-up cycle
    _busy_broker(http_broker)
    with http_broker.broker.connect() as session:
        session.export(4096, name="still-here", offers=["segments", "memfd"])
        after = _samples(http_broker.get("/metrics").text)
    samples = {
        name: value - before.get(name, 0) if "_total" in name or "_count" in name else value
        for name, value in after.items()
    }
    assert samples['bufbroker_buffers{state="active"}'] == 1
    assert samples['bufbroker_buffer_bytes{state="active"}'] == 4096
    assert samples['bufbroker_offered_buffers{state="active",type="segments"}'] == 1
    assert samples['bufbroker_sessions{role="exporter"}'] == 1
    assert samples['bufbroker_negotiations_total{dry_run="false",map_type="segments",result="matched"}'] == 1
    assert samples['bufbroker_negotiations_total{dry_run="false",map_type="memfd",result="matched"}'] == 1
    assert samples['bufbroker_negotiations_total{dry_run="true",map_type="segments",result="matched"}'] == 1
    assert samples['bufbroker_negotiations_total{dry_run="false",map_type="none",result="no-common-type"}'] == 1
    assert samples["bufbroker_negotiation_duration_seconds_count"] == 4
    assert (
        0
        < after["bufbroker_negotiation_duration_seconds_sum"] - before["bufbroker_negotiation_duration_seconds_sum"]
        < 1
    )
    assert samples['bufbroker_attaches_total{map_type="segments"}'] == 1
    assert samples['bufbroker_maps_total{map_type="memfd"}'] == 1
    assert samples["bufbroker_moves_total"] == 1
    assert samples["bufbroker_revokes_total"] >= 3  # the moved buffer, and two exporters' buffers at their end
    assert samples["bufbroker_fds_held"] == 1
    assert samples["bufbroker_fds_sent_total"] >= 2 and samples["bufbroker_fds_received_total"] >= 5
    assert all(value == 0 for name, value in samples.items() if name.startswith("bufbroker_converter_uses_total"))
    assert samples["bufbroker_non_compliant_sessions"] == 0
    # The SDK attaches, maps and detaches on call channels; those count under their own service name.
    assert samples['bufbroker_rpc_duration_seconds_count{method="Attach",service="bufbroker.v1.CallChannel"}'] >= 3
    assert (
        samples['bufbroker_rpcs_total{code="FAILED_PRECONDITION",method="Attach",service="bufbroker.v1.CallChannel"}']
        == 1
    )
    assert samples['bufbroker_rpcs_total{code="OK",method="OpenCallChannel",service="bufbroker.v1.Broker"}'] >= 1
    assert samples['bufbroker_rpcs_total{code="OK",method="MoveBuffer",service="bufbroker.v1.Broker"}'] == 1


def test_a_real_scrape_passes_promtool_check_metrics(http_broker: HttpBroker, debian_tools):
    _busy_broker(http_broker)
    scrape = http_broker.get("/metrics")
    assert scrape.headers["content-type"].startswith("text/plain; version=")
    checked = subprocess.run(
        [str(debian_tools["promtool"]), "check", "metrics"],
        input=scrape.text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, f"promtool check metrics:\n{checked.stdout}{checked.stderr}"
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", "promtool has lint warnings"


def test_a_real_prometheus_scrapes_the_broker_and_answers_a_query(http_broker: HttpBroker, debian_tools, tmp_path):
    broker_port = http_broker.url.rsplit(":", 1)[1]
    prometheus_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: bufbroker\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{broker_port}']\n"
    )
    log = open(tmp_path / "prometheus.log", "w")
    prometheus = subprocess.Popen(
        [
            str(debian_tools["prometheus"]),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        with (
            http_broker.broker.connect() as session,
            httpx.Client(base_url=f"http://127.0.0.1:{prometheus_port}", timeout=5) as api,
        ):
            session.export(4096, name="scraped")
            deadline = time.monotonic() + 60
            result = []
            while time.monotonic() < deadline:
                try:  # until it is ready, prometheus answers 503 in plain text
                    reply = api.get("/api/v1/query", params={"query": 'bufbroker_buffers{state="active"}'})
                    answer = reply.json() if reply.status_code == 200 else {}
                except (httpx.HTTPError, ValueError):
                    answer = {}
                result = answer.get("data", {}).get("result", [])
                if result and result[0]["value"][1] == "1":
                    break
                assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
                time.sleep(0.5)
            assert result, (
                f"prometheus never scraped bufbroker_buffers; its log:\n{(tmp_path / 'prometheus.log').read_text()[-3000:]}"
            )
            (series,) = result
            assert series["metric"]["job"] == "bufbroker" and series["metric"]["instance"] == f"127.0.0.1:{broker_port}"
            assert series["value"][1] == "1"
            targets = api.get("/api/v1/targets").json()["data"]["activeTargets"]
            assert [t["health"] for t in targets] == ["up"], json.dumps(targets)
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
