"""LatencyHistogram: durations counted into fixed buckets, in plain Python.

The gRPC interceptor and the registry observers record into these on the
event loop; /metrics reads them at scrape time. Keeping prometheus_client
out of this module keeps it out of a broker started with ``--http none``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from contextvars import ContextVar

# Negotiation is a pure, in-memory function: microseconds to a millisecond.
NEGOTIATION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)
# An RPC may wait on the fd channel (Map) or for fds (RegisterBuffer).
RPC_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# When the request being handled on this task (a gRPC call, an HTTP explain)
# started, in time.perf_counter() seconds; None outside a request.
REQUEST_STARTED: ContextVar[float | None] = ContextVar("bufbroker_request_started", default=None)


class LatencyHistogram:
    """Counts of observed durations (seconds) per upper bound, plus their sum."""

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be strictly increasing, got {bounds}")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def add_counts(self, counts: Sequence[int], total: float) -> None:
        """Add per-bucket counts (not cumulative; one per bound, then +Inf) observed elsewhere, and their sum."""
        if len(counts) > len(self.counts):
            raise ValueError(f"{len(counts)} bucket counts for a histogram of {len(self.counts)} buckets")
        for index, count in enumerate(counts):
            self.counts[index] += count
        self.count += sum(counts)
        self.sum += total

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations <= it) pairs ending with +Inf, as Prometheus wants."""
        pairs, running = [], 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=False):
            running += count
            pairs.append((bound, running))
        return pairs
