"""Counts what one process exchanges with the broker: RPCs, events, fds.

The SDK has no counters of its own yet, so the meter wraps the session's
``call`` (every SDK request goes through it) and listens to its events.
Sizes are the protobuf payloads; gRPC/HTTP-2 framing is not counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class ControlPlaneMeter:
    def __init__(self, session: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.rpc_bytes = 0
        self.events = 0
        self.event_bytes = 0
        self.fds = 0  # fds this process sent or received for buffers
        original = session.call

        def call(method: str, request: Any) -> Any:
            response = original(method, request)
            self.calls[method] += 1
            self.rpc_bytes += request.ByteSize() + response.ByteSize()
            return response

        session.call = call
        session.add_event_handler(self._event)

    def _event(self, event: Any) -> None:
        self.events += 1
        self.event_bytes += event.ByteSize()

    def summary(self) -> dict:
        return {
            "calls": dict(self.calls),
            "rpc_bytes": self.rpc_bytes,
            "events": self.events,
            "event_bytes": self.event_bytes,
            "fds": self.fds,
        }
