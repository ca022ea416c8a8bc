"""GET /v1/events: registry changes as a Server-Sent Events stream.

The EventHub observes the registry (on the event loop) and hands each
change, numbered in order, to every connected client's bounded queue. It
never waits for a client: when a client's queue is full (it reads more
slowly than the broker changes), the hub drops that client; its stream
ends with an ``event: dropped`` and it may reconnect with ``Last-Event-ID``
to replay what the hub still remembers. Each write to a client is also
bounded in time, so a client that stops reading holds nothing for long.

Events carry the Change's facts (kind, ids, detail) and never fds,
session tokens or memory contents.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from bufbroker_broker.core.registry import Change, Registry

log = logging.getLogger(__name__)

HISTORY = 1024  # events remembered for Last-Event-ID replay
KEEPALIVE = 15.0  # seconds between comments on a quiet stream
SEND_TIMEOUT = 5.0  # a client that accepts nothing this long is dropped
RETRY_MS = 2000  # what EventSource waits before reconnecting


# One encoder for every message: json.dumps with options builds a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"), default=str)


def encode_change(seq: int, change: Change, when: float | None = None) -> bytes:
    """One SSE message: ``id``, ``event`` (the change's kind) and JSON ``data``.

    ``when`` is the change's time.time() (default: now).
    """
    data = {
        "seq": seq,
        "kind": change.kind,
        "time": round(time.time() if when is None else when, 6),
        "session_id": change.session_id,
        "buffer_id": change.buffer_id,
        "attachment_id": change.attachment_id,
        "detail": change.detail,
    }
    text = _JSON.encode(data)
    return f"id: {seq}\nevent: {change.kind}\ndata: {text}\n\n".encode()


class EventClient:
    """One connected stream: a bounded queue the hub fills and the response drains."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.dropped = False
        self.closed = False

    def offer(self, message: bytes) -> bool:
        """Queue one message; False (and nothing queued) when the queue is full."""
        if len(self.queue) >= self.limit:
            return False
        self.queue.append(message)
        self.wake.set()
        return True

    def end(self, dropped: bool = False) -> None:
        self.dropped = self.dropped or dropped
        self.closed = True
        self.wake.set()

    async def next_messages(self, timeout: float) -> list[bytes]:
        """Whatever is queued, waiting up to ``timeout`` for something; [] on timeout."""
        if not self.queue and not self.closed:
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return []
        messages = list(self.queue)
        self.queue.clear()
        return messages


class EventHub:
    def __init__(self, registry: Registry, queue_limit: int = 1024, history: int = HISTORY) -> None:
        self.queue_limit = queue_limit
        self.clients: set[EventClient] = set()
        # (seq, time, change): encoded when a client reads it, not when it happens.
        self.history: deque[tuple[int, float, Change]] = deque(maxlen=history)
        self.seq = 0
        self.dropped = 0
        self.closed = False
        registry.observe(self.publish)

    def publish(self, change: Change) -> None:
        """Registry observer: number the change and queue it for every client.

        This runs on every attach, map, unmap and detach, and encoding is
        most of its cost: a change is encoded only when a client is
        connected (once for all of them), or when one replays it.
        """
        self.seq += 1
        stamped = (self.seq, time.time(), change)
        self.history.append(stamped)
        if not self.clients:
            return
        message = encode_change(self.seq, change, stamped[1])
        for client in list(self.clients):
            if not client.offer(message):
                self.drop(client, f"{client.limit} events queued")

    def drop(self, client: EventClient, why: str) -> None:
        if client in self.clients:
            self.clients.discard(client)
            self.dropped += 1
            log.warning("dropping a /v1/events client: it reads too slowly (%s)", why)
        client.queue.clear()  # it resumes from the history with Last-Event-ID instead
        client.end(dropped=True)

    def subscribe(self, last_event_id: int | None = None) -> EventClient:
        """A new client; with ``last_event_id``, first the remembered events after it."""
        client = EventClient(self.queue_limit)
        if self.closed:
            client.end()
            return client
        if last_event_id is not None:
            # The whole replay is queued, beyond the live limit: a client dropped for a
            # full queue always has more than queue_limit events to catch up on, and
            # cutting the replay short would lose some silently. The history bounds it.
            replay = [encode_change(seq, change, when) for seq, when, change in self.history if seq > last_event_id]
            client.queue.extend(replay)
            client.limit += len(replay)
            if replay:
                client.wake.set()
        self.clients.add(client)
        return client

    def unsubscribe(self, client: EventClient) -> None:
        self.clients.discard(client)
        client.end()

    def close(self) -> None:
        """End every stream (the broker is stopping); later subscribers end at once."""
        self.closed = True
        for client in list(self.clients):
            self.unsubscribe(client)


def parse_last_event_id(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        seq = int(value.strip())
    except ValueError:
        return None
    return seq if seq >= 0 else None


class EventStreamResponse(Response):
    """A text/event-stream response fed by one EventHub client.

    Written against ASGI directly so that every write can be bounded in
    time and a client hang-up is noticed at once.
    """

    media_type = "text/event-stream"

    def __init__(self, hub: EventHub, last_event_id: int | None) -> None:
        super().__init__(
            content=None,
            media_type=self.media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        # A stream has no length: chunked transfer, not Content-Length: 0.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.hub = hub
        self.last_event_id = last_event_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self.hub.subscribe(self.last_event_id)
        watcher = asyncio.create_task(self._watch_disconnect(receive, client), name="bufbroker-sse-disconnect")
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            hello = f"retry: {RETRY_MS}\n: bufbroker events; last id {self.hub.seq}\n\n".encode()
            if await self._write(send, hello, client):
                # When this returns False the client stopped reading: leaving
                # the response open makes the server close the connection.
                await self._pump(send, client)
        finally:
            watcher.cancel()
            self.hub.unsubscribe(client)

    async def _pump(self, send: Send, client: EventClient) -> bool:
        """Stream until the client goes or is dropped; True when the response was ended cleanly."""
        while True:
            messages = await client.next_messages(KEEPALIVE)
            if messages:
                if not await self._write(send, b"".join(messages), client):
                    return False
            elif not client.closed and not await self._write(send, b": keepalive\n\n", client):
                return False
            if client.closed and not client.queue:
                if client.dropped:
                    notice = b'event: dropped\ndata: {"reason":"this client read too slowly; reconnect with Last-Event-ID"}\n\n'
                    if not await self._write(send, notice, client):
                        return False
                return await self._write(send, b"", client, more=False)

    async def _write(self, send: Send, body: bytes, client: EventClient, more: bool = True) -> bool:
        try:
            await asyncio.wait_for(send({"type": "http.response.body", "body": body, "more_body": more}), SEND_TIMEOUT)
        except TimeoutError:
            self.hub.drop(client, f"nothing accepted for {SEND_TIMEOUT} s")
            return False
        except OSError:  # the client hung up while we wrote
            client.end()
            return False
        return True

    @staticmethod
    async def _watch_disconnect(receive: Receive, client: EventClient) -> Any:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                client.end()
                return
