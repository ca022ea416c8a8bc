"""Session: one connection to the broker (fd channel + gRPC), thread-safe.

``connect()`` opens the fd channel, reads the broker's HELLO (the session
token), opens the gRPC channel and the session's event stream, and starts
two daemon threads: one reads the fd channel (fds arrive there under
tickets), one reads events. Everything the session hands out is released
by ``close()``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import grpc

from bufbroker import errors, fdwire, specs
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import broker_pb2_grpc as pb_grpc
from bufbroker.v1 import fd_channel_pb2

log = logging.getLogger("bufbroker")

CONNECT_TIMEOUT = 5.0
FD_WAIT_TIMEOUT = 5.0


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
    return fds, os.fstat(fds[0]).st_size


def connect(socket_dir: str | os.PathLike | None = None) -> "Session":
    """Open a session with the broker serving ``socket_dir``."""
    return Session(socket_dir)


class Session:
    """A client's session. Use as a context manager, or call close()."""

    def __init__(self, socket_dir: str | os.PathLike | None = None) -> None:
        self.socket_dir = Path(socket_dir) if socket_dir is not None else default_socket_dir()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._fds_ready = threading.Condition(self._lock)
        self._tickets: dict[int, list[int]] = {}
        self._notices: dict[str, Any] = {}
        self._closed = False
        self._channel_lost = ""
        self._event_handlers: list[Callable[[pb.Event], None]] = []
        self._attachments: "weakref.WeakValueDictionary[int, Attachment]" = weakref.WeakValueDictionary()
        self._exports: dict[int, ExportedBuffer] = {}
        self._sock = self._open_fd_channel()
        try:
            hello = self._read_hello()
            self.id = hello.session_id
            self.token = hello.session_token
            self.pid, self.uid, self.gid = hello.pid, hello.uid, hello.gid
            self.broker_version = hello.broker_version
            self._metadata = ((fdwire.SESSION_METADATA_KEY, self.token),)
            self._channel = grpc.insecure_channel(f"unix:{self.socket_dir / 'grpc.sock'}")
            self.stub = pb_grpc.BrokerStub(self._channel)
            self._reader = threading.Thread(target=self._read_fd_channel, name="bufbroker-fd", daemon=True)
            self._reader.start()
            self._events_ready = threading.Event()
            self._events_call = self.stub.Events(pb.EventsRequest(), metadata=self._metadata)
            self._events_thread = threading.Thread(target=self._read_events, name="bufbroker-events", daemon=True)
            self._events_thread.start()
            if not self._events_ready.wait(CONNECT_TIMEOUT):
                raise errors.Unavailable(
                    f"the broker at {self.socket_dir} did not open this session's event stream "
                    f"within {CONNECT_TIMEOUT} s"
                )
        except BaseException:
            self.close()
            raise

    # --- connection -------------------------------------------------------------

    def _open_fd_channel(self) -> socket.socket:
        path = self.socket_dir / "fd.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as error:
            sock.close()
            raise errors.Unavailable(
                f"no broker is serving {self.socket_dir} ({error.strerror}): start one with "
                f"`bufbroker serve --socket-dir {self.socket_dir}`"
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

    def _read_hello(self) -> Any:
        try:
            received = fdwire.receive(self._sock)
        except socket.timeout:
            raise errors.Unavailable(f"the broker at {self.socket_dir} sent no HELLO within {CONNECT_TIMEOUT} s") from None
        fdwire.close_fds(received.fds)
        if received.eof or received.message is None or not received.message.HasField("hello"):
            raise errors.Unavailable(
                f"the broker at {self.socket_dir} did not greet this session "
                f"({received.error or 'connection closed'}); is it overloaded or a different program?"
            )
        self._sock.settimeout(None)
        return received.message.hello

    def _read_fd_channel(self) -> None:
        while True:
            try:
                received = fdwire.receive(self._sock)
            except OSError as error:
                self._lost(f"fd channel read failed: {error}")
                return
            if received.eof:
                self._lost("the broker closed this session's fd channel")
                return
            message = received.message
            if message is None or received.truncated:
                fdwire.close_fds(received.fds)
                log.warning("bufbroker: dropped a bad fd-channel message: %s", received.error or "fds truncated")
                continue
            kind = message.WhichOneof("kind")
            if kind == "deliver_fds":
                with self._lock:
                    self._tickets[message.deliver_fds.ticket] = received.fds
                    self._fds_ready.notify_all()
            else:
                fdwire.close_fds(received.fds)
                if kind == "notice":
                    with self._lock:
                        self._notices[message.notice.nonce] = message.notice
                    log.warning("bufbroker: broker notice: %s", message.notice.message)

    def _lost(self, why: str) -> None:
        with self._lock:
            if not self._closed:
                self._channel_lost = why
            self._fds_ready.notify_all()

    def _read_events(self) -> None:
        try:
            for event in self._events_call:
                if event.HasField("ready"):
                    self._events_ready.set()
                    continue
                self._dispatch(event)
                for handler in list(self._event_handlers):
                    try:
                        handler(event)
                    except Exception:
                        log.exception("bufbroker: an event callback failed")
        except grpc.RpcError as error:
            if not self._closed and error.code() != grpc.StatusCode.CANCELLED:
                log.warning("bufbroker: event stream ended: %s", error.details())

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

    def add_event_handler(self, handler: Callable[[pb.Event], None]) -> None:
        """Call ``handler(event)`` on the events thread for every session event."""
        self._event_handlers.append(handler)

    # --- plumbing for the other SDK modules ---------------------------------------

    def call(self, method: str, request: Any) -> Any:
        """Invoke an RPC with the session token; raise the SDK's errors."""
        if self._closed:
            raise errors.FailedPrecondition("this session is closed; connect() again")
        try:
            return getattr(self.stub, method)(request, metadata=self._metadata)
        except grpc.RpcError as error:
            raise errors.from_rpc_error(error) from None

    def send_fds(self, fds: Sequence[int]) -> str:
        """Send ``fds`` on the fd channel under a fresh nonce; return the nonce."""
        nonce = secrets.token_hex(8)
        message = fd_channel_pb2.FdMessage(send_fds=fd_channel_pb2.SendFds(nonce=nonce, fd_count=len(fds)))
        with self._send_lock:
            try:
                fdwire.send(self._sock, message, list(fds))
            except OSError as error:
                raise errors.Unavailable(f"cannot send fds to the broker: {error}") from None
        return nonce

    def take_fds(self, ticket: int, count: int) -> list[int]:
        """The fds the broker sent under ``ticket``; the caller owns them."""
        with self._lock:
            ok = self._fds_ready.wait_for(
                lambda: ticket in self._tickets or self._channel_lost or self._closed, FD_WAIT_TIMEOUT
            )
            fds = self._tickets.pop(ticket, None)
            lost = self._channel_lost
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
        one per plane, for ``segments``); the SDK sends a duplicate and you
        keep yours. ``offers`` is the exporter's ordered list of mapping
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
        response = self.call("Attach", request)
        attachment = Attachment(self, response)
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
        call = getattr(self, "_events_call", None)
        if call is not None:
            call.cancel()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        reader = getattr(self, "_reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2)
        self._sock.close()
        events_thread = getattr(self, "_events_thread", None)
        if events_thread is not None and events_thread is not threading.current_thread():
            events_thread.join(timeout=2)
        channel = getattr(self, "_channel", None)
        if channel is not None:
            channel.close()

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
