"""A consumer's side of the pool: one read-only attachment per slot.

``frame(slot, generation)`` gives the bytes of a slot (a read-only
memoryview of this process's mapping) and their layout, as the decoder
wrote them at that buffer generation. After a move the SDK re-maps by
itself; the consumer only waits until the mapping of *that* generation is
in place, and takes the layout from it (``Mapping.generation``,
``Mapping.layout``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

ACCEPT = ["segments", "memfd"]


class PoolReader:
    def __init__(self, session: Any, names: Sequence[str], meter: Any, accept: Sequence[str] = ACCEPT) -> None:
        self.session = session
        self.names = list(names)
        self.meter = meter
        self.attachments = [session.attach(name, accept=list(accept), access="read", map=True) for name in names]
        self.mappings_seen: set[int] = set()
        self.maps = 0

    @property
    def map_type(self) -> str:
        return self.attachments[0].map_type

    def frame(self, slot: int, generation: int, timeout: float = 5.0) -> tuple[memoryview, dict]:
        """The mapped bytes of ``slot`` and their layout. Drop the view (and arrays over it) after use."""
        mapping = self._mapping(slot, generation, timeout)
        return mapping.memoryview(), mapping.layout

    def _mapping(self, slot: int, generation: int, timeout: float) -> Any:
        attachment = self.attachments[slot]
        deadline = time.monotonic() + timeout
        while True:
            mapping = attachment.wait_mapped(max(deadline - time.monotonic(), 0.0))
            if mapping.generation == generation:
                break
            if mapping.generation > generation:
                raise RuntimeError(
                    f"slot {slot} is at generation {mapping.generation}, the decoder wrote generation {generation}: "
                    "it moved a buffer this consumer had not released"
                )
            # Not re-mapped yet: the SDK is still handling the move.
            if time.monotonic() > deadline:
                raise TimeoutError(f"slot {slot} was not re-mapped for generation {generation} within {timeout} s")
            time.sleep(0.0005)
        if mapping.id not in self.mappings_seen:
            self.mappings_seen.add(mapping.id)
            self.maps += 1
            self.meter.fds += len(mapping.fds)
        return mapping

    def mapped_regions(self) -> int:
        """How many regions of this process's address space map the pool's memfds.

        One per slot when every re-map let go of the old backing; more
        means views taken before a move still pin old pages.
        """
        with open("/proc/self/maps") as maps:
            return sum(1 for line in maps if any(f"memfd:{name} " in line for name in self.names))

    def detach(self) -> None:
        for attachment in self.attachments:
            attachment.detach()
