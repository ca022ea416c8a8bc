"""A session's connection to its broker: fd channel, gRPC channel, call channels, reconnection.

A ``Link`` is one connection to one broker process: the fd channel (the
broker's HELLO names the session token), the gRPC channel and the session's
event stream, two reader threads, the call-channel pool and the fd tickets
that arrive on it. A ``Transport`` holds a session's current link; when the
broker goes away it reconnects with backoff (lost → reconnecting →
connected, or closed) and hands the new link to the session to restore its
buffers and attachments. The Transport implements ``bufbroker.rpc.BrokerRpc``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from bufbroker import errors, fdwire, protocol
from bufbroker.calls import CallPool, ChannelBroken
from bufbroker.tickets import TicketStore
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import broker_pb2_grpc as pb_grpc
from bufbroker.v1 import fd_channel_pb2

log = logging.getLogger("bufbroker")

CONNECT_TIMEOUT = 5.0
FD_WAIT_TIMEOUT = 5.0
RECONNECT_TIMEOUT = 30.0
# observer(method, request, response) after a gRPC call (response None when not waited for).
CallObserver = Callable[[str, Message, Message | None], None]

EventHandler = Callable[[pb.Event], None]

# grpcio-tools writes the stub without annotations; this is where it gets a type.
_new_stub: Callable[[grpc.Channel], Any] = pb_grpc.BrokerStub


class Link:
    """One connection to a broker: fd channel, gRPC channel, event stream.

    ``on_event`` gets every session event (on the events thread);
    ``on_lost(link, why)`` is called once when the fd channel fails or the
    broker closes it. ``close()`` ends it; a Link is never reopened.
    """

    def __init__(self, socket_dir: Path, on_event: EventHandler, on_lost: Callable[[Link, str], None]) -> None:
        self.socket_dir = socket_dir
        self._on_event = on_event
        self._on_lost = on_lost
        self.sock = _open_fd_channel(socket_dir)
        self.lost = ""  # why the broker went away, once it did
        self.closed = False
        self.tickets = TicketStore()
        self.channel: grpc.Channel | None = None
        self.events_call: Any = None
        self.threads: list[threading.Thread] = []
        self.send_lock = threading.Lock()  # one datagram at a time on the fd channel
        self.calls = CallPool(self._open_call_channel)
        try:
            self.hello: fd_channel_pb2.Hello = _read_hello(self.sock, socket_dir)
            self.channel = grpc.insecure_channel(f"unix:{socket_dir / 'grpc.sock'}")
            self.stub: Any = _new_stub(self.channel)
            self.events_ready = threading.Event()
            self.events_call = self.stub.Events(pb.EventsRequest(), metadata=self.call_metadata())
            for target, name in ((self._read_fd_channel, "bufbroker-fd"), (self._read_events, "bufbroker-events")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self.threads.append(thread)
            if not self.events_ready.wait(CONNECT_TIMEOUT):
                raise errors.Unavailable(
                    f"the broker at {socket_dir} did not open this session's event stream within {CONNECT_TIMEOUT} s"
                )
        except BaseException:
            self.close()
            raise

    def send(self, message: fd_channel_pb2.FdMessage, fds: Sequence[int] = ()) -> None:
        """One datagram on the fd channel; raises OSError."""
        with self.send_lock:
            fdwire.send(self.sock, message, list(fds))

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for one gRPC call of this session: its token, and a fresh proof vouched for on the fd channel.

        The broker takes a token only with a proof its own fd channel sent
        (a leaked token is useless to another process); each proof is good once.
        """
        proof = secrets.token_hex(16)
        try:
            self.send(fd_channel_pb2.FdMessage(vouch=fd_channel_pb2.Vouch(proof=proof)))
        except OSError as error:
            raise errors.Unavailable(f"cannot reach the broker's fd channel: {error}") from None
        return (
            (protocol.SESSION_METADATA_KEY, self.hello.session_token),
            (protocol.PROOF_METADATA_KEY, proof),
        )

    def take_fds(self, ticket: int, count: int) -> list[int]:
        """The fds this link's broker sent under ``ticket``; the caller owns them."""
        return self.tickets.take(ticket, count, FD_WAIT_TIMEOUT)

    def _read_fd_channel(self) -> None:
        while True:
            try:
                received = fdwire.receive(self.sock)
            except OSError as error:
                self._on_lost(self, f"fd channel read failed: {error}")
                return
            if received.eof:
                self._on_lost(self, "the broker closed this session's fd channel")
                return
            message = received.message
            if message is None or received.truncated:
                fdwire.close_fds(received.fds)
                log.warning("bufbroker: dropped a bad fd-channel message: %s", received.error or "fds truncated")
                continue
            kind = message.WhichOneof("kind")
            if kind == "deliver_fds":
                self.tickets.deliver(message.deliver_fds.ticket, received.fds)
            else:
                fdwire.close_fds(received.fds)
                if kind == "notice":
                    log.warning("bufbroker: broker notice: %s", message.notice.message)

    def _open_call_channel(self) -> socket.socket:
        try:
            response = self.stub.OpenCallChannel(pb.OpenCallChannelRequest(), metadata=self.call_metadata())
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        fds = self.take_fds(response.fd_ticket, 1)
        return socket.socket(fileno=fds[0])

    def _read_events(self) -> None:
        try:
            for event in self.events_call:
                if event.HasField("ready"):
                    self.events_ready.set()
                    continue
                self._on_event(event)
        except grpc.RpcError as error:
            call: Any = error
            if not self.closed and call.code() != grpc.StatusCode.CANCELLED:
                log.debug("bufbroker: event stream ended: %s", call.details())

    def close(self, why: str = "the session was closed") -> None:
        """End the connection; waiters for fds get Unavailable(``lost`` or ``why``)."""
        self.closed = True
        self.tickets.close(self.lost or why)
        self.calls.close()
        if self.events_call is not None:
            self.events_call.cancel()
        with contextlib.suppress(OSError):  # never connected, or already shut down
            self.sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2)
        self.sock.close()
        if self.channel is not None:
            self.channel.close()


