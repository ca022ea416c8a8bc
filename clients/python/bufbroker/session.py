"""Session: one connection to the broker (fd channel + gRPC), thread-safe.

``connect()`` opens the fd channel, reads the broker's HELLO (the session
token), opens the gRPC channel and the session's event stream, and starts
two daemon threads: one reads the fd channel (fds arrive there under
tickets), one reads events. Attach, map, unmap and detach go over call
channels (``bufbroker.calls``) when one is free. Everything the session
hands out is released by ``close()``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import grpc

from bufbroker import errors, fdwire, specs
from bufbroker.calls import CallPool, ChannelBroken
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import broker_pb2_grpc as pb_grpc
from bufbroker.v1 import fd_channel_pb2

log = logging.getLogger("bufbroker")

CONNECT_TIMEOUT = 5.0
FD_WAIT_TIMEOUT = 5.0
RECONNECT_TIMEOUT = 30.0


def default_socket_dir() -> Path:
    """$BUFBROKER_SOCKET_DIR, else $XDG_RUNTIME_DIR/bufbroker, else /run/bufbroker."""
    explicit = os.environ.get("BUFBROKER_SOCKET_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() == 0 or not runtime:
        return Path("/run/bufbroker")
    return Path(runtime) / "bufbroker"


def backing_fds(size: Optional[int], fd: int | Sequence[int] | None, name: str) -> tuple[list[int], int]:
    """The fds to send for a buffer and its size: a new memfd, or dups of the caller's."""
    from bufbroker.buffers import make_memfd

    if (size is None) == (fd is None):
        raise ValueError("give exactly one of size= (the SDK makes a memfd) or fd= (your memfd)")
    if size is not None:
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        return [make_memfd(name, size)], size
    given = [fd] if isinstance(fd, int) else list(fd)
    if not given:
        raise ValueError("fd= needs at least one memfd")
    fds = [os.dup(f) for f in given]
    from bufbroker.dmabuf import fd_size

    return fds, fd_size(fds[0])   # a memfd's size, or a dma-buf's


def connect(socket_dir: str | os.PathLike | None = None, *, reconnect: bool = True) -> "Session":
    """Open a session with the broker serving ``socket_dir``.

    With ``reconnect`` (the default), if the broker dies the session
    reconnects with backoff when a broker serves the dir again, registers
    its exported buffers again under the same names and re-attaches its
    attachments by name; mappings already held stay valid throughout.
    """
    return Session(socket_dir, reconnect=reconnect)


