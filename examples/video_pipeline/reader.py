"""A consumer's side of a stream of pictures: each frame's bytes and layout, and what stays mapped.

The broker attached and mapped every slot of the stream for this consumer
when it subscribed (``session.subscribe``); a frame names its slot and the
generation of the slot's buffer it was written at. After a resolution
change (``stream.move``) the SDK re-maps by itself before it hands out a
frame of the new generation, and the frame shows that generation's layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

ACCEPT = ["segments", "memfd"]


def frame_view(frame: Any) -> tuple[memoryview, dict]:
    """The frame's bytes (read-only, this process's mapping) and their layout. Drop both before release.

    ``frame.mapping`` is the mapping the SDK reads the frame through: it
    shows the frame's generation (the SDK waited for the re-map after a
    move), and ``frame.layout`` is the producer's layout at that generation.
    """
    if frame.mapping.generation != frame.generation:  # the SDK's promise, checked: never a mixed frame
        raise RuntimeError(
            f"frame {frame.seq} in slot {frame.slot} was written at generation {frame.generation}, "
            f"but this consumer reads it through a mapping of generation {frame.mapping.generation}"
        )
    return frame.memoryview(), frame.layout


class MapCounter:
    """Counts the distinct mappings a subscription's frames were read through (the first maps and the re-maps)."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.seen: set[int] = set()

    def note(self, frame: Any) -> None:
        mapping = frame.mapping
        if mapping.id not in self.seen:
            self.seen.add(mapping.id)
            self.meter.fds += len(mapping.fds)

    @property
    def maps(self) -> int:
        return len(self.seen)


def inodes(subscription: Any) -> set[int]:
    """The inodes of the memfds a subscription maps now."""
    found: set[int] = set()
    for attachment in subscription.attachments:
        if attachment.mapping is not None:
            found.update(os.fstat(fd).st_ino for fd in attachment.mapping.fds)
    return found


def mapped_regions(exclude: Iterable[int] = ()) -> int:
    """How many regions of this process's address space map stream slot memfds (leaving out ``exclude`` inodes).

    One per slot when every re-map let go of the old backing; more means
    views taken before a move still pin old pages.
    """
    skip = set(exclude)
    count = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/memfd:bufbroker") and int(fields[4]) not in skip:
                count += 1
    return count
