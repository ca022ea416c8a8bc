"""Negotiation traces as plain Python objects."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TraceStep:
    """One (offer, match) pair the broker examined, and its verdict.

    ``verdict`` is one of type-differs, soft-mismatch, matched, error.
    ``converter`` names the converter the broker tried for the pair (e.g.
    ``segments->udmabuf``), empty for a pair of the same type. ``format``
    is the (format, modifier) pair a matched step chose (``NV12:LINEAR``),
    when the offer and the match both listed pairs.
    """

    offer_index: int
    offer_type: str
    match_index: int
    match_type: str
    verdict: str
    reason: str = ""
    converter: str = ""
    format: str = ""


def trace_from_wire(steps: Iterable[Any]) -> list[TraceStep]:
    """TraceSteps from the wire's ``bufbroker.v1.TraceStep`` messages (a response's ``trace``)."""
    return [
        TraceStep(s.offer_index, s.offer_type, s.match_index, s.match_type, s.verdict, s.reason, s.converter, s.format)
        for s in steps
    ]


def format_trace(trace: Iterable[TraceStep]) -> str:
    """A one-line-per-pair table for logs and the CLI."""
    lines = []
    for s in trace:
        reason = f"  ({s.reason})" if s.reason else ""
        via = f" via {s.converter}" if s.converter else ""
        chosen = f" {s.format}" if s.format else ""
        lines.append(
            f"offer {s.offer_index} {s.offer_type:<10} x match {s.match_index} {s.match_type:<10}{via} "
            f"-> {s.verdict}{chosen}{reason}"
        )
    return "\n".join(lines)
