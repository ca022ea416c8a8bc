"""A consumer's side of a stream of pictures: what it accepts, what was negotiated, what stays mapped.

A consumer names the (format, modifier) pairs it can read on every entry
of its accept list (``accept()``); the broker matches them against the
pair the producer's slots are in and records the one chosen on each
attachment (``negotiated()``), or refuses the subscribe with the trace
when none is in common. The broker attached and mapped every slot of the
stream for this consumer when it subscribed (``session.subscribe``); a
frame names its slot and the generation of the slot's buffer it was
written at. After a move (a resolution change, or a renegotiation to
another format) the SDK re-maps by itself before it hands out a frame of
the new generation, and the frame shows that generation's layout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from bufbroker import specs
from bufbroker.formats import LINEAR, pair_text, parse_pair

# The mapping types a stage reads pictures through, in its order: no copy either way.
MAPPING_TYPES = ("segments", "memfd")
# The accept list for a stream without formats (the analyser's 'analysed': the meta is the message).
ACCEPT = list(MAPPING_TYPES)


def parse_pairs(text: str, allowed: Sequence[str] | None = None, stage: str = "stage") -> list[str]:
    """``"YUV420,NV12:LINEAR"`` as pair texts (``["YUV420:LINEAR", "NV12:LINEAR"]``), checked against ``allowed``.

    ``allowed``: the format names the stage can read (None: any the table knows).
    """
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        fmt, modifier = parse_pair(item)
        if allowed is not None and fmt.name not in allowed:
            raise ValueError(f"the {stage} cannot read {fmt.name}: it reads {', '.join(allowed)}")
        if modifier != LINEAR:  # a tiled layout's bytes are the driver's, opaque to numpy and PyAV
            raise ValueError(f"the {stage} reads pixels with the CPU: {pair_text(fmt, modifier)} is not LINEAR")
        pairs.append(pair_text(fmt, modifier))
    if not pairs:
        raise ValueError(f"the {stage} needs at least one format to accept")
    return pairs


def accept(pairs: Sequence[str]) -> list[specs.Spec]:
    """The accept list of a picture consumer: each mapping type, with the pairs it can read."""
    return [specs.spec_by_name(name, pairs) for name in MAPPING_TYPES]


def negotiated(subscription: Any, pairs: Sequence[str], stage: str) -> dict[str, Any]:
    """What the broker negotiated for each slot of ``subscription``; said on stderr (the stage's log).

    Every slot is its own attachment: they agree, as the producer tags
    every slot offer with the same pair.
    """
    first = subscription.attachments[0]
    result = {
        "map_type": first.map_type,
        "format": first.format,
        "formats": [attachment.format for attachment in subscription.attachments],
        "accepts": list(pairs),
        "trace": [asdict(step) for step in first.trace],
    }
    print(
        f"video {stage}: {subscription.name!r}: negotiated {first.map_type} with {first.format} "
        f"(accepting {', '.join(pairs)})",
        file=sys.stderr,
        flush=True,
    )
    return result


def frame_layout(frame: Any) -> dict[str, Any]:
    """The frame's layout (its generation's); raises if the SDK would hand out a mixed frame.

    ``frame.mapping`` is the mapping the SDK reads the frame through: it
    shows the frame's generation (the SDK waited for the re-map after a
    move), and ``frame.layout`` is the producer's layout at that generation,
    which ``frame.planes()`` and ``frame.to_av()`` read.
    """
    if frame.mapping.generation != frame.generation:  # the SDK's promise, checked: never a mixed frame
        raise RuntimeError(
            f"frame {frame.seq} in slot {frame.slot} was written at generation {frame.generation}, "
            f"but this consumer reads it through a mapping of generation {frame.mapping.generation}"
        )
    layout: dict[str, Any] = frame.layout
    return layout


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
