"""What keeps a local user from exhausting or misusing the HTTP face.

- ``bounded_h11``: uvicorn's h11 protocol with a hard cap on open
  connections and a deadline for each request's headers and body (the
  header timeout, from the connection or the previous response). uvicorn alone
  accepts every connection and keeps one that never sends a byte forever
  (its keep-alive timer starts only after a first response), so idle and
  slowloris connections could fill the broker's fd table. Over the cap, the
  connection that has waited longest for its headers is closed (an honest
  client sends its request at once, so it gets in); when every connection
  is mid-request, the new one is closed.
- ``HostCheck``: ASGI middleware answering 421 to a ``Host`` header that
  does not name this broker, so a web page cannot reach a loopback broker
  through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("bufbroker.http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# One warning per this many seconds while connections are being shed.
LOG_EVERY = 10.0


def bounded_h11(max_connections: int, header_timeout: float) -> type[H11Protocol]:
    """An H11Protocol class (for ``uvicorn.Config(http=...)``) with the cap and the header deadline."""
    # Connections waiting for a request's headers, oldest first, with their deadline timers.
    waiting: dict[Any, asyncio.TimerHandle] = {}  # BoundedH11Protocol -> its deadline
    shed = {"count": 0, "logged": 0.0}

    def note_shed() -> None:
        shed["count"] += 1
        now = time.monotonic()
        if now - shed["logged"] >= LOG_EVERY:
            log.warning(
                "HTTP connection limit reached (http_max_connections=%d): %d connection(s) closed so far",
                max_connections,
                shed["count"],
            )
            shed["logged"] = now

    class BoundedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                oldest = next(iter(waiting), None)
                note_shed()
                if oldest is None:  # every other connection is mid-request: refuse this one
                    self.connections.discard(self)
                    transport.abort()
                    return
                oldest._stop_waiting()
                oldest.connections.discard(oldest)
                if oldest.transport is not None:
                    oldest.transport.abort()
            self._wait_for_headers()

        def _wait_for_headers(self) -> None:
            self._stop_waiting()
            waiting[self] = self.loop.call_later(header_timeout, self._headers_too_late)

        def _stop_waiting(self) -> None:
            timer = waiting.pop(self, None)
            if timer is not None:
                timer.cancel()

        def _request_received(self) -> bool:
            """A request is in and whole (headers and body); its answer may take as long as it takes."""
            return (
                self.cycle is not None
                and not self.cycle.response_complete
                and self.conn.their_state in (h11.DONE, h11.MUST_CLOSE)
            )

        def _headers_too_late(self) -> None:
            waiting.pop(self, None)
            transport = self.transport
            if self._request_received() or transport is None or transport.get_protocol() is not self:
                return  # answering, or handed over (a protocol upgrade)
            if not transport.is_closing():
                transport.abort()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._request_received():
                self._stop_waiting()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport is not None and not self.transport.is_closing() and not self._request_received():
                self._wait_for_headers()  # keep-alive: the next request gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

    return BoundedH11Protocol


def accepted_hosts(bind_host: str, port: int, extra: Iterable[str] = ()) -> tuple[set[str], bool]:
    """The Host values (lower case, with and without the port) that name this broker.

    Returns them and whether any IP literal is accepted (a wildcard bind:
    DNS rebinding needs a name, never an address).
    """
    names = {bind_host.lower()}
    wildcard = False
    try:
        address = ipaddress.ip_address(bind_host)
    except ValueError:
        address = None
    if bind_host.lower() == "localhost" or (address is not None and address.is_loopback):
        names |= {"localhost", "127.0.0.1", "::1"}
    if address is not None and address.is_unspecified:
        wildcard = True
        names |= {"localhost"}
    names |= {name.strip().lower() for name in extra if name.strip()}
    hosts: set[str] = set()
    for name in names:
        bare = name.strip("[]")
        shown = f"[{bare}]" if ":" in bare else bare
        hosts |= {shown, f"{shown}:{port}"}
    return hosts, wildcard


def _is_ip_literal(host: str, port: int) -> bool:
    """Whether ``host`` is an IP address, with this broker's port or none."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest not in ("", f":{port}"):
            return False
    elif host.count(":") == 1:
        name, _, given = host.partition(":")
        if given != str(port):
            return False
    elif ":" in host:
        return False  # a bare IPv6 address is not a valid Host
    else:
        name = host
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Pure ASGI middleware (it does not buffer streams): 421 unless ``Host`` names this broker."""

    def __init__(self, app: ASGIApp, bind_host: str, port: int, extra: Iterable[str] = ()) -> None:
        self.app = app
        self.port = port
        self.hosts, self.any_ip = accepted_hosts(bind_host, port, extra)
        shown = sorted(h for h in self.hosts if h.endswith(f":{port}"))
        also = " or any IP address" if self.any_ip else ""
        self.refusal = (
            "this broker answers only to Host " + ", ".join(shown) + also + "; to reach it under another "
            "name, add the name to --http-allowed-hosts (BUFBROKER_HTTP_ALLOWED_HOSTS, comma-separated)"
        )

    def allowed(self, host: str | None) -> bool:
        if host is None:
            return True  # HTTP/1.0 without Host: no browser sends that, so no rebinding
        host = host.strip().lower()
        return host in self.hosts or (self.any_ip and _is_ip_literal(host, self.port))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
            if not self.allowed(host):
                await self._refuse(scope, send, host)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, host: str | None) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": f"Host {host!r} refused: {self.refusal}"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 421,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
