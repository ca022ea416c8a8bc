"""GET /v1/events: registry changes as Server-Sent Events, in order."""

from __future__ import annotations

import json
import socket
import time

from tests.http.conftest import HttpBroker


def _line(process) -> dict:
    line = process.stdout.readline()
    assert line, f"the client exited with status {process.wait()}"
    return json.loads(line)


def test_event_stream_delivers_a_buffers_life_in_order(http_broker: HttpBroker, event_reader):
    reader = event_reader(http_broker)
    assert reader.status == 200
    broker = http_broker.broker
    with broker.connect() as exporter:
        buffer = exporter.export(4096, name="stream-me", offers=["segments", "memfd"])
        follower = broker.spawn("follower", "stream-me")
        ready = _line(follower)
        assert buffer.move(8192, reason="bigger") == []
        assert _line(follower)["moved"] == "bigger"
        buffer.revoke("bye")
        follower.stdin.close()
        assert follower.wait(10) == 0
    events = reader.until(lambda kind, data: kind == "session-ended" and data["session_id"] == exporter.id)
    follower_id = next(
        d["session_id"] for k, d in events if k == "session-opened" and d["detail"]["pid"] == follower.pid
    )
    mine = [(k, d) for k, d in events if d["session_id"] in (exporter.id, follower_id)]
    assert [k for k, _ in mine] == [
        "session-opened",  # the exporter
        "registered",
        "session-opened",  # the follower
        "negotiated",
        "attached",
        "mapped",
        "unmapped",  # it unmaps when told the buffer moves
        "moved",
        "mapped",  # and maps the new backing
        "revoked",
        "unmapped",
        "detached",
        "session-ended",  # the follower
        "unregistered",
        "session-ended",  # the exporter
    ]
    assert all(d["buffer_id"] == buffer.id for k, d in mine if not k.startswith("session-"))
    attached = next(d for k, d in mine if k == "attached")
    assert attached["attachment_id"] == ready["attachment"] and attached["detail"]["map_type"] == "segments"
    moved = next(d for k, d in mine if k == "moved")
    assert moved["detail"]["generation"] == 2 and moved["detail"]["size"] == 8192
    assert next(d for k, d in mine if k == "revoked")["detail"]["reason"] == "bye"
    seqs = [d["seq"] for _, d in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "events were lost or reordered"


def test_a_client_resuming_with_last_event_id_gets_what_it_missed(http_broker: HttpBroker, event_reader):
    first = event_reader(http_broker)
    with http_broker.broker.connect() as exporter:
        exporter.export(4096, name="before")
        last = first.until(lambda kind, data: kind == "registered")[-1][1]["seq"]
        exporter.export(4096, name="missed")
        resumed = event_reader(http_broker, **{"Last-Event-ID": str(last)})
        kind, data = resumed.next()
        assert (kind, data["seq"], data["detail"]["name"]) == ("registered", last + 1, "missed")


def test_a_client_that_stops_reading_is_dropped_and_never_stalls_the_broker(http_broker_factory, event_reader):
    http = http_broker_factory("--http-event-queue", "64")
    healthy = event_reader(http)
    port = int(http.url.rsplit(":", 1)[1])
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    try:
        stalled.sendall(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never read
        deadline = time.monotonic() + 5
        while _metric(http, "bufbroker_http_event_clients") < 2:
            assert time.monotonic() < deadline, "the stalled client never connected"
        slowest = 0.0
        reason = "r" * (256 << 10)  # big events fill the stalled client's socket buffers fast
        with http.broker.connect() as session:
            for n in range(80):
                buffer = session.export(4096, offers=["memfd"])
                buffer.revoke(reason)  # one event of 256 KiB
                buffer.unregister()
                if n % 5 == 0:
                    started = time.monotonic()
                    assert http.json("/healthz") == {"status": "ok"}
                    slowest = max(slowest, time.monotonic() - started)
                    if _metric(http, "bufbroker_http_event_clients_dropped_total") >= 1:
                        break
            deadline = time.monotonic() + 10  # a blocked write is given up after 5 s
            while _metric(http, "bufbroker_http_event_clients_dropped_total") < 1:
                assert time.monotonic() < deadline, "the stalled client was never dropped"
                time.sleep(0.1)
        assert slowest < 1.0, f"the broker took {slowest:.2f} s to answer /healthz while a client stalled"
        assert _metric(http, "bufbroker_http_event_clients") == 1  # the healthy reader stays
        assert "dropping a /v1/events client" in http.broker.log()
        # The healthy reader got every event, in order, with no gap.
        events = healthy.until(
            lambda kind, data: kind == "session-ended" and data["session_id"] == session.id, timeout=20
        )
        seqs = [d["seq"] for _, d in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert sum(1 for k, d in events if k == "revoked" and d["detail"]["reason"] == reason) == n + 1
    finally:
        stalled.close()


def _metric(http: HttpBroker, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
