"""The numbered pattern stream test clients write and check: seq in the first 8 bytes, then bytes derived from seq."""

from __future__ import annotations

import struct

_PERIOD = 251  # a prime: a frame's body differs from every other seq's at every offset


def pattern(seq: int, size: int) -> bytes:
    """The ``size`` bytes frame ``seq`` holds."""
    body = bytes((seq * 7 + i) % _PERIOD for i in range(_PERIOD))
    rest = size - 8
    return struct.pack("<Q", seq) + (body * (rest // _PERIOD + 1))[:rest]


def check(view: memoryview, seq: int, size: int) -> str:
    """ "" when ``view`` holds frame ``seq``, else what is wrong (a torn or stale frame)."""
    (head,) = struct.unpack("<Q", view[:8])
    if head != seq:
        return f"frame {seq}: header says {head}"
    if view[:size] != pattern(seq, size):
        return f"frame {seq}: body does not match its seq (torn)"
    return ""
