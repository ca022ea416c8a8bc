"""EventHub (server/http/sse.py): registry changes, numbered, for /v1/events clients.

Driven through a real Registry and Operations over real memfds; the hub's
clients are read with next_messages, as the SSE response reads them.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker.core.registry import Change
from bufbroker_broker.server.http.sse import EventClient, EventHub, encode_change, parse_last_event_id
from tests.unit.server.world import World, accept

RW = mpb.ACCESS_READ_WRITE


def parse(message: bytes) -> tuple[int, str, dict]:
    """(id, event, data) of one SSE message."""
    fields = dict(line.split(": ", 1) for line in message.decode().strip("\n").split("\n"))
    return int(fields["id"]), fields["event"], json.loads(fields["data"])


def read(client: EventClient, timeout: float = 0.0) -> list[tuple[int, str, dict]]:
    return [parse(m) for m in asyncio.run(client.next_messages(timeout))]


def test_changes_reach_a_client_numbered_in_order(world: World):
    hub = EventHub(world.registry)
    client = hub.subscribe()
    exporter = world.session()
    buffer = world.export(exporter, name="one")
    events = read(client)
    assert [(seq, kind) for seq, kind, _ in events] == [(1, "session-opened"), (2, "registered")]
    _, _, registered = events[1]
    assert registered["seq"] == 2 and registered["buffer_id"] == buffer.id
    assert registered["session_id"] == exporter.id and registered["detail"] == {"name": "one", "size": 4096}
    assert hub.seq == 2


def test_an_event_carries_no_session_token(world: World):
    hub = EventHub(world.registry)
    client = hub.subscribe()
    session = world.session()
    text = b"".join(asyncio.run(client.next_messages(0)))
    assert session.token.encode() not in text


def test_every_client_gets_every_change(world: World):
    hub = EventHub(world.registry)
    first, second = hub.subscribe(), hub.subscribe()
    world.export(world.session())
    got = read(first)
    assert [seq for seq, _, _ in got] == [1, 2] and read(second) == got
    world.session()
    assert [seq for seq, _, _ in read(first)] == [3] and [seq for seq, _, _ in read(second)] == [3]


def test_last_event_id_replays_what_came_after_it_then_goes_live(world: World):
    hub = EventHub(world.registry)
    exporter = world.session()
    buffer = world.export(exporter)
    world.ops.attach(world.session(), buffer, accept("memfd"), RW)
    assert hub.seq == 5  # opened, registered, opened, negotiated, attached
    client = hub.subscribe(last_event_id=2)
    assert [(seq, kind) for seq, kind, _ in read(client)] == [(3, "session-opened"), (4, "negotiated"), (5, "attached")]
    world.session()
    assert [seq for seq, _, _ in read(client)] == [6]


def test_a_replayed_change_keeps_the_time_it_happened(world: World):
    hub = EventHub(world.registry)
    world.session()
    happened = hub.history[0][1]
    time.sleep(0.01)
    [(seq, _, data)] = read(hub.subscribe(last_event_id=0))
    assert seq == 1 and data["time"] == round(happened, 6)


def test_a_client_without_last_event_id_starts_live(world: World):
    hub = EventHub(world.registry)
    world.session()
    client = hub.subscribe()
    assert read(client) == []
    world.session()
    assert [seq for seq, _, _ in read(client)] == [2]


def test_the_history_remembers_only_the_latest_changes(world: World):
    hub = EventHub(world.registry, history=3)
    for _ in range(5):
        world.session()
    assert [seq for seq, _, _ in hub.history] == [3, 4, 5]
    assert [seq for seq, _, _ in read(hub.subscribe(last_event_id=0))] == [3, 4, 5]


def test_a_client_whose_queue_is_full_is_dropped_and_the_others_go_on(world: World):
    hub = EventHub(world.registry, queue_limit=2)
    slow, fast = hub.subscribe(), hub.subscribe()
    world.session()
    world.session()
    assert len(read(fast)) == 2
    world.session()  # slow's queue holds 2: it is dropped
    assert slow.dropped and slow.closed and slow not in hub.clients
    assert list(slow.queue) == [], "a dropped client resumes from the history, not its queue"
    assert hub.dropped == 1
    assert fast in hub.clients and [seq for seq, _, _ in read(fast)] == [3]
    world.session()
    assert hub.dropped == 1, "a dropped client is dropped once"


def _drop_a_slow_client(world: World, hub: EventHub) -> tuple[EventClient, int]:
    """A client (queue limit 2) that read event 1, then read nothing while 2, 3 and 4 happened."""
    slow = hub.subscribe()
    world.session()
    [(last_seen, _, _)] = read(slow)
    for _ in range(3):
        world.session()
    assert slow.dropped
    return slow, last_seen


def test_a_dropped_client_resumes_right_after_its_last_event_id(world: World):
    hub = EventHub(world.registry, queue_limit=2)
    _, last_seen = _drop_a_slow_client(world, hub)
    again = hub.subscribe(last_event_id=last_seen)
    assert [seq for seq, _, _ in read(again)][:2] == [2, 3]


def test_a_dropped_client_that_resumes_loses_no_event_silently(world: World):
    hub = EventHub(world.registry, queue_limit=2)
    _, last_seen = _drop_a_slow_client(world, hub)
    again = hub.subscribe(last_event_id=last_seen)
    seen = [seq for seq, _, _ in read(again)]
    world.session()  # event 5, live
    seen += [seq for seq, _, _ in read(again)]
    # Either every event after last_seen arrives, in order, or the stream ends as dropped so it resumes again.
    assert seen == [2, 3, 4, 5] or again.dropped, f"the resumed client got events {seen}"


def test_next_messages_waits_for_a_change_and_times_out_empty(world: World):
    hub = EventHub(world.registry)
    client = hub.subscribe()

    async def scenario():
        assert await client.next_messages(0.01) == []
        waiting = asyncio.create_task(client.next_messages(2.0))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        world.session()
        return await asyncio.wait_for(waiting, 1.0)

    [message] = asyncio.run(scenario())
    assert parse(message)[1] == "session-opened"


def test_unsubscribe_ends_the_client_and_it_hears_no_more(world: World):
    hub = EventHub(world.registry)
    client = hub.subscribe()
    hub.unsubscribe(client)
    world.session()
    assert client.closed and not client.dropped and client not in hub.clients
    assert read(client) == []


def test_close_ends_every_stream_and_later_subscribers_at_once(world: World):
    hub = EventHub(world.registry)
    clients = [hub.subscribe(), hub.subscribe()]
    hub.close()
    assert all(c.closed and not c.dropped for c in clients) and not hub.clients
    late = hub.subscribe(last_event_id=0)
    assert late.closed and late not in hub.clients


def test_a_change_is_encoded_as_one_sse_message():
    change = Change("moved", session_id=1, buffer_id=2, attachment_id=3, detail={"generation": 2})
    message = encode_change(9, change, when=1234.5)
    assert message.endswith(b"\n\n") and message.count(b"\n\n") == 1
    seq, kind, data = parse(message)
    assert (seq, kind) == (9, "moved")
    assert data == {
        "seq": 9,
        "kind": "moved",
        "time": 1234.5,
        "session_id": 1,
        "buffer_id": 2,
        "attachment_id": 3,
        "detail": {"generation": 2},
    }


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("0", 0), ("42", 42), (" 7 ", 7), ("-1", None), ("abc", None), ("", None), ("4.2", None)],
)
def test_parse_last_event_id_accepts_only_a_non_negative_integer(header, expected):
    assert parse_last_event_id(header) == expected
