"""GET /v1/buffers pages through 1,000 real buffers."""

from __future__ import annotations

from tests.http.conftest import HttpBroker

COUNT = 1000


def test_paging_through_1000_buffers_returns_each_once_in_id_order(http_broker: HttpBroker):
    with http_broker.broker.connect() as exporter:
        ids = []
        for n in range(COUNT):
            buffer = exporter.export(4096, name=f"frame-{n:04d}", labels={"parity": "even" if n % 2 == 0 else "odd"})
            buffer.close()  # the broker keeps its own fd; this process need not hold 1,000
            ids.append(buffer.id)

        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 128, **({"cursor": cursor} if cursor else {})}
            page = http_broker.json("/v1/buffers", params=params)
            pages += 1
            assert page["total"] == COUNT and len(page["buffers"]) <= 128
            seen += [b["id"] for b in page["buffers"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == 8 and seen == ids

        odd, cursor = [], None
        while True:
            page = http_broker.json(
                "/v1/buffers", params={"limit": 100, "label": "parity=odd", **({"cursor": cursor} if cursor else {})}
            )
            assert page["total"] == COUNT // 2
            odd += [b["name"] for b in page["buffers"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert odd == [f"frame-{n:04d}" for n in range(1, COUNT, 2)]

        whole = http_broker.json("/v1/buffers", params={"limit": 1000})
        assert [b["id"] for b in whole["buffers"]] == ids and whole["next_cursor"] is None
        assert http_broker.get("/v1/buffers", params={"limit": 1001}).status_code == 422
        bad = http_broker.get("/v1/buffers", params={"cursor": "page-two"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "cursor"]
