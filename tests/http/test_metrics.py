"""/metrics: what it counts, the process_*/python_* collectors, both exposition formats
(text and OpenMetrics, by the Accept header), `promtool check metrics`, and a real
Prometheus scraping it."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

import bufbroker
from tests.apt import APT_TIMEOUT
from tests.http.conftest import HttpBroker, free_port

# What Prometheus 2.42 (Debian's) sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT_CONTENT_TYPE = re.compile(r"text/plain; version=\d+\.\d+\.\d+; charset=utf-8")

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


def _promtool(debian_tools, exposition: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(debian_tools["promtool"]), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_real_scrape_passes_promtool_check_metrics(http_broker: HttpBroker, debian_tools):
    _busy_broker(http_broker)
    scrape = http_broker.get("/metrics")
    assert TEXT_CONTENT_TYPE.fullmatch(scrape.headers["content-type"]), scrape.headers["content-type"]
    assert "process_resident_memory_bytes" in scrape.text and "python_gc_collections_total" in scrape.text
    checked = _promtool(debian_tools, scrape.text)
    assert checked.returncode == 0, f"promtool check metrics:\n{checked.stdout}{checked.stderr}"
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", "promtool has lint warnings"


def test_the_openmetrics_scrape_is_strict_openmetrics_and_promtool_finds_nothing_else(
    http_broker: HttpBroker, debian_tools
):
    """OpenMetrics, asked for as Prometheus asks: strictly valid, counters named as OpenMetrics wants.

    promtool check metrics reads only the text format (0.0.4). Read that way, an OpenMetrics
    counter family (`# TYPE x counter`, sample `x_total`) is a sample `x_total` with no HELP of its
    own, so promtool reports exactly "x_total no help text" for each counter and nothing more.
    Anything else (a parse error, a naming or unit problem) fails here.
    """
    _busy_broker(http_broker)
    scrape = http_broker.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert scrape.headers["content-type"] == OPENMETRICS_CONTENT_TYPE
    assert "accept" in scrape.headers.get("vary", "").lower()
    assert scrape.text.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(scrape.text)}  # raises on invalid OpenMetrics
    counters = sorted(name for name, family in families.items() if family.type == "counter")
    assert {"bufbroker_moves", "bufbroker_rpcs", "process_cpu_seconds", "python_gc_collections"} <= set(counters)
    for name in counters:
        assert not name.endswith("_total")
        assert re.search(rf"^# TYPE {name} counter$", scrape.text, re.M)
        assert {s.name for s in families[name].samples} <= {f"{name}_total", f"{name}_created"}
    assert families["bufbroker_build_info"].type == "gauge"  # not `info`, which promtool cannot parse
    assert families["python_info"].samples[0].value == 1

    checked = _promtool(debian_tools, scrape.text)
    problems = sorted((checked.stdout + checked.stderr).strip().splitlines())
    assert problems == sorted(f"{name}_total no help text" for name in counters), checked.stdout + checked.stderr
    assert checked.returncode == 3  # promtool's "lint problems" status, for those lines alone

    # The same scrape, in the text format, is promtool clean (the test above checks a busier one).
    text = http_broker.get("/metrics", headers={"Accept": "text/plain"}).text
    assert _promtool(debian_tools, text).returncode == 0
    # Family for family: the parser strips counters' _total; info families are gauges there.
    assert sorted(f.name for f in parse_text(text)) == sorted(
        f"{name}_info" if f.type == "info" else name for name, f in families.items()
    )


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("*/*", False),
        ("text/plain", False),
        ("text/plain;version=0.0.4", False),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0", True),
        (PROMETHEUS_ACCEPT, True),
        ("text/plain, application/openmetrics-text;q=0.5", False),
        ("application/openmetrics-text;q=0, text/plain;q=0.1", False),
        ("application/json", False),
    ],
)
def test_accept_chooses_the_format(http_broker: HttpBroker, accept: str | None, openmetrics: bool):
    headers = {} if accept is None else {"Accept": accept}
    with httpx.Client(base_url=http_broker.url, timeout=10) as client:
        if accept is None:
            client.headers.pop("Accept")
        response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    if openmetrics:
        assert response.headers["content-type"] == OPENMETRICS_CONTENT_TYPE
        assert response.text.endswith("# EOF\n")
        list(parse_openmetrics(response.text))
    else:
        assert TEXT_CONTENT_TYPE.fullmatch(response.headers["content-type"]), response.headers["content-type"]
        assert "# EOF" not in response.text
        assert "bufbroker_buffers" in {f.name for f in parse_text(response.text)}


def _values(families, name: str) -> dict[tuple, float]:
    """{sorted label items: value} for the samples named ``name``."""
    return {tuple(sorted(s.labels.items())): s.value for family in families for s in family.samples if s.name == name}


@pytest.mark.parametrize("fmt", ["text", "openmetrics"])
def test_process_and_python_collectors_describe_the_broker(http_broker: HttpBroker, fmt: str):
    """process_* read the broker's own /proc entry, python_* its interpreter, in both formats."""
    broker = http_broker.broker
    headers, parse = (OPENMETRICS, parse_openmetrics) if fmt == "openmetrics" else ({}, parse_text)
    with broker.connect() as session:  # a few more fds for the count to follow
        session.export(4096, name="counted")
        first = list(parse(http_broker.get("/metrics", headers=headers).text))
        fds = broker.fd_count()  # the scrape's connection stays open (keep-alive)
        _busy_broker(http_broker)
        second = list(parse(http_broker.get("/metrics", headers=headers).text))

    (rss,) = _values(first, "process_resident_memory_bytes").values()
    (vms,) = _values(first, "process_virtual_memory_bytes").values()
    assert 1 << 20 < rss <= vms
    status = Path(f"/proc/{broker.pid}/status").read_text()
    vm_rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024
    assert 0.5 < rss / vm_rss < 2, (rss, vm_rss)
    (open_fds,) = _values(first, "process_open_fds").values()
    # Counted by the broker during the scrape: its listing of /proc/self/fd holds one more.
    assert abs(open_fds - fds) <= 2, (open_fds, fds)
    (max_fds,) = _values(first, "process_max_fds").values()
    limit = re.search(r"^Max open files\s+(\d+)", Path(f"/proc/{broker.pid}/limits").read_text(), re.M)
    assert max_fds == int(limit.group(1)) > open_fds
    (start,) = _values(first, "process_start_time_seconds").values()
    assert time.time() - 600 < start < time.time()
    (cpu,) = _values(first, "process_cpu_seconds_total").values()
    (cpu_later,) = _values(second, "process_cpu_seconds_total").values()
    assert 0 < cpu <= cpu_later < time.time() - start + 1  # the broker is one event loop: at most one core
    assert cpu_later > cpu  # serving _busy_broker's clients took CPU time

    info = _values(first, "python_info")
    assert info == {
        (
            ("implementation", platform.python_implementation()),
            ("major", str(sys.version_info.major)),
            ("minor", str(sys.version_info.minor)),
            ("patchlevel", platform.python_version_tuple()[2]),
            ("version", platform.python_version()),
        ): 1
    }
    generations = {(("generation", str(g)),) for g in range(3)}
    for name in ("python_gc_objects_collected_total", "python_gc_objects_uncollectable_total"):
        assert set(_values(first, name)) == generations, name
    collections, collections_later = (_values(m, "python_gc_collections_total") for m in (first, second))
    assert set(collections) == generations
    assert collections[(("generation", "0"),)] > 0
    assert all(collections_later[g] >= collections[g] for g in generations)


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
            assert targets[0]["lastError"] == "", json.dumps(targets)
            # Prometheus asks for OpenMetrics (test_accept_chooses_the_format); the standard collectors arrive too.
            for query in ("process_resident_memory_bytes > 1048576", "process_open_fds > 0", "python_info == 1"):
                answer = api.get("/api/v1/query", params={"query": query}).json()
                assert [r["metric"]["job"] for r in answer["data"]["result"]] == ["bufbroker"], (query, answer)
    finally:
        prometheus.terminate()
        try:
            prometheus.wait(15)
        except subprocess.TimeoutExpired:
            prometheus.kill()
            prometheus.wait()
