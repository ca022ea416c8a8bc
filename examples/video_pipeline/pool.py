"""The decoder's pool: which slots are free, and who still reads the others.

A slot goes back to the pool only when every consumer has released it,
so the decoder never writes into, or moves, a buffer a consumer may be
reading.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import wait

from examples.video_pipeline.handoff import END, RELEASE, Channel


class SlotPool:
    """``count`` slots handed to the consumers listening on ``releases``.

    ``releases`` maps a consumer's name to the channel on which it sends
    RELEASE(slot, seq) messages, then RELEASE(END, 0) once it detached.
    """

    def __init__(self, count: int, releases: dict[str, Channel]) -> None:
        self.free: deque[int] = deque(range(count))
        self.holders: list[set[str]] = [set() for _ in range(count)]
        self.holding: list[int] = [-1] * count  # frame seq each slot holds
        self.releases = releases
        self.detached: set[str] = set()

    def hand_out(self, slot: int, seq: int) -> None:
        """Mark ``slot`` as holding frame ``seq``, read by every consumer."""
        self.holders[slot] = set(self.releases)
        self.holding[slot] = seq

    def take(self, timeout: float) -> int:
        """A free slot, waiting for releases if every slot is in use."""
        while not self.free:
            self._receive(timeout)
        return self.free.popleft()

    def wait_detached(self, timeout: float) -> None:
        """Wait until every consumer released everything and detached."""
        while self.detached != set(self.releases):
            self._receive(timeout)

    def _receive(self, timeout: float) -> None:
        # A consumer that detached has closed its end: waiting on it would only report EOF.
        by_connection = {
            channel.connection: name for name, channel in self.releases.items() if name not in self.detached
        }
        ready: Sequence = wait(list(by_connection), timeout)
        if not ready:
            raise TimeoutError(f"no consumer released a slot within {timeout} s (holders: {self.holders})")
        for connection in ready:
            name = by_connection[connection]
            slot, seq = self.releases[name].receive(RELEASE)
            if slot == END:
                self.detached.add(name)
                continue
            if self.holding[slot] != seq or name not in self.holders[slot]:
                raise RuntimeError(
                    f"{name} released slot {slot} for frame {seq}, but it holds frame {self.holding[slot]}"
                )
            self.holders[slot].discard(name)
            if not self.holders[slot]:
                self.free.append(slot)
