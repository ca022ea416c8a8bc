"""Negotiation traces as plain Python objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class TraceStep:
    """One (offer, match) pair the broker examined, and its verdict.

    ``verdict`` is one of type-differs, soft-mismatch, matched, error.
    """

    offer_index: int
    offer_type: str
    match_index: int
    match_type: str
    verdict: str
    reason: str = ""


def trace_from_wire(steps: Iterable) -> list[TraceStep]:
    return [
        TraceStep(s.offer_index, s.offer_type, s.match_index, s.match_type, s.verdict, s.reason)
        for s in steps
    ]


def format_trace(trace: list[TraceStep]) -> str:
    """A one-line-per-pair table for logs and the CLI."""
    lines = []
    for s in trace:
        reason = f"  ({s.reason})" if s.reason else ""
        lines.append(
            f"offer {s.offer_index} {s.offer_type:<10} x match {s.match_index} {s.match_type:<10} -> {s.verdict}{reason}"
        )
    return "\n".join(lines)
