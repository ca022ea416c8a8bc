"""The producer's slot accounting for a stream: which slot is free, who holds what.

Pure logic, no sockets and no fds: the producer's stream calls it and does
the sending. The rules, all checked here:

- A slot is in one of three states: **free** (in the free list), **acquired**
  (loaned to the producer, which writes it) and **published** (it shows
  frame ``seq``; consumers hold it or wait for it).
- ``acquire`` hands out a free slot, oldest freed first. When none is free:
  with ``drop="block"`` it returns None (the producer waits for a release);
  with ``drop="oldest"`` it reuses the published slot with the lowest seq
  that no consumer *holds*: its frame is dropped (reason ``"overwritten"``)
  for every queue consumer still waiting for it. A held slot is never handed
  out.
- ``publish(slot, seq)`` decides, per consumer, what happens to the frame:
  a **queue** consumer gets every frame in order; while it holds fewer than
  its ``max_held`` slots the frame is delivered at once, otherwise it waits
  in that consumer's backlog and is delivered, in order, as the consumer
  releases. A **latest** consumer gets the frame only if it holds fewer than
  ``max_held`` slots at that moment; otherwise the frame is dropped for it
  (reason ``"busy"``). Consumers added after a publish never see that frame.
- A published slot is free again only when every consumer it was delivered
  to released it and no consumer still waits for it.
- ``release(consumer, slot, seq)`` must name a slot the consumer holds with
  that seq, else NotHeldError naming both. A release of a hold that was
  reclaimed is ignored (it crossed the Reclaimed message) and counted.
- ``consumer_gone`` releases everything the consumer held and forgets its
  backlog, at once.
- ``stalled(now, timeout)`` lists holds older than ``timeout``;
  ``reclaim(consumer, slot)`` takes one back as if released.

Every method that lets a consumer receive a frame returns the
``Delivery``s the caller must now send; the pool already counts them as
held. Times are ``clock()`` seconds (time.monotonic by default).
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

ConsumerMode = Literal["queue", "latest"]
DropPolicy = Literal["block", "oldest"]
DropReason = Literal["busy", "overwritten"]
_MODES: tuple[ConsumerMode, ...] = ("queue", "latest")
_DROPS: tuple[DropPolicy, ...] = ("block", "oldest")


class SlotPoolError(ValueError):
    """A call that breaks the pool's rules (a bug in the caller or the peer)."""


class NotHeldError(SlotPoolError):
    """A consumer released or reclaimed a slot it does not hold with that seq."""


class SlotState(enum.Enum):
    FREE = "free"
    ACQUIRED = "acquired"
    PUBLISHED = "published"


class Delivery(NamedTuple):
    """Send frame ``seq`` of ``slot`` to ``consumer`` now; it holds the slot from here on."""

    consumer: Hashable
    slot: int
    seq: int


class StalledHold(NamedTuple):
    consumer: Hashable
    slot: int
    seq: int
    held_for: float  # seconds


class Reclaim(NamedTuple):
    """What ``reclaim`` took back (``seq``) and the frames it let through."""

    seq: int
    held_for: float
    deliveries: list[Delivery]


@dataclass(frozen=True)
class ConsumerCounters:
    """One consumer's counts since it was added.

    ``published_since_added == delivered + sum(dropped.values()) + waiting``
    always holds.
    """

    mode: ConsumerMode
    max_held: int
    published_since_added: int
    delivered: int
    dropped: dict[DropReason, int]
    released: int
    reclaimed: int
    late_releases: int  # releases of holds already reclaimed, ignored
    held: int  # slots held now
    waiting: int  # frames in its backlog (queue mode), not yet delivered


# The per-frame methods (acquire, publish, release) are written flat: no helper calls, states
# compared by identity, slotted records, Deliveries built with tuple.__new__ (a NamedTuple's own
# __new__ is a Python function). They run once per frame and per consumer, and in Python each
# call and attribute lookup counts at tens of thousands of frames a second.
_FREE, _ACQUIRED, _PUBLISHED = SlotState.FREE, SlotState.ACQUIRED, SlotState.PUBLISHED
_new_tuple = tuple.__new__