class _Link:
    """One connection to a broker: fd channel, gRPC channel, event stream.

    A session has one link at a time; after a broker restart it gets a new
    one (new token, new threads), and the old one is closed.
    """

    def __init__(self, session: "Session") -> None:
        self.session = session
        self.sock = _open_fd_channel(session.socket_dir)
        self.lost = ""
        self.closed = False
        self.channel: Optional[grpc.Channel] = None
        self.events_call: Any = None
        self.threads: list[threading.Thread] = []
        self.calls = CallPool(self._open_call_channel)
        try:
            hello = _read_hello(self.sock, session.socket_dir)
            self.hello = hello
            self.metadata = ((fdwire.SESSION_METADATA_KEY, hello.session_token),)
            self.channel = grpc.insecure_channel(f"unix:{session.socket_dir / 'grpc.sock'}")
            self.stub = pb_grpc.BrokerStub(self.channel)
            self.events_ready = threading.Event()
            self.events_call = self.stub.Events(pb.EventsRequest(), metadata=self.metadata)
            for target, name in ((self._read_fd_channel, "bufbroker-fd"), (self._read_events, "bufbroker-events")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self.threads.append(thread)
            if not self.events_ready.wait(CONNECT_TIMEOUT):
                raise errors.Unavailable(
                    f"the broker at {session.socket_dir} did not open this session's event stream "
                    f"within {CONNECT_TIMEOUT} s"
                )
        except BaseException:
            self.close()
            raise

    def _read_fd_channel(self) -> None:
        session = self.session
        while True:
            try:
                received = fdwire.receive(self.sock)
            except OSError as error:
                session._link_lost(self, f"fd channel read failed: {error}")
                return
            if received.eof:
                session._link_lost(self, "the broker closed this session's fd channel")
                return
            message = received.message
            if message is None or received.truncated:
                fdwire.close_fds(received.fds)
                log.warning("bufbroker: dropped a bad fd-channel message: %s", received.error or "fds truncated")
                continue
            kind = message.WhichOneof("kind")
            if kind == "deliver_fds":
                session._fds_arrived(self, message.deliver_fds.ticket, received.fds)
            else:
                fdwire.close_fds(received.fds)
                if kind == "notice":
                    log.warning("bufbroker: broker notice: %s", message.notice.message)

    def _open_call_channel(self) -> socket.socket:
        try:
            response = self.stub.OpenCallChannel(pb.OpenCallChannelRequest(), metadata=self.metadata)
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None
        fds = self.session.take_fds(response.fd_ticket, 1)
        return socket.socket(fileno=fds[0])

    def _read_events(self) -> None:
        try:
            for event in self.events_call:
                if event.HasField("ready"):
                    self.events_ready.set()
                    continue
                self.session._dispatch(event)
        except grpc.RpcError as error:
            if not self.closed and error.code() != grpc.StatusCode.CANCELLED:
                log.debug("bufbroker: event stream ended: %s", error.details())

    def close(self) -> None:
        self.closed = True
        self.calls.close()
        if self.events_call is not None:
            self.events_call.cancel()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
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
        raise errors.PermissionDenied(f"not allowed to connect to {path}: join the group that owns the socket dir") from None
    except OSError as error:
        sock.close()
        raise errors.Unavailable(f"cannot connect to {path}: {error}") from None
    return sock


def _read_hello(sock: socket.socket, socket_dir: Path) -> Any:
    try:
        received = fdwire.receive(sock)
    except socket.timeout:
        raise errors.Unavailable(f"the broker at {socket_dir} sent no HELLO within {CONNECT_TIMEOUT} s") from None
    except OSError as error:   # e.g. reset by a broker that is starting or dying
        raise errors.Unavailable(f"the broker at {socket_dir} dropped the connection before HELLO: {error}") from None
    fdwire.close_fds(received.fds)
    if received.eof or received.message is None or not received.message.HasField("hello"):
        raise errors.Unavailable(
            f"the broker at {socket_dir} did not greet this session "
            f"({received.error or 'connection closed'}); is it overloaded or a different program?"
        )
    sock.settimeout(None)
    return received.message.hello


class Session:
    """A client's session. Use as a context manager, or call close()."""

    def __init__(self, socket_dir: str | os.PathLike | None = None, *, reconnect: bool = True) -> None:
        self.socket_dir = Path(socket_dir) if socket_dir is not None else default_socket_dir()
        self.reconnect = reconnect
        self.reconnect_timeout = RECONNECT_TIMEOUT
        self.reconnects = 0             # successful reconnections so far
        self.last_reconnect_gap = 0.0   # seconds from losing the broker to being whole again
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._fds_ready = threading.Condition(self._lock)
        self._connected = threading.Event()
        self._tickets: dict[int, list[int]] = {}
        self._closed = False
        self._event_handlers: list[Callable[[pb.Event], None]] = []
        self._reconnect_handlers: list[Callable[["Session", float], None]] = []
        self._attachments: "weakref.WeakValueDictionary[int, Attachment]" = weakref.WeakValueDictionary()
        self._exports: dict[int, ExportedBuffer] = {}
        self._link = _Link(self)
        self._adopt_hello(self._link.hello)
        self._connected.set()

    def _adopt_hello(self, hello: Any) -> None:
        self.id = hello.session_id
        self.token = hello.session_token
        self.pid, self.uid, self.gid = hello.pid, hello.uid, hello.gid
        self.broker_version = hello.broker_version

    @property
    def stub(self) -> pb_grpc.BrokerStub:
        return self._link.stub

    # --- losing and regaining the broker -------------------------------------------

    def _fds_arrived(self, link: _Link, ticket: int, fds: list[int]) -> None:
        with self._lock:
            if link is not self._link or self._closed:
                fdwire.close_fds(fds)   # a ticket of a dead link: nobody will claim it
                return
            self._tickets[ticket] = fds
            self._fds_ready.notify_all()

    def _link_lost(self, link: _Link, why: str) -> None:
        with self._lock:
            if link is not self._link or self._closed or link.closed:
                return
            link.lost = why
            self._connected.clear()
            leftovers = [fd for fds in self._tickets.values() for fd in fds]
            self._tickets.clear()
            self._fds_ready.notify_all()
        fdwire.close_fds(leftovers)
        if self.reconnect:
            log.warning("bufbroker: lost the broker at %s (%s); reconnecting", self.socket_dir, why)
            threading.Thread(target=self._reconnect, args=(time.monotonic(),), name="bufbroker-reconnect", daemon=True).start()

    def _reconnect(self, lost_at: float) -> None:
        """Reconnect with backoff, then register exports and re-attach again."""
        delay, deadline = 0.02, lost_at + self.reconnect_timeout
        while not self._closed:
            try:
                link = _Link(self)
                break
            except errors.BrokerError as error:
                if time.monotonic() + delay > deadline:
                    log.error("bufbroker: gave up reconnecting to %s after %.0f s: %s", self.socket_dir, self.reconnect_timeout, error)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        else:
            return
        with self._lock:
            old, self._link = self._link, link
            self._adopt_hello(link.hello)
        old.close()
        self._connected.set()
        for exported in list(self._exports.values()):
            try:
                exported._register_again()
            except errors.BrokerError as error:
                log.error("bufbroker: could not register buffer %r again: %s", exported.name, error)
        for attachment in list(self._attachments.values()):
            attachment._attach_again(deadline)
        self.reconnects += 1
        self.last_reconnect_gap = time.monotonic() - lost_at
        log.warning("bufbroker: reconnected to %s after %.3f s", self.socket_dir, self.last_reconnect_gap)
        for handler in list(self._reconnect_handlers):
            try:
                handler(self, self.last_reconnect_gap)
            except Exception:
                log.exception("bufbroker: an on_reconnect callback failed")

    def on_reconnect(self, callback: Callable[["Session", float], None]) -> None:
        """Call ``callback(session, gap_seconds)`` after each reconnection is complete."""
        self._reconnect_handlers.append(callback)

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Wait until the session has a live broker (after a restart); True if it has."""
        return self._connected.wait(timeout)

    def _dispatch(self, event: pb.Event) -> None:
        """Route a session event to the attachments it names."""
        kind = event.WhichOneof("kind")
        if kind == "revoked":
            for attachment_id in event.revoked.attachment_ids:
                attachment = self._attachments.get(attachment_id)
                if attachment is not None:
                    attachment._on_revoked(event.revoked.reason)
        elif kind == "move_notify":
            attachment = self._attachments.get(event.move_notify.attachment_id)
            if attachment is not None:
                attachment._on_move_notify(event.move_notify.reason)
        elif kind == "attachment_invalidated":
            attachment = self._attachments.get(event.attachment_invalidated.attachment_id)
            if attachment is not None:
                attachment._on_invalidated(event.attachment_invalidated.reason)
        elif kind == "exporter_gone":
            for attachment in list(self._attachments.values()):
                if attachment.buffer_id == event.exporter_gone.buffer_id:
                    attachment.exporter_gone = True
        for handler in list(self._event_handlers):
            try:
                handler(event)
            except Exception:
                log.exception("bufbroker: an event callback failed")

    def add_event_handler(self, handler: Callable[[pb.Event], None]) -> None:
        """Call ``handler(event)`` on the events thread for every session event."""
        self._event_handlers.append(handler)

    # --- plumbing for the other SDK modules ---------------------------------------

    def call(self, method: str, request: Any) -> Any:
        """Invoke an RPC with the session token; raise the SDK's errors.

        While the session is reconnecting after a broker restart, the call
        waits (up to the reconnect timeout) for the new broker.
        """
        if self._closed:
            raise errors.FailedPrecondition("this session is closed; connect() again")
        if not self._connected.is_set() and not self._connected.wait(self.reconnect_timeout if self.reconnect else 0):
            raise errors.Unavailable(f"no broker at {self.socket_dir}: the session lost it and has not reconnected")
        link = self._link
        try:
            return getattr(link.stub, method)(request, metadata=link.metadata)
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None

    def fast_call(self, method: str, request: Any) -> tuple[Any, list[int]]:
        """Attach, Map, Unmap or Detach: the response and the fds of its mapping, if any.

        On a free call channel when there is one (one datagram each way),
        else as the gRPC call with the fds taken from the fd channel.
        """
        link = self._link
        channel = link.calls.borrow() if self._connected.is_set() and not self._closed else None
        if channel is None:
            response = self.call(method, request)
            mapped = None
            if method == "Map":
                mapped = response
            elif method == "Attach" and response.HasField("mapping"):
                mapped = response.mapping
            return response, self.take_fds(mapped.fd_ticket, mapped.fd_count) if mapped is not None else []
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
        """Send ``fds`` on the fd channel under a fresh nonce; return the nonce."""
        nonce = secrets.token_hex(8)
        message = fd_channel_pb2.FdMessage(send_fds=fd_channel_pb2.SendFds(nonce=nonce, fd_count=len(fds)))
        with self._send_lock:
            try:
                fdwire.send(self._link.sock, message, list(fds))
            except OSError as error:
                raise errors.Unavailable(f"cannot send fds to the broker: {error}") from None
        return nonce

    def take_fds(self, ticket: int, count: int) -> list[int]:
        """The fds the broker sent under ``ticket``; the caller owns them."""
        with self._lock:
            link = self._link
            ok = self._fds_ready.wait_for(
                lambda: ticket in self._tickets or link.lost or self._closed, FD_WAIT_TIMEOUT
            )
            fds = self._tickets.pop(ticket, None)
            lost = link.lost
        if fds is None:
            why = lost or ("session closed" if self._closed else f"nothing arrived within {FD_WAIT_TIMEOUT} s")
            raise errors.Unavailable(f"the fds for ticket {ticket} did not arrive: {why}")
        if not ok or len(fds) != count:
            fdwire.close_fds(fds)
            raise errors.Unavailable(f"ticket {ticket}: expected {count} fds, got {len(fds)}")
        return fds

    # --- the public API -------------------------------------------------------------

    def export(
        self,
        size: Optional[int] = None,
        *,
        fd: int | Sequence[int] | None = None,
        name: Optional[str] = None,
        offers: Optional[Sequence[specs.Spec]] = None,
        layout: Optional[Mapping[str, Any]] = None,
        labels: Optional[Mapping[str, str]] = None,
        allow: Optional[Sequence[str]] = None,
        on_exporter_exit: str = "revoke",
    ) -> "ExportedBuffer":
        """Register a buffer; returns the exporter's handle on it.

        Give ``size`` and the SDK makes a sealed memfd of that size, or give
        ``fd``: a memfd you made with MFD_ALLOW_SEALING (or a list of them,
        one per plane, for ``segments``), or a dma-buf fd for ``dmabuf``
        offers (``bufbroker.dmabuf.heap_alloc()``); the SDK sends a
        duplicate and you keep yours. ``offers`` is the exporter's ordered list of mapping
        types (names or specs like ``bufbroker.Memfd(access="read")``); the
        default is ``["memfd"]``. ``allow`` lists who may attach
        (``uid:N``, ``gid:N``, ``same-uid``, ``any``; default ``same-uid``).
        ``on_exporter_exit``: ``"revoke"`` (default) withdraws the buffer when
        this session ends; ``"keep"`` keeps it until its last importer detaches.
        """
        from bufbroker.buffers import EXIT_POLICIES, ExportedBuffer, layout_to_wire

        if on_exporter_exit not in EXIT_POLICIES:
            raise ValueError(f"on_exporter_exit must be one of {sorted(EXIT_POLICIES)}, not {on_exporter_exit!r}")
        fds, size = backing_fds(size, fd, name or "bufbroker")
        try:
            request = pb.RegisterBufferRequest(
                size=size,
                name=name or "",
                labels=dict(labels or {}),
                offers=specs.offers_to_wire(offers),
                allow=list(allow or ()),
                on_exporter_exit=EXIT_POLICIES[on_exporter_exit],
            )
            if layout is not None:
                request.layout.CopyFrom(layout_to_wire(layout))
            request.nonce = self.send_fds(fds)
            response = self.call("RegisterBuffer", request)
        except BaseException:
            fdwire.close_fds(fds)
            raise
        exported = ExportedBuffer(self, response.buffer, fds, request)
        self._exports[exported.id] = exported
        return exported

    def attach(
        self,
        buffer: int | str,
        *,
        accept: Optional[Sequence[specs.Spec]] = None,
        access: str = "read",
        map: bool = False,
    ) -> "Attachment":
        """Attach to a buffer by id (int) or name (str).

        ``accept`` is the importer's ordered list of mapping types it can
        use; empty or None makes a compat importer that gets ``memfd`` and
        pins the buffer. ``access`` is "read" or "read_write". With
        ``map=True`` the first mapping is made in the same round trip
        (``Attachment.mapping``).
        Raises NoCommonMappingType (with ``.trace``) when nothing matches.
        """
        from bufbroker.attachment import Attachment

        request = pb.AttachRequest(
            accept=specs.accept_to_wire(accept, access),
            access=specs.access_value(access),
            map=map,
        )
        if isinstance(buffer, str):
            request.buffer_name = buffer
        elif isinstance(buffer, int) and buffer >= 0:
            request.buffer_id = buffer
        else:
            raise TypeError(f"attach() takes a buffer id (int) or name (str), not {buffer!r}")
        response, fds = self.fast_call("Attach", request)
        request.map = False   # a replay after a restart maps only if a mapping is held
        attachment = Attachment(self, response, request, fds)
        self._attachments[attachment.id] = attachment
        return attachment

    def buffers(self, name: str = "") -> list[pb.BufferInfo]:
        """Every registered buffer (or the one named ``name``)."""
        found: list[pb.BufferInfo] = []
        after = 0
        while True:
            page = self.call("ListBuffers", pb.ListBuffersRequest(name=name, after_id=after, page_size=1000))
            found.extend(page.buffers)
            if not page.next_after_id:
                return found
            after = page.next_after_id

    def explain(self, buffer: int | str, *, accept: Optional[Sequence[specs.Spec]] = None, access: str = "read") -> pb.ExplainResponse:
        """Negotiate without attaching: what an attach would get, and why."""
        request = pb.ExplainRequest(accept=specs.accept_to_wire(accept, access), access=specs.access_value(access))
        if isinstance(buffer, str):
            request.buffer_name = buffer
        else:
            request.buffer_id = buffer
        return self.call("Explain", request)

    def stats(self) -> pb.GetStatsResponse:
        return self.call("GetStats", pb.GetStatsRequest())

    def close(self) -> None:
        """End the session: the broker detaches its attachments and revokes its buffers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            leftovers = [fd for fds in self._tickets.values() for fd in fds]
            self._tickets.clear()
            self._fds_ready.notify_all()
        fdwire.close_fds(leftovers)
        self._connected.set()   # wake callers waiting for a reconnect: they see closed
        link = getattr(self, "_link", None)
        if link is not None:
            link.close()
        # This process's side: the exporters' memfds and mappings, the
        # importers' fds and views (numpy arrays made from them keep their
        # pages until dropped).
        for exported in list(getattr(self, "_exports", {}).values()):
            exported.close()
        for attachment in list(getattr(self, "_attachments", {}).values()):
            attachment.detached = True
            attachment._drop_mappings(tell_broker=False)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<bufbroker.Session {getattr(self, 'id', '?')} at {self.socket_dir}>"


from bufbroker.attachment import Attachment  # noqa: E402  (type names for users)
from bufbroker.buffers import ExportedBuffer  # noqa: E402
