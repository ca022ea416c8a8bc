"""The dashboard in a real headless Chromium (Debian's), driven by playwright."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.apt import APT_TIMEOUT
from tests.http.conftest import ARTIFACTS, CHROMIUM_ARGS, HttpBroker

pytestmark = pytest.mark.timeout(APT_TIMEOUT + 120)  # the first test may install chromium


def _line(process) -> dict:
    line = process.stdout.readline()
    assert line, f"the client exited with status {process.wait()}"
    return json.loads(line)


def test_dashboard_draws_the_live_graph_follows_new_importers_and_shows_traces(http_broker: HttpBroker, debian_tools):
    broker = http_broker.broker
    exporter, info = broker.exporter("--name", "camera0", "--size", str(1 << 20), "--offers", "segments,memfd")
    first = broker.spawn("holder", "camera0", "--accept", "memfd,segments")
    assert _line(first) == {"ready": True}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(debian_tools["chromium"]), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on(
                "request",
                lambda request: (
                    None if request.url.startswith(http_broker.url) else problems.append(f"went outside: {request.url}")
                ),
            )
            page.goto(http_broker.url + "/")

            graph = page.locator("#graph")
            expect(graph).to_contain_text("camera0")
            expect(graph).to_contain_text(f"pid {exporter.pid}")
            expect(graph).to_contain_text(f"pid {first.pid}")
            expect(page.locator("#live")).to_have_text("live")
            edges = page.locator("#graph [data-attachment-id]")
            expect(edges).to_have_count(1)
            expect(edges.first).to_contain_text("segments")
            expect(page.locator("#buffers-table tbody")).to_contain_text("camera0")
            expect(page.locator("#sessions-table tbody tr")).to_have_count(2)

            # A new importer attaches: the page hears it on /v1/events and redraws, no reload.
            second = broker.spawn("holder", "camera0", "--accept", "memfd")
            assert _line(second) == {"ready": True}
            expect(edges).to_have_count(2)
            expect(graph).to_contain_text(f"pid {second.pid}")
            expect(page.locator("#sessions-table tbody tr")).to_have_count(3)

            (attachment,) = http_broker.json(
                "/v1/attachments", params={"session_id": _session_of(http_broker, first.pid)}
            )["attachments"]
            page.click(f'#graph [data-attachment-id="{attachment["id"]}"] .edge-label')
            matrix = page.locator(f"#matrix-attachment-{attachment['id']}")
            expect(matrix).to_be_visible()
            expect(matrix.locator("thead th")).to_have_text(["offers ↓ / matches →", "0: memfd", "1: segments"])
            expect(matrix.locator("td.cell")).to_have_count(4)
            expect(matrix.locator("td.type-differs")).to_have_count(1)
            expect(matrix.locator("td.matched.chosen")).to_have_count(1)
            expect(matrix.locator("td.matched.chosen")).to_contain_text("matched")
            expect(matrix.locator("td.not-examined")).to_have_count(2)

            # The explain form: a dry run with its own matrix.
            page.fill("#explain-buffer", "camera0")
            page.fill("#explain-accept", "memfd")
            page.select_option("#explain-access", "read")  # read_write needs an exporter that allows writes
            page.click("#explain-form button")
            expect(page.locator("#explain-result .summary")).to_have_text("an attach would negotiate memfd")
            expect(page.locator("#matrix-explain td.matched")).to_have_count(1)
            # (format, modifier) pairs: the chosen pair in the matched cell, both lists in a refused one.
            page.fill("#explain-buffer", "")
            page.fill("#explain-offers", "memfd/NV12+XRGB8888")
            page.fill("#explain-accept", "memfd/RGB565,memfd/XRGB8888")
            page.click("#explain-form button")
            expect(page.locator("#matrix-explain td.matched.chosen")).to_contain_text("XRGB8888:LINEAR")
            expect(page.locator("#matrix-explain td.soft-mismatch")).to_contain_text(
                "the exporter offers [NV12:LINEAR, XRGB8888:LINEAR], the importer accepts [RGB565:LINEAR]"
            )

            # The live charts move: negotiations per second and fds held.
            for _ in range(20):
                http_broker.post("/v1/explain", json={"buffer_name": "camera0", "accept": ["segments"]})
            expect(page.locator("#rate-chart polyline")).to_have_count(1, timeout=5000)
            expect(page.locator("#fds-chart polyline")).to_have_count(1)
            expect(page.locator("#fds-value")).to_have_text("1")
            expect(page.locator("#events li").first).to_be_visible()
            page.wait_for_timeout(1500)  # a few chart samples for the picture

            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert problems == [], problems
        finally:
            browser.close()
    exporter.stdin.close()
    assert _line(first)["revoked"] == "exporter session ended" and _line(second)["revoked"] == "exporter session ended"
    assert exporter.wait(10) == 0 and first.wait(10) == 0 and second.wait(10) == 0


def _session_of(http: HttpBroker, pid: int) -> int:
    (session,) = [s for s in http.json("/v1/sessions")["sessions"] if s["pid"] == pid]
    return session["id"]