@dataclass(slots=True)
class _Slot:
    state: SlotState = SlotState.FREE
    seq: int = -1
    held_by: dict[Hashable, float] = field(default_factory=dict)  # consumer -> held since
    waited_for_by: set[Hashable] = field(default_factory=set)  # queue consumers with it in their backlog


@dataclass(slots=True)
class _Consumer:
    mode: ConsumerMode
    max_held: int
    held: dict[int, int] = field(default_factory=dict)  # slot -> seq
    backlog: deque[int] = field(default_factory=deque)  # slots, oldest frame first
    reclaimed: dict[int, int] = field(default_factory=dict)  # slot -> seq taken back, until released
    published_since_added: int = 0
    delivered: int = 0
    dropped: dict[DropReason, int] = field(default_factory=lambda: {"busy": 0, "overwritten": 0})
    released: int = 0
    reclaim_count: int = 0
    late_releases: int = 0


class SlotPool:
    """The accounting of ``slot_count`` slots shared by a producer and its consumers.

    ``drop`` says what ``acquire`` does when no slot is free (see the module's
    rules). Not thread-safe: call it from one thread or one event loop.
    """

    def __init__(
        self, slot_count: int, drop: DropPolicy = "block", clock: Callable[[], float] = time.monotonic
    ) -> None:
        if slot_count < 1:
            raise ValueError(f"a stream needs at least one slot, not {slot_count}")
        if drop not in _DROPS:
            raise ValueError(f"drop must be one of {', '.join(_DROPS)}, not {drop!r}")
        self.slot_count = slot_count
        self.drop: DropPolicy = drop
        self._clock = clock
        self._slots = [_Slot() for _ in range(slot_count)]
        self._free: deque[int] = deque(range(slot_count))
        self._consumers: dict[Hashable, _Consumer] = {}
        self._last_seq = -1
        self.published = 0

    # --- consumers -----------------------------------------------------------------

    def consumer_add(self, consumer: Hashable, mode: ConsumerMode = "queue", max_held: int = 1) -> None:
        """Start delivering to ``consumer`` from the next publish on.

        ``max_held`` is how many slots it may hold at once, 1..slot_count.
        """
        if consumer in self._consumers:
            raise SlotPoolError(f"consumer {consumer!r} is already added")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, not {mode!r}")
        if not 1 <= max_held <= self.slot_count:
            raise ValueError(f"max_held must be between 1 and the pool's {self.slot_count} slots, not {max_held}")
        self._consumers[consumer] = _Consumer(mode, max_held)

    def consumer_gone(self, consumer: Hashable) -> list[int]:
        """Release every slot ``consumer`` held and drop its backlog; forget it.

        Returns the slots it held (now released). Slots nobody else holds or
        waits for become free.
        """
        state = self._consumer(consumer)
        del self._consumers[consumer]
        held = list(state.held)
        for slot in held:
            self._slots[slot].held_by.pop(consumer)
            self._free_if_unused(slot)
        for slot in state.backlog:
            self._slots[slot].waited_for_by.discard(consumer)
            self._free_if_unused(slot)
        return held

    def consumers(self) -> list[Hashable]:
        return list(self._consumers)

    def counters(self, consumer: Hashable) -> ConsumerCounters:
        state = self._consumer(consumer)
        return ConsumerCounters(
            mode=state.mode,
            max_held=state.max_held,
            published_since_added=state.published_since_added,
            delivered=state.delivered,
            dropped=dict(state.dropped),
            released=state.released,
            reclaimed=state.reclaim_count,
            late_releases=state.late_releases,
            held=len(state.held),
            waiting=len(state.backlog),
        )

    # --- the producer's side ---------------------------------------------------------

    def acquire(self) -> int | None:
        """Loan the producer a slot to write, or None when none may be written now.

        A free slot first (the one freed longest ago). With ``drop="oldest"``
        and none free, the published slot with the lowest seq that no consumer
        holds: its frame is dropped ("overwritten") for the consumers waiting
        for it. The slot must then be published or abandoned.
        """
        slot: int | None
        if self._free:
            slot = self._free.popleft()
        elif self.drop == "oldest" and (slot := self._oldest_unheld()) is not None:
            self._overwrite(slot)
        else:
            return None
        self._slots[slot].state = _ACQUIRED
        return slot

    def abandon(self, slot: int) -> None:
        """Give an acquired slot back unpublished; it is free again."""
        self._expect(slot, SlotState.ACQUIRED, "abandon")
        self._slots[slot].state = SlotState.FREE
        self._free.append(slot)

    def publish(self, slot: int, seq: int) -> list[Delivery]:
        """Publish frame ``seq`` in the acquired ``slot``; return whom to send it to now.

        ``seq`` must be greater than every seq published before. Queue
        consumers at their cap get it later (from ``release``/``reclaim``);
        latest consumers at their cap have it dropped ("busy"). With no one
        to send it to, or wait for it, the slot is free again at once.
        """
        if not 0 <= slot < self.slot_count or self._slots[slot].state is not _ACQUIRED:
            self._expect(slot, SlotState.ACQUIRED, "publish")  # raises, naming what is wrong
        if seq <= self._last_seq:
            raise SlotPoolError(
                f"publish of seq {seq} in slot {slot}: seq must exceed the last published {self._last_seq}"
            )
        self._last_seq = seq
        self.published += 1
        entry = self._slots[slot]
        entry.state = _PUBLISHED
        entry.seq = seq
        now = self._clock()
        deliveries: list[Delivery] = []
        held_by = entry.held_by
        for consumer, state in self._consumers.items():
            state.published_since_added += 1
            if len(state.held) < state.max_held and not state.backlog:
                # Delivered now (what _deliver does, inline).
                state.held[slot] = seq
                state.delivered += 1
                held_by[consumer] = now
                deliveries.append(_new_tuple(Delivery, (consumer, slot, seq)))
            elif state.mode == "queue":
                state.backlog.append(slot)
                entry.waited_for_by.add(consumer)
            else:
                state.dropped["busy"] += 1
        if not held_by and not entry.waited_for_by:  # nobody to send it to: free again at once
            entry.state = _FREE
            self._free.append(slot)
        return deliveries

    # --- the consumers' side ---------------------------------------------------------

    def release(self, consumer: Hashable, slot: int, seq: int) -> list[Delivery]:
        """``consumer`` is done with ``slot`` showing ``seq``; return what it may receive now.

        Raises NotHeldError unless the consumer holds that slot with that seq
        (or held it until it was reclaimed: then the release is ignored and
        counted as late). The slot is free once nobody holds or waits for it.
        """
        state = self._consumers.get(consumer)
        if state is None:
            state = self._consumer(consumer)  # raises, naming the consumer
        held = state.held
        if held.get(slot) != seq:
            if state.reclaimed.get(slot) == seq:
                del state.reclaimed[slot]
                state.late_releases += 1
                return []
            raise NotHeldError(self._not_held(consumer, state, slot, seq, "released"))
        del held[slot]
        entry = self._slots[slot]
        entry.held_by.pop(consumer)
        state.released += 1
        if entry.state is _PUBLISHED and not entry.held_by and not entry.waited_for_by:
            entry.state = _FREE
            self._free.append(slot)
        if not state.backlog:
            return []
        return self._deliver_backlog(consumer, state)

    def stalled(self, now: float, timeout: float) -> list[StalledHold]:
        """Holds older than ``timeout`` seconds at ``now``, longest held first."""
        found = [
            StalledHold(consumer, slot, entry.seq, now - since)
            for slot, entry in enumerate(self._slots)
            for consumer, since in entry.held_by.items()
            if now - since > timeout
        ]
        found.sort(key=lambda hold: -hold.held_for)
        return found

    def reclaim(self, consumer: Hashable, slot: int) -> Reclaim:
        """Take ``slot`` back from ``consumer`` as if it had released it.

        The caller tells the consumer (a Reclaimed message); a release the
        consumer sends for it afterwards is ignored. Raises NotHeldError when
        the consumer does not hold the slot.
        """
        state = self._consumer(consumer)
        seq = state.held.get(slot)
        if seq is None:
            raise NotHeldError(self._not_held(consumer, state, slot, None, "reclaimed"))
        del state.held[slot]
        held_for = self._clock() - self._slots[slot].held_by.pop(consumer)
        state.reclaimed[slot] = seq
        state.reclaim_count += 1
        self._free_if_unused(slot)
        return Reclaim(seq, held_for, self._deliver_backlog(consumer, state))

    # --- introspection ---------------------------------------------------------------

    @property
    def free_count(self) -> int:
        """Slots ``acquire`` can hand out without dropping anything."""
        return len(self._free)

    def slot_state(self, slot: int) -> SlotState:
        return self._slots[slot].state

    def holders(self, slot: int) -> dict[Hashable, float]:
        """Consumers holding ``slot`` now, each with the time it has held it since."""
        return dict(self._slots[slot].held_by)

    def waiting_for(self, slot: int) -> set[Hashable]:
        """Queue consumers with ``slot``'s frame in their backlog."""
        return set(self._slots[slot].waited_for_by)

    def held(self, consumer: Hashable) -> dict[int, int]:
        """What ``consumer`` holds now: slot -> seq."""
        return dict(self._consumer(consumer).held)

    def slot_states(self) -> list[SlotState]:
        """Each slot's state, by index."""
        return [entry.state for entry in self._slots]

    # --- internals -------------------------------------------------------------------

    def _consumer(self, consumer: Hashable) -> _Consumer:
        try:
            return self._consumers[consumer]
        except KeyError:
            raise SlotPoolError(f"consumer {consumer!r} is not a consumer of this pool") from None

    def _expect(self, slot: int, state: SlotState, verb: str) -> None:
        if not 0 <= slot < self.slot_count:
            raise SlotPoolError(f"{verb} of slot {slot}: the pool has slots 0..{self.slot_count - 1}")
        if self._slots[slot].state is not state:
            raise SlotPoolError(f"{verb} of slot {slot}: it is {self._slots[slot].state.value}, not {state.value}")

    def _deliver(self, consumer: Hashable, state: _Consumer, slot: int, seq: int, now: float) -> None:
        state.held[slot] = seq
        state.delivered += 1
        self._slots[slot].held_by[consumer] = now

    def _deliver_backlog(self, consumer: Hashable, state: _Consumer) -> list[Delivery]:
        deliveries: list[Delivery] = []
        now = self._clock()
        while state.backlog and len(state.held) < state.max_held:
            slot = state.backlog.popleft()
            entry = self._slots[slot]
            entry.waited_for_by.discard(consumer)
            self._deliver(consumer, state, slot, entry.seq, now)
            deliveries.append(Delivery(consumer, slot, entry.seq))
        return deliveries

    def _free_if_unused(self, slot: int) -> None:
        entry = self._slots[slot]
        if entry.state is SlotState.PUBLISHED and not entry.held_by and not entry.waited_for_by:
            entry.state = SlotState.FREE
            self._free.append(slot)

    def _oldest_unheld(self) -> int | None:
        candidates = [
            (entry.seq, slot)
            for slot, entry in enumerate(self._slots)
            if entry.state is SlotState.PUBLISHED and not entry.held_by
        ]
        return min(candidates)[1] if candidates else None

    def _overwrite(self, slot: int) -> None:
        entry = self._slots[slot]
        for consumer in entry.waited_for_by:
            state = self._consumers[consumer]
            state.backlog.remove(slot)
            state.dropped["overwritten"] += 1
        entry.waited_for_by.clear()

    def _not_held(self, consumer: Hashable, state: _Consumer, slot: int, seq: int | None, verb: str) -> str:
        holds = ", ".join(f"slot {s} seq {q}" for s, q in sorted(state.held.items())) or "nothing"
        what = f"slot {slot}" if seq is None else f"slot {slot} seq {seq}"
        return f"consumer {consumer!r} {verb} {what} but holds {holds}"
