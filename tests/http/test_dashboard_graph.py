"""The dashboard's graph of a fan-in/fan-out, and its events panel, in a real
headless Chromium (Debian's) driven by playwright.

Real processes: two exporters, three importers holding several attachments
each (one of them two on the same buffer). Every attachment edge must have a
label of its own, on a line of its own, that a click at its centre opens the
trace of that attachment; the events panel must show the recent history as
soon as the page loads.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.apt import APT_TIMEOUT
from tests.conftest import REPO_ROOT
from tests.http.conftest import ARTIFACTS, CHROMIUM_ARGS, HttpBroker

pytestmark = pytest.mark.timeout(APT_TIMEOUT + 120)  # the first test may install chromium

EXPORTER = """
import json, sys, bufbroker
with bufbroker.connect(sys.argv[1]) as session:
    held = [session.export(4096, name=name, offers=["segments", "memfd"]) for name in {names!r}]
    print(json.dumps({{"pid_session": session.id, "buffers": {{b.name: b.id for b in held}}}}), flush=True)
    sys.stdin.read()
"""

IMPORTER = """
import json, sys, bufbroker
with bufbroker.connect(sys.argv[1]) as session:
    held = [session.attach(name, accept={accept!r}, map=True) for name in {names!r}]
    print(json.dumps({{"session": session.id, "attachments": [a.id for a in held]}}), flush=True)
    sys.stdin.read()
"""


def _line(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    assert line, f"the client exited with status {process.wait()}"
    return json.loads(line)


def _exporter(http: HttpBroker, *names: str) -> subprocess.Popen:
    process = http.broker.spawn_code(EXPORTER.format(names=list(names)))
    assert sorted(_line(process)["buffers"]) == sorted(names)
    return process


def _importer(http: HttpBroker, accept: list[str], *names: str) -> tuple[subprocess.Popen, list[int]]:
    process = http.broker.spawn_code(IMPORTER.format(accept=accept, names=list(names)))
    ids = _line(process)["attachments"]
    assert len(ids) == len(names)
    return process, ids


def _end(*processes: subprocess.Popen) -> None:
    """Importers first, then exporters: each ends its session by closing stdin."""
    for process in processes:
        process.stdin.close()
        assert process.wait(10) == 0


@contextmanager
def _page(http: HttpBroker, chromium) -> Iterator[tuple[Page, list[str]]]:
    """A page on the dashboard; the list collects page errors and requests that left the broker."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on(
                "request",
                lambda request: None if request.url.startswith(http.url) else problems.append(request.url),
            )
            page.goto(http.url + "/")
            yield page, problems
        finally:
            browser.close()


# Where an attachment group's edge paths start and end, and how close they pass
# to a box, in page coordinates (what the user sees), whatever the SVG's scale.
EDGE_GEOMETRY = """
(group, box) => {
  const out = { ends: [], nearest: Infinity };
  for (const path of group.querySelectorAll("path.edge")) {
    const m = path.getScreenCTM(), total = path.getTotalLength();
    const at = (length) => {
      const p = path.getPointAtLength(length);
      return { x: m.a * p.x + m.c * p.y + m.e, y: m.b * p.x + m.d * p.y + m.f };
    };
    out.ends.push(at(0), at(total));
    for (let i = 0; i <= 200; i++) {
      const p = at((total * i) / 200);
      const dx = Math.max(box.x - p.x, 0, p.x - box.x - box.width), dy = Math.max(box.y - p.y, 0, p.y - box.y - box.height);
      out.nearest = Math.min(out.nearest, Math.hypot(dx, dy));
    }
  }
  return out;
}
"""


def _inside(point: dict, box: dict, slack: float = 2.0) -> bool:
    return (
        box["x"] - slack <= point["x"] <= box["x"] + box["width"] + slack
        and box["y"] - slack <= point["y"] <= box["y"] + box["height"] + slack
    )


