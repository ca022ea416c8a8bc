"""The producer's slot accounting: each rule of bufbroker.slotpool as a test, then properties."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bufbroker.slotpool import Delivery, NotHeldError, SlotPool, SlotPoolError, SlotState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def publish_next(pool: SlotPool, seq: int) -> tuple[int, list[Delivery]]:
    slot = pool.acquire()
    assert slot is not None, "expected a free slot"
    return slot, pool.publish(slot, seq)


# --- acquire / publish -----------------------------------------------------------------


def test_acquire_hands_out_free_slots_oldest_freed_first():
    pool = SlotPool(3)
    assert [pool.acquire(), pool.acquire(), pool.acquire()] == [0, 1, 2]
    assert pool.acquire() is None
    pool.abandon(1)
    pool.abandon(0)
    assert pool.acquire() == 1


def test_publish_with_no_consumers_frees_the_slot_at_once():
    pool = SlotPool(1)
    slot, deliveries = publish_next(pool, 1)
    assert deliveries == []
    assert pool.slot_state(slot) is SlotState.FREE
    assert pool.published == 1


def test_publish_requires_an_acquired_slot_and_a_growing_seq():
    pool = SlotPool(2)
    with pytest.raises(SlotPoolError, match="slot 0: it is free, not acquired"):
        pool.publish(0, 1)
    with pytest.raises(SlotPoolError, match=r"slots 0\.\.1"):
        pool.publish(5, 1)
    publish_next(pool, 7)
    slot = pool.acquire()
    assert slot is not None
    with pytest.raises(SlotPoolError, match=r"seq 7 in slot .*must exceed the last published 7"):
        pool.publish(slot, 7)


def test_a_slot_is_free_only_when_every_consumer_it_was_sent_to_released_it():
    pool = SlotPool(2)
    pool.consumer_add("a")
    pool.consumer_add("b")
    slot, deliveries = publish_next(pool, 1)
    assert deliveries == [Delivery("a", slot, 1), Delivery("b", slot, 1)]
    pool.release("a", slot, 1)
    assert pool.slot_state(slot) is SlotState.PUBLISHED
    assert pool.holders(slot).keys() == {"b"}
    pool.release("b", slot, 1)
    assert pool.slot_state(slot) is SlotState.FREE


def test_a_late_joiner_receives_from_the_next_frame_on():
    pool = SlotPool(2)
    pool.consumer_add("early", max_held=2)
    first, _ = publish_next(pool, 1)
    pool.consumer_add("late", max_held=2)
    second, deliveries = publish_next(pool, 2)
    assert Delivery("late", second, 2) in deliveries
    assert pool.held("late") == {second: 2}
    assert pool.counters("late").published_since_added == 1
    pool.release("early", first, 1)
    assert pool.slot_state(first) is SlotState.FREE


# --- queue consumers -------------------------------------------------------------------


def test_queue_consumer_at_its_cap_gets_the_frames_later_in_order():
    pool = SlotPool(4)
    pool.consumer_add("q", mode="queue", max_held=1)
    s1, d1 = publish_next(pool, 1)
    s2, d2 = publish_next(pool, 2)
    s3, d3 = publish_next(pool, 3)
    assert d1 == [Delivery("q", s1, 1)] and d2 == [] and d3 == []
    assert pool.waiting_for(s2) == {"q"}
    assert pool.release("q", s1, 1) == [Delivery("q", s2, 2)]
    assert pool.release("q", s2, 2) == [Delivery("q", s3, 3)]
    assert pool.counters("q").delivered == 3


def test_queue_consumer_at_its_cap_blocks_the_producer_when_drop_is_block():
    pool = SlotPool(2, drop="block")
    pool.consumer_add("q", max_held=1)
    s1, _ = publish_next(pool, 1)
    publish_next(pool, 2)  # waits in q's backlog
    assert pool.acquire() is None
    pool.release("q", s1, 1)
    assert pool.acquire() == s1


def test_drop_oldest_reuses_the_oldest_published_slot_no_consumer_holds():
    pool = SlotPool(3, drop="oldest")
    pool.consumer_add("q", max_held=1)
    s1, _ = publish_next(pool, 1)  # held by q
    s2, _ = publish_next(pool, 2)  # waiting
    s3, _ = publish_next(pool, 3)  # waiting
    reused = pool.acquire()
    assert reused == s2, "seq 2 is the oldest frame nobody holds"
    counters = pool.counters("q")
    assert counters.dropped["overwritten"] == 1
    assert counters.waiting == 1
    pool.publish(s2, 4)
    assert pool.release("q", s1, 1) == [Delivery("q", s3, 3)]


def test_drop_oldest_never_hands_out_a_held_slot():
    pool = SlotPool(2, drop="oldest")
    pool.consumer_add("q", max_held=2)
    publish_next(pool, 1)
    publish_next(pool, 2)
    assert pool.acquire() is None


# --- latest consumers ------------------------------------------------------------------


def test_latest_consumer_has_frames_published_while_it_is_busy_dropped_and_counted():
    pool = SlotPool(4)
    pool.consumer_add("l", mode="latest")
    s1, d1 = publish_next(pool, 1)
    s2, d2 = publish_next(pool, 2)
    assert d1 == [Delivery("l", s1, 1)]
    assert d2 == []
    assert pool.slot_state(s2) is SlotState.FREE, "a dropped frame does not keep its slot"
    assert pool.release("l", s1, 1) == [], "latest never replays what it missed"
    s3, d3 = publish_next(pool, 3)
    assert d3 == [Delivery("l", s3, 3)]
    counters = pool.counters("l")
    assert (counters.delivered, counters.dropped["busy"], counters.released) == (2, 1, 1)


def test_latest_consumer_never_blocks_a_queue_consumer_or_the_producer():
    pool = SlotPool(2)
    pool.consumer_add("l", mode="latest")
    pool.consumer_add("q", mode="queue", max_held=2)
    s1, _ = publish_next(pool, 1)
    s2, d2 = publish_next(pool, 2)
    assert d2 == [Delivery("q", s2, 2)]
    pool.release("q", s2, 2)
    assert pool.acquire() == s2


# --- release ---------------------------------------------------------------------------


def test_release_of_a_slot_not_held_with_that_seq_names_consumer_and_slot():
    pool = SlotPool(2)
    pool.consumer_add("cam")
    slot, _ = publish_next(pool, 5)
    with pytest.raises(NotHeldError, match=rf"consumer 'cam' released slot {slot} seq 4 but holds slot {slot} seq 5"):
        pool.release("cam", slot, 4)
    with pytest.raises(NotHeldError, match="released slot 1 seq 5 but holds"):
        pool.release("cam", 1, 5)
    pool.release("cam", slot, 5)
    with pytest.raises(NotHeldError, match="but holds nothing"):
        pool.release("cam", slot, 5)


def test_release_by_an_unknown_consumer_is_refused():
    pool = SlotPool(1)
    with pytest.raises(SlotPoolError, match="consumer 'ghost' is not a consumer"):
        pool.release("ghost", 0, 1)


def test_consumer_options_are_checked_when_it_is_added():
    pool = SlotPool(2)
    with pytest.raises(ValueError, match="max_held must be between 1 and the pool's 2"):
        pool.consumer_add("a", max_held=3)
    with pytest.raises(ValueError, match="mode must be one of queue, latest"):
        pool.consumer_add("a", mode="fifo")  # type: ignore[arg-type]
    pool.consumer_add("a")
    with pytest.raises(SlotPoolError, match="already added"):
        pool.consumer_add("a")
    with pytest.raises(ValueError, match="drop must be one of block, oldest"):
        SlotPool(2, drop="newest")  # type: ignore[arg-type]


# --- consumer_gone ---------------------------------------------------------------------


def test_consumer_gone_releases_everything_it_held_at_once():
    pool = SlotPool(3)
    pool.consumer_add("dead", max_held=2)
    pool.consumer_add("alive", max_held=3)
    s1, _ = publish_next(pool, 1)
    s2, _ = publish_next(pool, 2)
    s3, _ = publish_next(pool, 3)  # waits in dead's backlog
    pool.release("alive", s2, 2)
    assert sorted(pool.consumer_gone("dead")) == sorted([s1, s2])
    assert pool.slot_state(s2) is SlotState.FREE
    assert pool.holders(s1).keys() == {"alive"}
    assert pool.waiting_for(s3) == set()
    assert pool.consumers() == ["alive"]


# --- stalls ----------------------------------------------------------------------------


def test_stalled_lists_holds_older_than_the_timeout_longest_first():
    clock = Clock()
    pool = SlotPool(3, clock=clock)
    pool.consumer_add("slow", max_held=3)
    pool.consumer_add("fast", max_held=3)
    s1, _ = publish_next(pool, 1)
    clock.now += 1
    s2, _ = publish_next(pool, 2)
    pool.release("fast", s1, 1)
    pool.release("fast", s2, 2)
    stalls = pool.stalled(clock.now + 2.5, timeout=2.0)
    assert [(h.consumer, h.slot, h.seq, h.held_for) for h in stalls] == [("slow", s1, 1, 3.5), ("slow", s2, 2, 2.5)]
    assert pool.stalled(clock.now + 1, timeout=2.0) == []


def test_reclaim_takes_the_slot_back_and_lets_the_backlog_through():
    clock = Clock()
    pool = SlotPool(2, clock=clock)
    pool.consumer_add("q", max_held=1)
    s1, _ = publish_next(pool, 1)
    s2, _ = publish_next(pool, 2)
    clock.now += 3
    reclaim = pool.reclaim("q", s1)
    assert (reclaim.seq, reclaim.held_for, reclaim.deliveries) == (1, 3.0, [Delivery("q", s2, 2)])
    assert pool.slot_state(s1) is SlotState.FREE
    counters = pool.counters("q")
    assert (counters.reclaimed, counters.held) == (1, 1)


def test_a_release_that_crossed_the_reclaim_is_ignored_and_counted():
    pool = SlotPool(2)
    pool.consumer_add("q")
    s1, _ = publish_next(pool, 1)
    pool.reclaim("q", s1)
    assert pool.release("q", s1, 1) == []
    assert pool.counters("q").late_releases == 1
    with pytest.raises(NotHeldError):
        pool.release("q", s1, 1)


def test_reclaim_of_a_slot_not_held_is_refused():
    pool = SlotPool(2)
    pool.consumer_add("q")
    with pytest.raises(NotHeldError, match="consumer 'q' reclaimed slot 0 but holds nothing"):
        pool.reclaim("q", 0)


# --- properties ------------------------------------------------------------------------

CONSUMERS = ["c0", "c1", "c2", "c3"]


class SlotPoolMachine(RuleBasedStateMachine):
    """Random producers and consumers against the rules every state must keep."""

    @initialize(slot_count=st.integers(1, 5), drop=st.sampled_from(["block", "oldest"]))
    def start(self, slot_count, drop):
        self.clock = Clock()
        self.pool = SlotPool(slot_count, drop=drop, clock=self.clock)
        self.seq = 0
        self.held: dict[str, dict[int, int]] = {}  # what the consumers were told they hold
        self.acquired: set[int] = set()
        self.last_delivered: dict[str, int] = {}

    def _take(self, deliveries):
        for consumer, slot, seq in deliveries:
            assert slot not in self.held[consumer], "a consumer was sent a slot it already holds"
            assert seq > self.last_delivered.get(consumer, 0), "a consumer got frames out of order"
            self.last_delivered[consumer] = seq
            self.held[consumer][slot] = seq

    @rule(consumer=st.sampled_from(CONSUMERS), mode=st.sampled_from(["queue", "latest"]), max_held=st.integers(1, 5))
    def add(self, consumer, mode, max_held):
        if consumer in self.held:
            return
        self.pool.consumer_add(consumer, mode=mode, max_held=min(max_held, self.pool.slot_count))
        self.held[consumer] = {}
        self.last_delivered.pop(consumer, None)

    @rule()
    def acquire(self):
        slot = self.pool.acquire()
        if slot is None:
            return
        held_anywhere = {s for holds in self.held.values() for s in holds}
        assert slot not in held_anywhere, "a slot was handed out while a consumer holds it"
        assert slot not in self.acquired
        self.acquired.add(slot)

    @precondition(lambda self: self.acquired)
    @rule(data=st.data())
    def publish(self, data):
        slot = data.draw(st.sampled_from(sorted(self.acquired)))
        self.acquired.discard(slot)
        self.seq += data.draw(st.integers(1, 3))
        self._take(self.pool.publish(slot, self.seq))

    @precondition(lambda self: self.acquired)
    @rule(data=st.data())
    def abandon(self, data):
        slot = data.draw(st.sampled_from(sorted(self.acquired)))
        self.acquired.discard(slot)
        self.pool.abandon(slot)

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def release(self, data):
        consumer = data.draw(st.sampled_from(sorted(c for c, holds in self.held.items() if holds)))
        slot = data.draw(st.sampled_from(sorted(self.held[consumer])))
        seq = self.held[consumer].pop(slot)
        self._take(self.pool.release(consumer, slot, seq))

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def reclaim(self, data):
        consumer = data.draw(st.sampled_from(sorted(c for c, holds in self.held.items() if holds)))
        slot = data.draw(st.sampled_from(sorted(self.held[consumer])))
        seq = self.held[consumer].pop(slot)
        reclaim = self.pool.reclaim(consumer, slot)
        assert reclaim.seq == seq
        self._take(reclaim.deliveries)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def gone(self, data):
        consumer = data.draw(st.sampled_from(sorted(self.held)))
        others_before = {c: self.pool.held(c) for c in self.held if c != consumer}
        freed = self.pool.consumer_gone(consumer)
        assert sorted(freed) == sorted(self.held.pop(consumer)), "consumer_gone freed other than its holds"
        assert {c: self.pool.held(c) for c in self.held} == others_before, "consumer_gone touched other holds"
        for slot in freed:
            if not any(slot in holds for holds in self.held.values()) and not self.pool.waiting_for(slot):
                assert self.pool.slot_state(slot) is SlotState.FREE

    @rule()
    def time_passes(self):
        self.clock.now += 1

    @invariant()
    def pool_agrees_with_what_consumers_were_told(self):
        if not hasattr(self, "pool"):
            return
        for consumer, holds in self.held.items():
            assert self.pool.held(consumer) == holds

    @invariant()
    def every_published_frame_is_delivered_dropped_or_waiting(self):
        if not hasattr(self, "pool"):
            return
        for consumer in self.held:
            c = self.pool.counters(consumer)
            assert c.published_since_added == c.delivered + sum(c.dropped.values()) + c.waiting
            assert c.held <= c.max_held
            if c.mode == "latest":
                assert c.waiting == 0
            if c.waiting:
                assert c.held == c.max_held, "a queue consumer waits for frames although it has room"

    @invariant()
    def every_slot_is_free_acquired_or_in_use(self):
        if not hasattr(self, "pool"):
            return
        for slot, state in enumerate(self.pool.slot_states()):
            in_use = bool(self.pool.holders(slot) or self.pool.waiting_for(slot))
            assert (state is SlotState.ACQUIRED) == (slot in self.acquired)
            assert (state is SlotState.PUBLISHED) == in_use, f"slot {slot} is {state} but in use={in_use}"
        assert self.pool.free_count == self.pool.slot_states().count(SlotState.FREE)

    @invariant()
    def block_policy_never_overwrites(self):
        if not hasattr(self, "pool") or self.pool.drop != "block":
            return
        for consumer in self.held:
            assert self.pool.counters(consumer).dropped["overwritten"] == 0


SlotPoolMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_slot_pool_rules_hold_for_any_sequence_of_calls = SlotPoolMachine.TestCase
