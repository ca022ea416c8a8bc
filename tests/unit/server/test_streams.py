"""server/streams.py over a real Registry and Operations (tests/unit/server/world.py).

The fd channel is replaced by a small one that "sends" the way the real
deliver() does (counts the fds sent, closes the temporary ones) and can be
told a session's channel is gone, so the failure paths a real broker hits
only in races are checked here: whatever fails, nothing stays attached and
the ledger holds no link fd.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from bufbroker.v1 import broker_pb2 as pb
from bufbroker_broker.core.errors import NoCommonMappingType, PermissionDenied, ResourceExhausted, Unavailable
from bufbroker_broker.core.registry import Session
from bufbroker_broker.server.streams import StreamLimits, StreamLinkOpenedEvent, Streams, _RateLimit
from tests.unit.server.world import World, accept


@dataclass
class Channels:
    """deliver() as the fd channel server's: temporary fds are closed once 'sent' or when it fails."""

    world: World
    gone: set[int] = field(default_factory=set)  # session ids whose fd channel is closed
    sent: list[tuple[int, int]] = field(default_factory=list)  # (session id, fd count)
    connections: dict[int, Any] = field(default_factory=dict)
    next_ticket: int = 1
    stuck: int = 0  # the session id whose deliveries wait (a client not reading), until flush()
    queued: list[list[int]] = field(default_factory=list)

    async def deliver(self, session: Session, fds: list[int], temporary: list[int]) -> int:
        if session.id == self.stuck:
            self.queued.append(temporary)  # the real server closes them once sent, whoever still waits
            await asyncio.Event().wait()
        await asyncio.sleep(0)
        self.world.ledger.close_all(temporary)
        if session.id in self.gone:
            raise Unavailable("the session's fd channel is closed")
        self.world.ledger.count_sent(len(fds))
        self.sent.append((session.id, len(fds)))
        self.next_ticket += 1
        return self.next_ticket


def streams_of(world: World, **limits: Any) -> tuple[Streams, Channels, list]:
    channels = Channels(world)
    streams = Streams(world.ops, channels, StreamLimits(**limits), clock=lambda: 0.0)  # type: ignore[arg-type]
    heard: list = []
    streams.notify = lambda session, event: heard.append((session.id, event))
    return streams, channels, heard


def run(coroutine):
    return asyncio.run(coroutine)


def test_subscribe_hands_each_side_one_link_end_and_the_ledger_keeps_neither(world: World):
    streams, channels, heard = streams_of(world)
    producer, consumer = world.session(), world.session()
    stream = streams.create(producer, "cam", [world.export(producer).id, world.export(producer).id])
    held = world.ledger.held
    subscription = run(streams.subscribe(consumer, "cam", accept("memfd")))
    assert world.ledger.held == held, "both link ends were closed once sent"
    assert [(s, n) for s, n in channels.sent] == [
        (consumer.id, 1),
        (consumer.id, 1),
        (consumer.id, 1),
        (producer.id, 1),
    ]
    [(told, event)] = heard
    assert told == producer.id and isinstance(event, StreamLinkOpenedEvent) and event.link_id == subscription.link.id
    assert list(stream.links) == [subscription.link.id] and len(consumer.attachments) == 2
    assert producer.fd_count == 2 and consumer.fd_count == 0, "a link end counts only while the broker holds it"


def test_a_producer_that_cannot_take_its_end_fails_the_subscribe_and_undoes_every_slot(world: World):
    streams, channels, heard = streams_of(world)
    producer, consumer = world.session(), world.session()
    stream = streams.create(producer, "cam", [world.export(producer).id, world.export(producer).id])
    held = world.ledger.held
    channels.gone.add(producer.id)
    with pytest.raises(Unavailable, match="could not be given its end of the link"):
        run(streams.subscribe(consumer, "cam", accept("memfd")))
    assert world.ledger.held == held and not consumer.attachments and not stream.links and not heard
    assert producer.fd_count == 2 and consumer.fd_count == 0


def test_a_consumer_gone_before_its_link_end_leaves_no_link_fd(world: World):
    streams, channels, heard = streams_of(world)
    producer, consumer = world.session(), world.session()
    streams.create(producer, "cam", [world.export(producer).id])
    held = world.ledger.held
    channels.gone.add(consumer.id)
    with pytest.raises(Unavailable):
        run(streams.subscribe(consumer, "cam", accept("memfd")))
    assert world.ledger.held == held and not consumer.attachments and not heard
    assert producer.fd_count == 1 and consumer.fd_count == 0


