"""The dashboard's streams panel in a real headless Chromium, with a real producer and consumers.

One consumer keeps up; the other (latest mode) holds its first frame past
the stream's short stall timeout with on_stall="report". The page shows the
stream's live fps, each consumer's fps and slot strip, the stalled consumer
in red, and the sessions' names beside their pids; it follows the stream
events (a new consumer, the producer's end) without a reload.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.apt import APT_TIMEOUT
from tests.http.conftest import ARTIFACTS, CHROMIUM_ARGS, HttpBroker
from tests.integration.test_streams import consumer, finish, producer

pytestmark = pytest.mark.timeout(APT_TIMEOUT + 120)  # the first test may install chromium

RED = "rgb(185, 28, 28)"  # style.css --revoked


def _number(locator, attribute: str = "data-fps") -> float:
    value = locator.get_attribute(attribute)
    return float(value) if value else 0.0


def test_the_dashboard_shows_each_stream_with_live_fps_slot_strips_and_the_stalled_consumer_in_red(
    http_broker: HttpBroker, debian_tools
):
    broker = http_broker.broker
    source = producer(broker, "cam0", "--slots", "3", "--stall-timeout", "0.3", "--on-stall", "report")
    flowing = consumer(broker, "cam0")
    source.send("wait-consumers 1")
    source.expect("consumers")
    source.send("publish 1000 0.02")  # 50 fps for as long as the test looks (it kills the producer)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(debian_tools["chromium"]), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.goto(http_broker.url + "/")
            expect(page.locator("#live")).to_have_text("live")

            card = page.locator('.stream[data-stream-name="cam0"]')
            expect(card).to_contain_text(f"producer pid {source.process.pid} (test-producer)")
            ok = card.locator(f'tr.consumer[data-pid="{flowing.process.pid}"]')
            expect(ok).to_contain_text(f"pid {flowing.process.pid} (test-consumer)")
            expect(ok.locator(".slot")).to_have_count(3)
            # Live fps: the producer's, and the consumer's from its delivered count between reports.
            page.wait_for_function(
                "() => Number(document.querySelector('.stream[data-stream-name=\"cam0\"] .stream-fps')"
                ".getAttribute('data-fps')) > 10 && Number(document.querySelector('tr.consumer .fps')"
                ".getAttribute('data-fps')) > 10",
                timeout=10_000,
            )
            assert _number(card.locator(".stream-fps")) > 10 and _number(ok.locator(".fps")) > 10
            expect(ok).not_to_have_class("consumer stalled")

            # A second consumer joins (stream-linked: no reload) and holds its first frame: stalled, red.
            stuck = consumer(broker, "cam0", "--mode", "latest", "--hold-after", "1")
            stuck.expect("holding")  # a late joiner: its first frame is the next one published
            bad = card.locator(f'tr.consumer[data-pid="{stuck.process.pid}"]')
            expect(bad).to_have_class("consumer stalled", timeout=10_000)
            expect(bad.locator(".stalled-mark")).to_contain_text("stalled")
            expect(bad.locator(".slot.held")).to_have_count(1)
            expect(bad.locator(".slot")).to_have_count(3)
            assert bad.locator("td.who").evaluate("td => getComputedStyle(td).color") == RED
            assert ok.locator("td.who").evaluate("td => getComputedStyle(td).color") != RED
            expect(card.locator("tr.consumer.stalled")).to_have_count(1)

            # Names beside pids elsewhere too: the graph and the sessions table.
            expect(page.locator("#graph")).to_contain_text(f"pid {source.process.pid} (test-producer)")
            expect(page.locator("#graph")).to_contain_text(f"pid {stuck.process.pid} (test-consumer)")
            expect(page.locator("#sessions-table tbody")).to_contain_text("test-producer")
            expect(page.locator("#events")).to_contain_text("stalled")

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-streams.png"), full_page=True)

            # The producer dies: stream-deleted, the card goes.
            stuck.kill()
            source.kill()
            expect(card).to_have_count(0, timeout=10_000)
            expect(page.locator("#streams")).to_contain_text("no streams")
            assert problems == [], problems
        finally:
            browser.close()
    assert "ended" in finish(flowing)["reason"]
