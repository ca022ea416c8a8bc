"""The frame metadata bufbrokersink writes, and bufbrokersrc reads.

Each frame's ``meta`` is UTF-8 JSON, one object:

    {"pts": 33333333, "duration": 33333333, "framerate": [30, 1]}

``pts`` and ``duration`` are the GStreamer buffer's, in nanoseconds
(absent when the buffer had none: GST_CLOCK_TIME_NONE); ``framerate`` is
the caps' [numerator, denominator] (absent when 0/1, variable). Keys a
reader does not know are ignored, and a meta that is not such an object
(another producer's) reads as no times. A Python consumer reads it with
``json.loads(frame.meta)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

CLOCK_TIME_NONE = 2**64 - 1  # Gst.CLOCK_TIME_NONE


@dataclass(frozen=True)
class FrameTimes:
    pts: int | None = None  # nanoseconds
    duration: int | None = None
    framerate: tuple[int, int] | None = None


def encode(pts: int, duration: int, framerate: tuple[int, int] | None) -> bytes:
    """The meta for a buffer's PTS and duration (GST_CLOCK_TIME_NONE: left out) and the caps' framerate."""
    out: dict[str, object] = {}
    if pts != CLOCK_TIME_NONE:
        out["pts"] = pts
    if duration != CLOCK_TIME_NONE:
        out["duration"] = duration
    if framerate is not None and framerate[0] > 0 and framerate[1] > 0:
        out["framerate"] = [framerate[0], framerate[1]]
    return json.dumps(out, separators=(",", ":")).encode()


def _time(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < CLOCK_TIME_NONE else None


def decode(meta: bytes) -> FrameTimes:
    """The times in a frame's meta; FrameTimes() (all None) for a meta of another shape."""
    try:
        data = json.loads(meta) if meta else None
    except (ValueError, UnicodeDecodeError):
        return FrameTimes()
    if not isinstance(data, dict):
        return FrameTimes()
    rate = data.get("framerate")
    framerate = None
    if isinstance(rate, list) and len(rate) == 2 and all(isinstance(v, int) and v > 0 for v in rate):
        framerate = (rate[0], rate[1])
    return FrameTimes(_time(data.get("pts")), _time(data.get("duration")), framerate)