def _centre(box: dict) -> tuple[float, float]:
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _overlap(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_every_edge_of_a_fan_in_fan_out_graph_has_its_own_label_that_opens_its_own_trace(
    http_broker: HttpBroker, debian_tools
):
    cams = ["cam0/ctl", "cam0/frame-1", "cam0/frame-2"]
    camera = _exporter(http_broker, *cams)
    mic = _exporter(http_broker, "mic0/pcm")
    # Fan-out from every buffer, fan-in to every importer; the recorder holds two attachments
    # of the same buffer, which must still be two edges with two labels.
    viewer, viewer_ids = _importer(http_broker, ["segments", "memfd"], *cams, "mic0/pcm")
    encoder, encoder_ids = _importer(http_broker, ["memfd"], "cam0/frame-1", "cam0/frame-2")
    recorder, recorder_ids = _importer(http_broker, ["memfd"], "cam0/frame-2", "cam0/frame-2", "mic0/pcm")
    attachments = {a["id"]: a for a in http_broker.json("/v1/attachments")["attachments"]}
    assert sorted(attachments) == sorted(viewer_ids + encoder_ids + recorder_ids)
    pids = {a["session_id"]: a["importer_pid"] for a in attachments.values()}
    assert sorted(pids.values()) == sorted([viewer.pid, encoder.pid, recorder.pid])

    with _page(http_broker, debian_tools["chromium"]) as (page, problems):
        expect(page.locator("#graph [data-attachment-id]")).to_have_count(len(attachments))
        expect(page.locator("#live")).to_have_text("live")
        # One snapshot in the page: the graph may redraw between separate locator calls.
        node_boxes = page.eval_on_selector_all(
            "#graph .node",
            "nodes => nodes.map(n => { const r = n.getBoundingClientRect();"
            " return {x: r.x, y: r.y, width: r.width, height: r.height}; })",
        )
        assert len(node_boxes) == 2 + 4 + 3  # exporters, buffers, importers

        labels = {}
        for attachment_id, a in attachments.items():
            group = page.locator(f'#graph [data-attachment-id="{attachment_id}"]')
            label = group.locator(".edge-label")
            expect(label).to_have_count(1)
            expect(label).to_be_visible()
            expect(label).to_contain_text(a["map_type"])
            box = label.bounding_box()
            assert box and box["width"] > 10 and box["height"] > 8, box
            labels[attachment_id] = box

            # The edge the label is on joins this attachment's buffer to its importer.
            buffer_box = page.locator(f'#graph .node.buffer[data-buffer-id="{a["buffer_id"]}"] rect').bounding_box()
            importer_box = page.locator(
                f'#graph .node.importer[data-session-id="{a["session_id"]}"] rect'
            ).bounding_box()
            geometry = group.evaluate(EDGE_GEOMETRY, box)
            ends = geometry["ends"]
            assert any(_inside(p, buffer_box) for p in ends), f"attachment {attachment_id}: no edge from its buffer"
            assert any(_inside(p, importer_box) for p in ends), f"attachment {attachment_id}: no edge to its importer"
            assert all(_inside(p, buffer_box) or _inside(p, importer_box) or _inside(p, box) for p in ends), (
                f"attachment {attachment_id}: an edge ends away from its buffer, label and importer: {ends}"
            )
            assert geometry["nearest"] <= 2, f"attachment {attachment_id}: its edge does not reach its label"

        # Each label on a line of its own: no two share a vertical range, none covers a node.
        ordered = sorted(labels.items(), key=lambda item: item[1]["y"])
        for (first, a), (second, b) in itertools.pairwise(ordered):
            assert a["y"] + a["height"] <= b["y"], f"the labels of attachments {first} and {second} share a line"
        for attachment_id, box in labels.items():
            assert not any(_overlap(box, node) for node in node_boxes), f"attachment {attachment_id}: covers a node"

        # A click at the centre of each label (where a user clicks) opens that attachment's trace.
        for attachment_id, box in labels.items():
            a = attachments[attachment_id]
            page.mouse.click(*_centre(box))
            summary = page.locator("#trace .summary").first
            expect(summary).to_contain_text(f"attachment {attachment_id}:")
            expect(summary).to_contain_text(a["buffer_name"])
            expect(summary).to_contain_text(f"pid {a['importer_pid']}")
            expect(summary).to_contain_text(f"session {a['session_id']}")
            expect(page.locator(f"#matrix-attachment-{attachment_id}")).to_be_visible()
            expect(page.locator("#graph .attachment.selected")).to_have_count(1)
            expect(page.locator(f'#graph .attachment.selected[data-attachment-id="{attachment_id}"]')).to_have_count(1)

        # Keyboard: Tab reaches a label, Enter opens it.
        first = ordered[0][0]
        page.locator(f'#graph [data-attachment-id="{first}"]').focus()
        page.keyboard.press("Enter")
        expect(page.locator("#trace .summary").first).to_contain_text(f"attachment {first}:")

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard-fan.png"
        if os.environ.get("BUFBROKER_UPDATE_DOCS"):
            # The README's picture, refreshed on request (a test run does not dirty the
            # checkout): a trace open, an explain answered, the charts moving.
            page.mouse.click(*_centre(labels[recorder_ids[0]]))
            page.fill("#explain-buffer", "cam0/frame-2")
            page.fill("#explain-accept", "udmabuf,memfd")
            page.click("#explain-form button")
            expect(page.locator("#explain-result .summary")).to_be_visible()
            for _ in range(30):
                http_broker.post("/v1/explain", json={"buffer_name": "cam0/ctl", "accept": ["memfd"]})
                page.wait_for_timeout(100)
            page.wait_for_timeout(1200)
            page.mouse.move(0, 0)
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("BUFBROKER_UPDATE_DOCS"):
            shutil.copyfile(shot, REPO_ROOT / "docs" / "dashboard.png")
        assert problems == [], problems

    _end(recorder, encoder, viewer, camera, mic)


def test_the_events_panel_shows_the_recent_history_as_soon_as_the_page_loads(http_broker: HttpBroker, debian_tools):
    camera = _exporter(http_broker, "cam0/ctl", "cam0/frame-1")
    viewer, (ctl, frame) = _importer(http_broker, ["memfd"], "cam0/ctl", "cam0/frame-1")
    last = http_broker.json("/v1/stats")["last_event_id"]
    assert last > 10

    with _page(http_broker, debian_tools["chromium"]) as (page, problems):
        events = page.locator("#events li")
        # Nothing happened since: all that shows is history, newest first, each event once.
        expect(events.first).to_contain_text(f"#{last} ")
        shown = min(last, 100)  # the panel keeps the latest 100
        expect(events).to_have_count(shown)
        texts = events.all_inner_texts()
        assert [int(text.split("#", 1)[1].split(" ", 1)[0]) for text in texts] == list(range(last, last - shown, -1))
        assert any("registered" in t and "cam0/ctl" in t for t in texts), texts
        assert any("attached" in t and f"attachment {ctl}" in t for t in texts), texts
        assert any("attached" in t and f"attachment {frame}" in t for t in texts), texts

        # Then the live stream carries on after the history, with nothing repeated.
        extra, (again,) = _importer(http_broker, ["memfd"], "cam0/ctl")
        expect(page.locator("#events li", has_text=f"attachment {again}").first).to_be_visible()
        texts = events.all_inner_texts()
        seqs = [int(text.split("#", 1)[1].split(" ", 1)[0]) for text in texts]
        assert seqs == sorted(set(seqs), reverse=True), "an event is shown twice or out of order"
        assert seqs[0] > last and seqs[-1] == max(1, seqs[0] - 99)
        assert problems == [], problems

    _end(extra, viewer, camera)


def test_the_event_stream_replays_after_a_last_event_id_query_parameter(http_broker: HttpBroker):
    """EventSource cannot send Last-Event-ID on its first request: the query parameter stands in for it."""
    camera = _exporter(http_broker, "cam0/ctl")
    last = http_broker.json("/v1/stats")["last_event_id"]

    def first_ids(params: dict, headers: dict, count: int) -> list[int]:
        ids: list[int] = []
        with (
            httpx.Client(base_url=http_broker.url, timeout=10) as client,
            client.stream("GET", "/v1/events", params=params, headers=headers) as response,
        ):
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                    if len(ids) == count:
                        break
        return ids

    assert first_ids({"last_event_id": str(last - 3)}, {}, 3) == [last - 2, last - 1, last]
    # The header, which EventSource sends when it reconnects, wins over the query.
    assert first_ids({"last_event_id": "0"}, {"Last-Event-ID": str(last - 1)}, 1) == [last]
    _end(camera)
