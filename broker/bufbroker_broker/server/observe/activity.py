"""ActivityCounters: what happened since start, counted from registry changes.

The registry's state (sessions, buffers, ...) is read at scrape time; what
it no longer holds (negotiations done, buffers moved or revoked, sessions
that came and went) is counted here, from ``Registry.observe``. Plain
Python, on the event loop; /metrics and /v1/stats read it.
"""

from __future__ import annotations

import time
from collections import Counter

from bufbroker_broker.core.registry import Change, Registry
from bufbroker_broker.server.observe.latency import NEGOTIATION_BUCKETS, REQUEST_STARTED, LatencyHistogram

NEGOTIATION_RESULTS = ("matched", "no-common-type", "error")


class ActivityCounters:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.sessions_opened = 0
        self.sessions_ended = 0
        self.buffers_registered: Counter[str] = Counter()  # by the exporter's preferred type
        self.bytes_registered: Counter[str] = Counter()
        self.attaches: Counter[str] = Counter()  # by negotiated type
        self.detaches = 0
        self.maps: Counter[str] = Counter()  # by negotiated type
        self.unmaps = 0
        self.negotiations: Counter[tuple[str, str, bool]] = Counter()  # (result, map_type, dry_run)
        self.negotiation_seconds = LatencyHistogram(NEGOTIATION_BUCKETS)
        self.moves = 0
        self.revokes = 0
        self.conversions: Counter[str] = Counter()  # attaches served through a converter, by its name
        registry.observe(self.record)

    def record(self, change: Change) -> None:
        kind, registry = change.kind, self.registry
        if kind == "session-opened":
            self.sessions_opened += 1
        elif kind == "session-ended":
            self.sessions_ended += 1
        elif kind == "registered":
            buffer = registry.buffers.get(change.buffer_id)
            preferred = buffer.offers[0].type.name if buffer is not None and buffer.offers else "unknown"
            self.buffers_registered[preferred] += 1
            self.bytes_registered[preferred] += int(change.detail.get("size", buffer.size if buffer else 0))
        elif kind == "attached":
            self.attaches[str(change.detail.get("map_type", "unknown"))] += 1
            attachment = registry.attachments.get(change.attachment_id)
            converter = getattr(attachment, "converter", None)
            if converter is not None:
                self.conversions[str(getattr(converter, "name", converter))] += 1
        elif kind == "detached":
            self.detaches += 1
        elif kind == "mapped":
            attachment = registry.attachments.get(change.attachment_id)
            self.maps[attachment.map_type.name if attachment is not None else "unknown"] += 1
        elif kind == "unmapped":
            self.unmaps += 1
        elif kind == "moved":
            self.moves += 1
        elif kind == "revoked":
            self.revokes += 1
        elif kind == "negotiated":
            self._record_negotiation(change)

    def _record_negotiation(self, change: Change) -> None:
        detail = change.detail
        result = str(detail.get("result", "error"))
        map_type = str(detail.get("map_type") or "none")
        self.negotiations[(result, map_type, bool(detail.get("dry_run", False)))] += 1
        seconds = detail.get("seconds")
        if seconds is None:
            # The registry reports no duration: measure from the start of the
            # request that negotiated (Attach, Explain, POST /v1/explain);
            # what runs before negotiate() there is in-memory validation.
            started = REQUEST_STARTED.get()
            seconds = time.perf_counter() - started if started is not None else None
        if seconds is not None:
            self.negotiation_seconds.observe(float(seconds))

    def negotiations_by_result(self) -> dict[str, int]:
        totals = {result: 0 for result in NEGOTIATION_RESULTS}
        for (result, _, _), count in self.negotiations.items():
            totals[result] = totals.get(result, 0) + count
        return totals