def _open_fd_channel(socket_dir: Path) -> socket.socket:
    path = socket_dir / "fd.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as error:
        sock.close()
        raise errors.Unavailable(
            f"no broker is serving {socket_dir} ({error.strerror}): start one with "
            f"`bufbroker serve --socket-dir {socket_dir}`"
        ) from None
    except PermissionError:
        sock.close()
        raise errors.PermissionDenied(
            f"not allowed to connect to {path}: join the group that owns the socket dir"
        ) from None
    except OSError as error:
        sock.close()
        raise errors.Unavailable(f"cannot connect to {path}: {error}") from None
    return sock


def _read_hello(sock: socket.socket, socket_dir: Path) -> fd_channel_pb2.Hello:
    try:
        received = fdwire.receive(sock)
    except TimeoutError:
        raise errors.Unavailable(f"the broker at {socket_dir} sent no HELLO within {CONNECT_TIMEOUT} s") from None
    except OSError as error:  # e.g. reset by a broker that is starting or dying
        raise errors.Unavailable(f"the broker at {socket_dir} dropped the connection before HELLO: {error}") from None
    fdwire.close_fds(received.fds)
    if received.message is not None and received.message.HasField("notice"):
        # The broker refused the session (e.g. RESOURCE_EXHAUSTED: max_sessions): its reason, as the matching error.
        refusal = received.message.notice
        raise errors.from_call_error(fd_channel_pb2.CallError(code=refusal.code, message=refusal.message))
    if received.eof or received.message is None or not received.message.HasField("hello"):
        raise errors.Unavailable(
            f"the broker at {socket_dir} did not greet this session "
            f"({received.error or 'connection closed'}); is it overloaded or a different program?"
        )
    sock.settimeout(None)
    return received.message.hello


