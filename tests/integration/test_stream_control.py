"""Streams' control plane against a real broker, spoken on the wire (tests/raw_client.py).

The broker names a producer's buffers a stream, waits for it on behalf of a
subscriber, attaches and maps every slot for the consumer as Attach would,
and hands each side one end of a SOCK_SEQPACKET link it keeps no copy of.
It remembers links and the counters both sides report, shows them (gRPC,
HTTP, metrics, events) and forgets them with the sessions.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

import bufbroker
from bufbroker import fdwire, protocol, specs
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import stream_pb2 as spb
from tests.http.conftest import free_port
from tests.raw_client import RawClient

SIZE = 4096


class Peer:
    """A RawClient with its event stream open (read by a thread) and fd deliveries kept by ticket."""

    def __init__(self, socket_dir) -> None:
        self.raw = RawClient(socket_dir)
        self.events: queue.Queue = queue.Queue()
        self._stream = self.raw.stub.Events(pb.EventsRequest(), metadata=self.raw.metadata)
        first = next(self._stream)
        assert first.HasField("ready"), first
        self._reader = threading.Thread(target=self._read_events, daemon=True)
        self._reader.start()
        self.delivered: dict[int, list[int]] = {}
        self.fds: list[int] = []

    def _read_events(self) -> None:
        try:
            for event in self._stream:
                self.events.put(event)
        except grpc.RpcError:
            pass

    def call(self, method: str, request):
        return self.raw.call(method, request)

    def next_event(self, kind: str, timeout: float = 5.0) -> pb.Event:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if event.WhichOneof("kind") == kind:
                return event

    def take(self, ticket: int) -> list[int]:
        """The fds delivered under ``ticket`` on the fd channel (kept open until close())."""
        while ticket not in self.delivered:
            received = self.raw.receive()
            message = received.message
            assert message is not None and message.HasField("deliver_fds"), received
            self.delivered[message.deliver_fds.ticket] = received.fds
            self.fds.extend(received.fds)
        return self.delivered[ticket]

    def export(self, nonce: str, fill: bytes = b"", **fields) -> int:
        """Register a memfd of SIZE bytes starting with ``fill``; returns its buffer id."""
        fd = os.memfd_create(nonce, os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, SIZE)
            os.pwrite(fd, fill, 0)
            self.raw.send_fds(nonce, [fd])
        finally:
            os.close(fd)
        fields.setdefault("offers", specs.offers_to_wire(["memfd"]))
        return self.raw.register(nonce, SIZE, **fields).buffer.id

    def close(self) -> None:
        self._stream.cancel()
        fdwire.close_fds(self.fds)
        self.fds.clear()
        self.raw.close()


@pytest.fixture
def peers(broker):
    made: list[Peer] = []

    def make() -> Peer:
        peer = Peer(broker.socket_dir)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def create(producer: Peer, name: str, ids: list[int], **fields) -> pb.StreamInfo:
    return producer.call("CreateStream", pb.CreateStreamRequest(name=name, slot_buffer_ids=ids, **fields)).stream


def subscribe(consumer: Peer, name: str, **fields) -> pb.SubscribeResponse:
    fields.setdefault("accept", specs.accept_to_wire(["memfd"], "read"))
    return consumer.call("Subscribe", pb.SubscribeRequest(name=name, **fields))


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value


def listed(peer: Peer, name: str = "") -> list[pb.StreamInfo]:
    return list(peer.call("ListStreams", pb.ListStreamsRequest(name=name)).streams)


def until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the broker did not get there in time"
        time.sleep(0.02)


# --- creating ------------------------------------------------------------------------------


def test_create_stream_names_the_producers_buffers_with_its_defaults(peers):
    producer = peers()
    ids = [producer.export(f"slot{k}") for k in range(3)]
    stream = create(producer, "cam0", ids, labels={"room": "lab"})
    assert stream.name == "cam0" and list(stream.slot_buffer_ids) == ids
    assert stream.max_held == 2, "max_held 0 means slots - 1"
    assert stream.stall_timeout == 2.0 and stream.on_stall == pb.STALL_POLICY_RECLAIM
    assert stream.max_meta_bytes == 4096 and dict(stream.labels) == {"room": "lab"}
    assert stream.producer_pid == os.getpid() and stream.report_age == -1
    assert [s.name for s in listed(producer)] == ["cam0"]


def test_create_stream_refusals_name_their_rule(peers):
    producer, other = peers(), peers()
    mine = producer.export("mine")
    theirs = other.export("theirs")

    error = refused(lambda: create(producer, "s", [mine, 999999]))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "slot 1: no buffer 999999" in error.details()

    error = refused(lambda: create(producer, "s", [theirs]))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "buffers its producer registered itself" in error.details()

    error = refused(lambda: create(producer, "s", list(range(1, 66))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_stream_slots" in error.details()

    error = refused(lambda: create(producer, "s", [mine, mine]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "twice" in error.details()

    error = refused(lambda: create(producer, "bad\u202ename", [mine]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "stream name" in error.details()

    create(other, "taken", [theirs])
    error = refused(lambda: create(producer, "taken", [mine]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"pid {os.getpid()}'s session" in error.details() and "unique" in error.details()

    error = refused(lambda: create(other, "again", [theirs]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "already a slot of stream" in error.details()
    assert [s.name for s in listed(producer)] == ["taken"]


# --- subscribing ---------------------------------------------------------------------------


def test_subscribe_waits_for_the_stream_and_returns_soon_after_its_creation(peers):
    producer, consumer = peers(), peers()
    ids = [producer.export(f"slot{k}") for k in range(2)]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(lambda: (subscribe(consumer, "late", wait_seconds=10), time.monotonic()))
        time.sleep(0.5)
        assert not waiting.done(), "the subscribe waits for the stream"
        create(producer, "late", ids)
        created = time.monotonic()
        response, returned = waiting.result(timeout=5)
    assert returned - created < 0.3, f"subscribe returned {returned - created:.3f} s after the stream was created"
    assert response.stream.name == "late" and len(response.slots) == 2


def test_subscribe_times_out_with_not_found_saying_how_long(peers):
    consumer = peers()
    started = time.monotonic()
    error = refused(lambda: subscribe(consumer, "nobody", wait_seconds=0.3))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "waited 0.3 s" in error.details()
    assert 0.25 < time.monotonic() - started < 2
    error = refused(lambda: subscribe(consumer, "nobody"))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no stream named 'nobody'" in error.details()
    error = refused(lambda: subscribe(consumer, "nobody", wait_seconds=301))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_each_side_gets_its_end_of_one_link_and_the_broker_keeps_none(broker, peers):
    producer, consumer = peers(), peers()
    ids = [producer.export(f"slot{k}", fill=f"slot {k}".encode()) for k in range(2)]
    create(producer, "cam0", ids)
    before = broker.settled_fd_count()

    response = subscribe(consumer, "cam0", mode=spb.CONSUMER_MODE_LATEST, max_held=5)
    assert response.max_held == 1, "capped by the stream's max_held (slots - 1)"
    assert [s.buffer_id for s in response.slots] == ids and all(s.map_type == "memfd" for s in response.slots)
    for k, slot in enumerate(response.slots):
        [fd] = consumer.take(slot.mapping.fd_ticket)
        assert os.pread(fd, 6, 0) == f"slot {k}".encode()
    [consumer_end] = consumer.take(response.link_fd_ticket)

    opened = producer.next_event("stream_link_opened").stream_link_opened
    assert opened.link_id == response.link_id and opened.stream_id == response.stream.id
    assert opened.consumer_pid == os.getpid() and opened.mode == spb.CONSUMER_MODE_LATEST and opened.max_held == 1
    [producer_end] = producer.take(opened.fd_ticket)

    ends = [socket.socket(fileno=os.dup(fd)) for fd in (producer_end, consumer_end)]
    try:
        assert all(e.type == socket.SOCK_SEQPACKET for e in ends)
        ends[0].send(b"frame 1")
        assert ends[1].recv(64) == b"frame 1"
        ends[1].send(b"release 1")
        assert ends[0].recv(64) == b"release 1"
    finally:
        for end in ends:
            end.close()
    assert broker.settled_fd_count() == before, "the broker closed both link ends once they were sent"

    [info] = listed(consumer, "cam0")
    [link] = info.consumers
    assert link.link_id == response.link_id and link.mode == spb.CONSUMER_MODE_LATEST and link.max_held == 1


def test_a_consumer_not_allowed_on_a_slot_is_refused_like_attach_and_nothing_stays_attached(broker, peers):
    producer, consumer = peers(), peers()
    open_slot = producer.export("open", allow=["any"])
    closed_slot = producer.export("closed", allow=["uid:65534"])
    create(producer, "guarded", [open_slot, closed_slot])
    error = refused(lambda: subscribe(consumer, "guarded"))
    attach = refused(
        lambda: consumer.call(
            "Attach", pb.AttachRequest(buffer_id=closed_slot, accept=specs.accept_to_wire(["memfd"], "read"))
        )
    )
    assert error.code() == attach.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().startswith("slot 1 of stream 'guarded'") and attach.details() in error.details()
    stats = consumer.call("GetStats", pb.GetStatsRequest())
    assert stats.attachments == 0 and stats.mappings == 0
    assert list(listed(producer)[0].consumers) == []
    assert producer.events.empty(), "the producer heard of no link"


def test_a_subscribe_without_a_common_type_fails_with_that_slots_trace(peers):
    producer, consumer = peers(), peers()
    create(producer, "plain", [producer.export("only-memfd")])
    error = refused(lambda: subscribe(consumer, "plain", accept=specs.accept_to_wire(["segments"], "read")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "slot 0" in error.details()
    explained = pb.ExplainResponse.FromString(dict(error.trailing_metadata())[protocol.TRACE_KEY])
    assert [(s.offer_type, s.match_type) for s in explained.trace] == [("memfd", "segments")]


def test_links_per_stream_are_capped_by_max_stream_consumers(broker_factory):
    broker = broker_factory("--max-stream-consumers", "1")
    producer, first, second = Peer(broker.socket_dir), Peer(broker.socket_dir), Peer(broker.socket_dir)
    try:
        create(producer, "one", [producer.export("a"), producer.export("b")])
        subscribe(first, "one")
        error = refused(lambda: subscribe(second, "one"))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_stream_consumers = 1" in error.details()
    finally:
        for peer in (producer, first, second):
            peer.close()


# --- sessions ending ---------------------------------------------------------------------------


def test_the_producers_session_end_deletes_its_stream(broker, peers):
    producer, consumer = peers(), peers()
    create(producer, "ends", [producer.export("a")])
    subscribe(consumer, "ends")
    producer.close()
    until(lambda: listed(consumer) == [])
    successor = peers()
    assert create(successor, "ends", [successor.export("b")]).name == "ends", "the name is free again"


def test_the_consumers_session_end_forgets_its_link(peers):
    producer, consumer = peers(), peers()
    create(producer, "stays", [producer.export("a"), producer.export("b")])
    subscribe(consumer, "stays")
    assert len(listed(producer)[0].consumers) == 1
    consumer.close()
    until(lambda: list(listed(producer)[0].consumers) == [])


def test_a_stream_ends_when_one_of_its_slot_buffers_is_unregistered(peers):
    producer = peers()
    ids = [producer.export("a"), producer.export("b")]
    create(producer, "thin", ids)
    producer.call("UnregisterBuffer", pb.UnregisterBufferRequest(buffer_id=ids[1]))
    assert listed(producer) == []
    assert create(producer, "thin", ids[:1]).slot_buffer_ids == ids[:1], "its name and other slots are free again"


def test_delete_stream_is_for_its_producer_only(peers):
    producer, other = peers(), peers()
    stream = create(producer, "mine", [producer.export("a")], labels={})
    error = refused(lambda: other.call("DeleteStream", pb.DeleteStreamRequest(stream_id=stream.id)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "only its producer" in error.details()
    producer.call("DeleteStream", pb.DeleteStreamRequest(stream_id=stream.id))
    assert listed(producer) == []


# --- reports and introspection ---------------------------------------------------------------


def _counters(**values) -> pb.StreamCounters:
    return pb.StreamCounters(**values)


def test_reports_show_in_list_streams_http_and_metrics_and_a_stall_is_one_event(broker_factory):
    port = free_port()
    broker = broker_factory("--http", f"127.0.0.1:{port}")
    producer, consumer = Peer(broker.socket_dir), Peer(broker.socket_dir)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        producer.call("SetSessionName", pb.SetSessionNameRequest(name="camera"))
        consumer.call("SetSessionName", pb.SetSessionNameRequest(name="viewer"))
        stream = create(producer, "cam0", [producer.export("a"), producer.export("b")])
        link_id = subscribe(consumer, "cam0").link_id

        def report(stalled: bool, held: int) -> None:
            producer.call(
                "ReportStreamStats",
                pb.ReportStreamStatsRequest(
                    stream_id=stream.id,
                    producer=_counters(published=41, last_seq=41, fps=30.0),
                    links=[
                        pb.LinkReport(
                            link_id=link_id,
                            counters=_counters(delivered=40, released=38, held_now=held, lag=1, longest_hold=2.5),
                            stalled=stalled,
                        )
                    ],
                ),
            )

        report(stalled=True, held=2)
        time.sleep(0.3)
        report(stalled=True, held=2)  # the same stall: no second event
        consumer.call(
            "ReportStreamStats",
            pb.ReportStreamStatsRequest(
                stream_id=stream.id,
                links=[
                    pb.LinkReport(
                        link_id=link_id,
                        # 3 frames <= 100 us, 1 <= 500 us (buckets 10, 25, 50, 100, 250, 500, ... us; not cumulative)
                        counters=_counters(
                            latency_p50_us=80,
                            latency_p99_us=300,
                            latency_buckets=[0, 0, 1, 2, 0, 1],
                            latency_sum_us=590,
                        ),
                    )
                ],
            ),
        )
        with pytest.raises(grpc.RpcError) as refused:
            consumer.call(
                "ReportStreamStats",
                pb.ReportStreamStatsRequest(
                    stream_id=stream.id,
                    links=[pb.LinkReport(link_id=link_id, counters=_counters(latency_buckets=[1] * 15))],
                ),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "15 latency buckets; the histogram has 14" in refused.value.details()

        [info] = listed(consumer, "cam0")
        assert info.producer_name == "camera" and info.producer.published == 41 and 0 <= info.report_age < 5
        [link] = info.consumers
        assert link.name == "viewer" and link.stalled
        assert link.counters.delivered == 40 and link.counters.held_now == 2 and link.counters.latency_p99_us == 300

        page = http.get("/v1/streams").json()
        assert page["total"] == 1 and page["next_cursor"] is None
        [shown] = page["streams"]
        one = http.get("/v1/streams/cam0").json()
        assert {**shown, "report_age": 0} == {**one, "report_age": 0}
        assert shown["producer"]["published"] == 41 and shown["producer_name"] == "camera"
        assert shown["consumers"][0]["counters"]["released"] == 38 and shown["consumers"][0]["stalled"] is True
        assert shown["consumers"][0]["mode"] == "queue" and shown["on_stall"] == "reclaim"
        assert http.get("/v1/streams/nothing").status_code == 404
        names = {s["name"] for s in http.get("/v1/sessions").json()["sessions"]}
        assert names >= {"camera", "viewer"}

        metrics = http.get("/metrics").text
        assert 'bufbroker_stream_frames_published_total{stream="cam0"} 41.0' in metrics
        assert f'bufbroker_stream_held_slots{{link="{link_id}",stream="cam0"}} 2.0' in metrics
        assert f'bufbroker_stream_stalled{{link="{link_id}",stream="cam0"}} 1.0' in metrics
        assert "bufbroker_stream_stalls_total 1.0" in metrics
        assert 'bufbroker_stream_handoff_latency_seconds_bucket{le="5e-05",stream="cam0"} 1.0' in metrics
        assert 'bufbroker_stream_handoff_latency_seconds_bucket{le="0.0001",stream="cam0"} 3.0' in metrics
        assert 'bufbroker_stream_handoff_latency_seconds_bucket{le="+Inf",stream="cam0"} 4.0' in metrics
        assert 'bufbroker_stream_handoff_latency_seconds_count{stream="cam0"} 4.0' in metrics
        assert 'bufbroker_stream_handoff_latency_seconds_sum{stream="cam0"} 0.00059' in metrics

        time.sleep(0.3)
        report(stalled=False, held=0)
        producer.call("DeleteStream", pb.DeleteStreamRequest(stream_id=stream.id))
        kinds = []
        with http.stream("GET", "/v1/events", params={"last_event_id": "0"}) as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    change = json.loads(line[len("data: ") :])
                    kinds.append(change["kind"])
                    if change["kind"] == "stalled":
                        assert change["detail"]["link_id"] == link_id and change["detail"]["stream"] == "cam0"
                    if change["kind"] == "stream-deleted":
                        break
        assert kinds.count("stalled") == 1 and "stream-created" in kinds and "stream-linked" in kinds
    finally:
        http.close()
        producer.close()
        consumer.close()


def test_report_stream_stats_is_rate_limited_per_session_and_stream(peers):
    producer, consumer = peers(), peers()
    stream = create(producer, "busy", [producer.export("a"), producer.export("b")])
    link_id = subscribe(consumer, "busy").link_id
    request = pb.ReportStreamStatsRequest(stream_id=stream.id, producer=_counters(published=1))
    codes = []
    for _ in range(8):
        try:
            producer.call("ReportStreamStats", request)
            codes.append("ok")
        except grpc.RpcError as error:
            codes.append(error.code())
            assert "at most 4 ReportStreamStats a second per stream" in error.details()
    assert codes[:4] == ["ok"] * 4 and grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    # Another session's budget is its own; a consumer reports only its own link.
    mine = pb.ReportStreamStatsRequest(stream_id=stream.id, links=[pb.LinkReport(link_id=link_id)])
    consumer.call("ReportStreamStats", mine)
    error = refused(
        lambda: consumer.call(
            "ReportStreamStats", pb.ReportStreamStatsRequest(stream_id=stream.id, links=[pb.LinkReport(link_id=9999)])
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no link 9999" in error.details()
    time.sleep(0.6)
    producer.call("ReportStreamStats", request)  # the bucket refills


def test_a_producer_report_without_a_link_it_reported_before_forgets_it(peers):
    producer, consumer = peers(), peers()
    stream = create(producer, "gone", [producer.export("a"), producer.export("b")])
    link_id = subscribe(consumer, "gone").link_id

    def report(*links: int) -> None:
        producer.call(
            "ReportStreamStats",
            pb.ReportStreamStatsRequest(stream_id=stream.id, links=[pb.LinkReport(link_id=i) for i in links]),
        )

    report()  # before the producer knew of the link: it stays
    assert len(listed(producer)[0].consumers) == 1
    report(link_id)
    report()
    assert list(listed(producer)[0].consumers) == []


def test_list_streams_is_paged_and_ls_reads_every_page(peers, broker):
    from bufbroker_broker.cli.ls import list_streams

    producer = peers()
    made = [create(producer, f"cam{k}", [producer.export(f"slot{k}")]).id for k in range(5)]
    first = producer.call("ListStreams", pb.ListStreamsRequest(page_size=2))
    assert [s.id for s in first.streams] == made[:2] and first.next_after_id == made[1]
    rest = producer.call("ListStreams", pb.ListStreamsRequest(after_id=first.next_after_id, page_size=10))
    assert [s.id for s in rest.streams] == made[2:] and rest.next_after_id == 0
    with bufbroker.connect(broker.socket_dir) as session:
        assert [s.name for s in list_streams(session)] == [f"cam{k}" for k in range(5)]
