"""Counts what one process exchanges with the broker and with the other stages.

Through the SDK's instrumentation hooks, in this process only:
``session.observe_calls`` (every gRPC call of the session, the streams'
counter reports included), ``session.add_event_handler`` (the session's
events) and ``bufbroker.streamlink.observe_sends`` (every datagram on a
stream link: frames, releases, hellos, byes, with the fds they carry).
Sizes are the protobuf payloads; gRPC/HTTP-2 framing is not counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class ControlPlaneMeter:
    def __init__(self, session: Any) -> None:
        from bufbroker import streamlink

        self.calls: Counter[str] = Counter()
        self.rpc_bytes = 0
        self.events = 0
        self.event_bytes = 0
        self.fds = 0  # fds this process sent or received for buffers and links
        self.link_messages = 0
        self.link_bytes = 0
        session.observe_calls(self._call)
        session.add_event_handler(self._event)
        streamlink.observe_sends(self._sent)

    def _call(self, method: str, request: Any, response: Any) -> None:
        self.calls[method] += 1
        self.rpc_bytes += request.ByteSize() + (response.ByteSize() if response is not None else 0)

    def _sent(self, payload_bytes: int, fd_count: int) -> None:
        self.link_messages += 1
        self.link_bytes += payload_bytes
        self.fds += fd_count

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