class Transport:
    """A session's calls to its broker, across broker restarts (implements BrokerRpc).

    ``on_event`` gets every session event. With ``reconnect``, losing the
    broker starts a thread that connects again with backoff for up to
    ``reconnect_timeout`` seconds; once connected it calls
    ``on_reconnected(lost_at, deadline)`` (monotonic times) on that thread so
    the session can register and attach again. Calls made meanwhile wait for
    the new broker.
    """

    def __init__(
        self,
        socket_dir: Path,
        *,
        reconnect: bool,
        on_event: EventHandler,
        on_reconnected: Callable[[float, float], None],
    ) -> None:
        self.socket_dir = socket_dir
        self.reconnect = reconnect
        self.reconnect_timeout = RECONNECT_TIMEOUT
        self._on_event = on_event
        self._on_reconnected = on_reconnected
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closed = False
        self.call_observers: list[CallObserver] = []  # Session.observe_calls
        self.link = Link(socket_dir, on_event, self._link_lost)
        self._connected.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def hello(self) -> fd_channel_pb2.Hello:
        """The current broker's HELLO: this session's id, token and credentials there."""
        return self.link.hello

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until there is a live broker (or the transport closed); False on timeout."""
        return self._connected.wait(timeout)

    # --- BrokerRpc ------------------------------------------------------------------------

    def call(self, method: str, request: Message) -> Any:
        """Invoke an RPC with the session token; raise the SDK's errors.

        While reconnecting after a broker restart, the call waits (up to the
        reconnect timeout) for the new broker.
        """
        return self._call(method, request)[0]

    def fast_call(self, method: str, request: Message) -> tuple[Any, list[int]]:
        """Attach, Map, Unmap or Detach: the response and the fds of its mapping, if any.

        On a free call channel when there is one (one datagram each way),
        else as the gRPC call with the fds taken from the fd channel.
        """
        link = self.link
        channel = link.calls.borrow() if self._connected.is_set() and not self._closed else None
        if channel is None:
            response, link = self._call(method, request)
            mapped = None
            if method == "Map":
                mapped = response
            elif method == "Attach" and response.HasField("mapping"):
                mapped = response.mapping
            return response, link.take_fds(mapped.fd_ticket, mapped.fd_count) if mapped is not None else []
        kind = method.lower()
        try:
            reply, fds = channel.call(kind, request)
        except ChannelBroken as error:
            link.calls.discard(channel)
            raise errors.Unavailable(f"{method} got no answer from the broker: {error}") from None
        link.calls.give_back(channel)
        if reply.HasField("error"):
            fdwire.close_fds(fds)
            raise errors.from_call_error(reply.error)
        return getattr(reply, kind), fds

    def send_fds(self, fds: Sequence[int]) -> str:
        """Send ``fds`` on the fd channel under a fresh nonce; return the nonce (the caller keeps its fds)."""
        nonce = secrets.token_hex(8)
        message = fd_channel_pb2.FdMessage(send_fds=fd_channel_pb2.SendFds(nonce=nonce, fd_count=len(fds)))
        try:
            self.link.send(message, fds)
        except OSError as error:
            raise errors.Unavailable(f"cannot send fds to the broker: {error}") from None
        return nonce

    # --- the connection's life ------------------------------------------------------------

    def close(self) -> None:
        """End the connection for good; waiting and later calls fail."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            link = self.link
        self._connected.set()  # wake callers waiting for a reconnect: they see closed
        link.close()

    def _call(self, method: str, request: Message) -> tuple[Any, Link]:
        """The response and the link that answered it (its fd tickets are on that link)."""
        if not self._closed and not self._connected.is_set():
            self._connected.wait(self.reconnect_timeout if self.reconnect else 0)
        if self._closed:
            raise errors.FailedPrecondition("this session is closed; connect() again")
        if not self._connected.is_set():
            raise errors.Unavailable(f"no broker at {self.socket_dir}: the session lost it and has not reconnected")
        link = self.link
        try:
            response = getattr(link.stub, method)(request, metadata=link.call_metadata())
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        for observer in self.call_observers:
            observer(method, request, response)
        return response, link

    def _link_lost(self, link: Link, why: str) -> None:
        with self._lock:
            # getattr: the link's reader may report its loss before __init__ stored the first link.
            if link is not getattr(self, "link", None) or self._closed or link.closed:
                return
            link.lost = why
            self._connected.clear()
        link.tickets.close(why)  # wakes its waiters; nobody can claim its fds now
        if self.reconnect:
            log.warning("bufbroker: lost the broker at %s (%s); reconnecting", self.socket_dir, why)
            threading.Thread(
                target=self._reconnect, args=(time.monotonic(),), name="bufbroker-reconnect", daemon=True
            ).start()

    def _reconnect(self, lost_at: float) -> None:
        """Connect again with backoff, then let the session restore itself."""
        delay, deadline = 0.02, lost_at + self.reconnect_timeout
        while True:
            if self._closed:
                return
            try:
                link = Link(self.socket_dir, self._on_event, self._link_lost)
                break
            except errors.BrokerError as error:
                if time.monotonic() + delay > deadline:
                    log.error(
                        "bufbroker: gave up reconnecting to %s after %.0f s: %s",
                        self.socket_dir,
                        self.reconnect_timeout,
                        error,
                    )
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        with self._lock:
            if self._closed:
                old = link  # closed while connecting: the new link is not wanted
            else:
                old, self.link = self.link, link
        old.close()
        if self._closed:
            return
        self._connected.set()
        self._on_reconnected(lost_at, deadline)