def test_a_subscribe_cancelled_while_its_fds_are_in_flight_closes_each_fd_once(world: World):
    streams, channels, heard = streams_of(world)
    producer, consumer = world.session(), world.session()
    stream = streams.create(producer, "cam", [world.export(producer).id, world.export(producer).id])
    held = world.ledger.held
    channels.stuck = consumer.id

    async def cancelled() -> None:
        # Read access to a writable memfd: each map sends a read-only reopen, a temporary fd.
        task = asyncio.create_task(streams.subscribe(consumer, "cam", accept("memfd", access="read")))
        while not channels.queued:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancelled())
    assert channels.queued[0], "the delivery in flight owns a temporary fd"
    for temporary in channels.queued:  # the stuck delivery goes out (or its session ends) after all
        world.ledger.close_all(temporary)
    assert world.ledger.held == held and world.ledger.close_errors == 0
    assert not consumer.attachments and not stream.links and not heard


def test_a_failing_slot_undoes_the_slots_before_it_and_fails_with_its_error_and_trace(world: World):
    streams, _, heard = streams_of(world)
    producer, consumer = world.session(), world.session()
    first = world.export(producer, offers=("segments",))
    second = world.export(producer, offers=("memfd",))
    streams.create(producer, "mixed", [first.id, second.id])
    held = world.ledger.held
    with pytest.raises(NoCommonMappingType) as failed:
        run(streams.subscribe(consumer, "mixed", accept("segments")))
    assert str(failed.value).startswith(f"slot 1 of stream 'mixed' (buffer {second.id}): ")
    assert [(s.offer_type, s.match_type) for s in failed.value.trace] == [("memfd", "segments")]
    assert world.ledger.held == held and not consumer.attachments and not heard


def test_the_fd_budget_refuses_a_link_naming_the_setting(world: World):
    from bufbroker_broker.core.registry import SessionLimits

    small = World(limits=SessionLimits(max_fds=1))
    try:
        streams, _, _ = streams_of(small)
        producer, consumer = small.session(), small.session()
        streams.create(producer, "full", [small.export(producer).id])
        with pytest.raises(ResourceExhausted, match="max_fds_per_session"):
            run(streams.subscribe(consumer, "full", accept("memfd")))
        assert not consumer.attachments
    finally:
        small.close()


def test_a_consumer_reports_only_its_own_link(world: World):
    streams, _, _ = streams_of(world)
    producer, consumer, stranger = world.session(), world.session(), world.session()
    stream = streams.create(producer, "cam", [world.export(producer).id, world.export(producer).id])
    link = run(streams.subscribe(consumer, "cam", accept("memfd"))).link
    streams.report(consumer, stream.id, None, [pb.LinkReport(link_id=link.id)])
    with pytest.raises(PermissionDenied):
        streams.report(stranger, stream.id, None, [pb.LinkReport(link_id=link.id)])
    with pytest.raises(PermissionDenied, match="only the producer"):
        streams.report(consumer, stream.id, pb.StreamCounters(published=1), [])


def test_the_session_end_of_the_producer_deletes_its_streams_and_of_a_consumer_forgets_its_links(world: World):
    streams, _, _ = streams_of(world)
    producer, consumer = world.session(), world.session()
    stream = streams.create(producer, "cam", [world.export(producer).id, world.export(producer).id])
    run(streams.subscribe(consumer, "cam", accept("memfd")))
    streams.session_ended(consumer)
    assert stream.links == {} and streams.by_name == {"cam": stream}
    streams.session_ended(producer)
    assert streams.streams == {} and stream.deleted


def test_reports_refill_at_the_rate_with_bursts_of_as_many():
    now = [0.0]
    limit = _RateLimit(4.0, lambda: now[0])
    assert [limit.take((1, 1)) for _ in range(5)] == [True] * 4 + [False]
    assert limit.take((2, 1)), "another session's bucket is its own"
    now[0] = 0.25
    assert limit.take((1, 1)) and not limit.take((1, 1))
    limit.forget(lambda key: key[0] != 1)
    assert limit.take((1, 1)), "a forgotten bucket starts full"
