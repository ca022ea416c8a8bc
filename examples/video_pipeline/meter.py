"""Counts what one process exchanges with the broker and with the other stages.

The SDK has no counters of its own for this, so the meter wraps, in this
process only: the session transport's call (every SDK request goes through
it), the streams' counter reports (sent as gRPC futures, at most 2/s per
stream), the session's events, and ``LinkEnd``'s send (every datagram on a
stream link: frames, releases, hellos, byes, with the fds they carry).
Sizes are the protobuf payloads; gRPC/HTTP-2 framing is not counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any


class ControlPlaneMeter:
    def __init__(self, session: Any) -> None:
        import bufbroker.streams
        from bufbroker.streamlink import LinkEnd

        self.calls: Counter[str] = Counter()
        self.rpc_bytes = 0
        self.events = 0
        self.event_bytes = 0
        self.fds = 0  # fds this process sent or received for buffers and links
        self.link_messages = 0
        self.link_bytes = 0
        transport = session._transport  # the SDK's one door to the broker
        original_call = transport._call

        def call(method: str, request: Any) -> Any:
            response = original_call(method, request)
            self.calls[method] += 1
            self.rpc_bytes += request.ByteSize() + response[0].ByteSize()
            return response

        transport._call = call
        original_report = bufbroker.streams.report_stats

        def report(transport: Any, request: Any) -> Any:
            sent = original_report(transport, request)
            if sent is not None:
                self.calls["ReportStreamStats"] += 1
                self.rpc_bytes += request.ByteSize()
            return sent

        bufbroker.streams.report_stats = report  # type: ignore[assignment]
        original_send = LinkEnd._send

        def send(end: LinkEnd, data: bytes, fds: Sequence[int]) -> None:
            original_send(end, data, fds)
            self.link_messages += 1
            self.link_bytes += len(data)
            self.fds += len(fds)

        LinkEnd._send = send  # type: ignore[method-assign,assignment]
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
            "link_messages": self.link_messages,
            "link_bytes": self.link_bytes,
        }
