"""Session: one client's session with the broker, thread-safe.

``connect()`` opens the session's transport (``bufbroker.transport``: fd
channel, gRPC channel, event stream, call channels) and from then on the
session hands out handles: ``export()`` gives an ExportedBuffer,
``attach()`` an Attachment. It keeps them so that a broker restart can
register and attach them again, and so that ``close()`` releases
everything it handed out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from bufbroker import errors, fdwire, specs
from bufbroker.attachment import Attachment
from bufbroker.backing import backing_fds
from bufbroker.buffers import EXIT_POLICIES, ExportedBuffer
from bufbroker.events import EventDispatcher
from bufbroker.planes import layout_bytes, layout_to_wire
from bufbroker.slotpool import ConsumerMode, DropPolicy
from bufbroker.streamlink import DEFAULT_MAX_META_BYTES, LinkEnd
from bufbroker.streams import Stream, StreamRegistry, Subscription, layout_pair, mode_value, stall_value
from bufbroker.transport import CallObserver, Link, Transport
from bufbroker.v1 import broker_pb2 as pb

log = logging.getLogger("bufbroker")


def default_socket_dir() -> Path:
    """$BUFBROKER_SOCKET_DIR, else $XDG_RUNTIME_DIR/bufbroker, else /run/bufbroker."""
    explicit = os.environ.get("BUFBROKER_SOCKET_DIR")
    if explicit:
        return Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if os.geteuid() == 0 or not runtime:
        return Path("/run/bufbroker")
    return Path(runtime) / "bufbroker"


def connect(
    socket_dir: str | os.PathLike[str] | None = None, *, reconnect: bool = True, name: str | None = None
) -> Session:
    """Open a session with the broker serving ``socket_dir``.

    With ``reconnect`` (the default), if the broker dies the session
    reconnects with backoff when a broker serves the dir again, registers
    its exported buffers again under the same names and re-attaches its
    attachments by name; mappings already held stay valid throughout.
    ``name`` (e.g. "decoder") is shown beside the pid by the dashboard,
    ``bufbroker top`` and ``bufbroker ls``.
    """
    return Session(socket_dir, reconnect=reconnect, name=name)


class Session:
    """A client's session. Use as a context manager, or call close()."""

    def __init__(
        self, socket_dir: str | os.PathLike[str] | None = None, *, reconnect: bool = True, name: str | None = None
    ) -> None:
        self.socket_dir = Path(socket_dir) if socket_dir is not None else default_socket_dir()
        self.reconnects = 0  # successful reconnections so far
        self.last_reconnect_gap = 0.0  # seconds from losing the broker to being whole again
        self._reconnect_handlers: list[Callable[[Session, float], None]] = []
        # The handles this session gave out, by their id at the current broker.
        # Attachments are kept weakly (dropping one ends nothing at the
        # broker); exports strongly: their fds must survive a broker restart.
        self._attachments: weakref.WeakValueDictionary[int, Attachment] = weakref.WeakValueDictionary()
        self._exports: dict[int, ExportedBuffer] = {}
        self._streams = StreamRegistry()  # the streams this session produces, by id
        self._subscriptions: list[Subscription] = []
        self.name = name or ""
        self._events = EventDispatcher(self._attachments, self._streams)
        self._transport = Transport(
            self.socket_dir, reconnect=reconnect, on_event=self._events.dispatch, on_reconnected=self._restore
        )
        if self.name:
            try:
                self.call("SetSessionName", pb.SetSessionNameRequest(name=self.name))
            except BaseException:
                self._transport.close()
                raise

    # --- who this session is at the current broker ------------------------------------------

    @property
    def id(self) -> int:
        return self._transport.hello.session_id

    @property
    def token(self) -> str:
        return self._transport.hello.session_token

    @property
    def pid(self) -> int:
        return self._transport.hello.pid

    @property
    def uid(self) -> int:
        return self._transport.hello.uid

    @property
    def gid(self) -> int:
        return self._transport.hello.gid

    @property
    def broker_version(self) -> str:
        return self._transport.hello.broker_version

    @property
    def stub(self) -> Any:
        """The generated gRPC stub of the current broker (calls on it need ``metadata`` with the token)."""
        return self._link.stub

    @property
    def _link(self) -> Link:
        return self._transport.link

    # --- reconnection ---------------------------------------------------------------------

    @property
    def reconnect(self) -> bool:
        """Whether the session reconnects after losing its broker."""
        return self._transport.reconnect

    @reconnect.setter
    def reconnect(self, value: bool) -> None:
        self._transport.reconnect = value

    @property
    def reconnect_timeout(self) -> float:
        """Seconds a reconnection keeps trying, and calls wait for it."""
        return self._transport.reconnect_timeout

    @reconnect_timeout.setter
    def reconnect_timeout(self, value: float) -> None:
        self._transport.reconnect_timeout = value

    def on_reconnect(self, callback: Callable[[Session, float], None]) -> None:
        """Call ``callback(session, gap_seconds)`` after each reconnection is complete."""
        self._reconnect_handlers.append(callback)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the session has a live broker (after a restart); True if it has."""
        return self._transport.wait_connected(timeout)

    def _restore(self, lost_at: float, deadline: float) -> None:
        """On the reconnect thread, once a new broker answers: register exports and re-attach again."""
        if self.name:
            try:
                self.call("SetSessionName", pb.SetSessionNameRequest(name=self.name))
            except errors.BrokerError as error:
                log.error("bufbroker: could not name the session %r again: %s", self.name, error)
        exports = list(self._exports.values())
        self._exports.clear()
        unregistered: list[ExportedBuffer] = []
        for exported in exports:
            try:
                exported._register_again()
                self._exports[exported.id] = exported
            except errors.BrokerError as error:
                log.error("bufbroker: could not register buffer %r again: %s", exported.name, error)
                unregistered.append(exported)
        # Ids start again at the new broker: every handle is filed under its
        # new id at once, so an old id never hides a new one.
        for exported in unregistered:  # still closed with the session
            if not exported.closed:
                self._exports.setdefault(exported.id, exported)
        attachments = list(self._attachments.values())
        self._attachments.clear()
        lost: list[Attachment] = []  # made by id, or their buffer did not come back
        for attachment in attachments:
            if attachment._attach_again(deadline):
                self._attachments[attachment.id] = attachment
            else:
                lost.append(attachment)
        for attachment in lost:  # kept so close() releases their mappings; no broker knows their ids
            self._attachments.setdefault(attachment.id, attachment)
        self._streams.create_again()  # their slot buffers are registered again by now
        self.reconnects += 1
        self.last_reconnect_gap = time.monotonic() - lost_at
        log.warning("bufbroker: reconnected to %s after %.3f s", self.socket_dir, self.last_reconnect_gap)
        for handler in list(self._reconnect_handlers):
            try:
                handler(self, self.last_reconnect_gap)
            except Exception:
                log.exception("bufbroker: an on_reconnect callback failed")

    # --- events ---------------------------------------------------------------------------

    def add_event_handler(self, handler: Callable[[pb.Event], None]) -> None:
        """Call ``handler(event)`` on the events thread for every session event."""
        self._events.add_handler(handler)

    def observe_calls(self, observer: CallObserver) -> None:
        """Call ``observer(method, request, response)`` after every gRPC call of this session.

        On the calling thread; ``response`` is None for the streams' counter
        reports (not waited for). Attach/Map/Unmap/Detach over a call
        channel are datagrams, not gRPC calls, and are not observed. For
        instrumentation: count calls and bytes (``request.ByteSize()``).
        """
        self._transport.call_observers.append(observer)

    # --- the API ----------------------------------------------------------------------------

    def call(self, method: str, request: Any) -> Any:
        """Invoke the broker's RPC ``method`` with the session token; raise the SDK's errors.

        While the session is reconnecting after a broker restart, the call
        waits (up to the reconnect timeout) for the new broker.
        """
        return self._transport.call(method, request)

    def export(
        self,
        size: int | None = None,
        *,
        fd: int | Sequence[int] | None = None,
        name: str | None = None,
        offers: Sequence[specs.Spec] | None = None,
        layout: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        allow: Sequence[str] | None = None,
        on_exporter_exit: str = "revoke",
        allow_write: bool = False,
    ) -> ExportedBuffer:
        """Register a buffer; returns the exporter's handle on it.

        Give ``size`` and the SDK makes a sealed memfd of that size, or give
        ``fd``: a memfd you made with MFD_ALLOW_SEALING (or a list of them,
        one per plane, for ``segments``), or a dma-buf fd for ``dmabuf``
        offers (``bufbroker.dmabuf.heap_alloc()``); the SDK sends a
        duplicate and you keep yours. ``offers`` is the exporter's ordered list of mapping
        types (names or specs like ``bufbroker.Memfd(access="read")``); the
        default is ``["memfd"]``. Importers get read access only unless
        write is granted: ``allow_write=True`` makes every offer that sets no
        ``access`` (names, the default) ``read_write``, or give a spec
        ``access="read_write"`` (``udmabuf`` and ``dmabuf`` of a read-write
        fd need write allowed even for read importers: the kernel cannot
        make them read-only). ``allow`` lists who may attach
        (``uid:N``, ``gid:N``, ``same-uid``, ``any``; default ``same-uid``).
        ``on_exporter_exit``: ``"revoke"`` (default) withdraws the buffer when
        this session ends; ``"keep"`` keeps it until its last importer detaches.
        """
        if on_exporter_exit not in EXIT_POLICIES:
            raise ValueError(f"on_exporter_exit must be one of {sorted(EXIT_POLICIES)}, not {on_exporter_exit!r}")
        fds, size = backing_fds(size, fd, name or "bufbroker")
        try:
            request = pb.RegisterBufferRequest(
                size=size,
                name=name or "",
                labels=dict(labels or {}),
                offers=specs.offers_to_wire(offers, allow_write),
                allow=list(allow or ()),
                on_exporter_exit=EXIT_POLICIES[on_exporter_exit],
            )
            if layout is not None:
                request.layout.CopyFrom(layout_to_wire(layout))
            request.nonce = self._transport.send_fds(fds)
            response = self._transport.call("RegisterBuffer", request)
        except BaseException:
            fdwire.close_fds(fds)
            raise
        exported = ExportedBuffer(
            self._transport, response.buffer, fds, request, on_close=self._forget_export, allow_write=allow_write
        )
        self._exports[exported.id] = exported
        return exported

    def attach(
        self,
        buffer: int | str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        wait: float = 0.0,
        accept: Sequence[specs.Spec] | None = None,
        access: str = "read",
        map: bool = False,
    ) -> Attachment:
        """Attach to a buffer by id (int) or name (str), or by ``labels``.

        ``labels`` (instead of ``buffer``) selects the one buffer you may see
        that carries all of them; when several do, FailedPrecondition names
        them. ``wait`` is how many seconds to wait for the buffer to be
        registered if it is not there yet (the broker waits for the
        registration: no polling; at most 300 s); after that, NotFound.
        ``accept`` is the importer's ordered list of mapping types it can
        use; empty or None makes a compat importer that gets ``memfd`` and
        pins the buffer. ``access`` is "read" or "read_write". With
        ``map=True`` the first mapping is made in the same round trip
        (``Attachment.mapping``).
        Raises NoCommonMappingType (with ``.trace``) when nothing matches.
        """
        request = pb.AttachRequest(
            accept=specs.accept_to_wire(accept, access),
            access=specs.access_value(access),
            map=map,
            wait_seconds=wait,
            labels=dict(labels or {}),
        )
        if buffer is not None and labels:
            raise TypeError("attach() takes a buffer id or name, or labels, not both")
        if isinstance(buffer, str):
            request.buffer_name = buffer
        elif isinstance(buffer, int) and buffer >= 0:
            request.buffer_id = buffer
        elif buffer is not None or not labels:
            raise TypeError(f"attach() takes a buffer id (int), a name (str) or labels, not {buffer!r}")
        if wait:
            # As the gRPC call, which has no deadline (the broker bounds the wait),
            # so it holds no call channel and outlasts no call-channel timeout.
            response, link = self._transport._call("Attach", request)
            mapped = response.mapping if response.HasField("mapping") else None
            fds = link.take_fds(mapped.fd_ticket, mapped.fd_count) if mapped is not None else []
        else:
            response, fds = self._transport.fast_call("Attach", request)
        request.map = False  # a replay after a restart maps only if a mapping is held
        request.wait_seconds = 0  # and the buffer is there, or has not come back
        attachment = Attachment(self._transport, response, request, fds)
        self._attachments[attachment.id] = attachment
        return attachment

    def create_stream(
        self,
        name: str,
        *,
        slots: int = 4,
        size: int | None = None,
        layout: Mapping[str, Any] | None = None,
        offers: Sequence[specs.Spec] | None = None,
        labels: Mapping[str, str] | None = None,
        allow: Sequence[str] | None = None,
        stall_timeout: float | None = None,
        on_stall: str = "reclaim",
        drop: DropPolicy = "block",
        max_held: int | None = None,
        fds: Sequence[int] | None = None,
        formats: Sequence[specs.FormatPair] | None = None,
        renegotiate: bool = False,
        align: int = 1,
    ) -> Stream:
        """Produce a stream named ``name``: ``slots`` buffers of ``size`` bytes (or as ``layout`` needs).

        Each slot is exported as ``export()`` would (``offers``, ``allow``),
        labelled ``bufbroker.stream=NAME`` and ``bufbroker.slot=K`` besides
        ``labels``; consumers are attached to every slot. ``stall_timeout``
        (seconds; None: the broker's setting, 2 s) is how long a consumer may
        hold a slot before ``on_stall`` applies: ``"reclaim"`` takes it back,
        ``"report"`` only reports it. ``drop``: with ``"block"``
        ``acquire()`` waits for a free slot, with ``"oldest"`` it overwrites
        the oldest frame no consumer holds. ``max_held`` caps the slots one
        consumer may hold (None: slots - 1). ``fds``: your own backing, one
        per slot (a memfd or a dma-buf each, e.g. ``dmabuf.heap_alloc()``
        or a GPU's export; the SDK sends duplicates and you keep yours),
        instead of memfds the SDK makes; a dma-buf slot's frames carry its
        implicit fences (bufbroker.implicit_fences).

        Formats: a ``layout`` whose format bufbroker.formats knows puts its
        (format, modifier) pair on every slot offer that lists none, so an
        importer listing pairs is matched against it. ``formats`` are the
        pairs this producer can produce (its order; default: the layout's
        alone). With ``renegotiate=True`` a consumer accepting none of the
        current pair but another of ``formats`` (that every consumer
        accepts) has the SDK move the slots to it, as ``move()`` does, with
        a layout ``bufbroker.formats.derive_layout`` makes for the same
        width and height (rows aligned to ``align``): frames then show the
        new ``layout``; write each frame in the format it shows.
        ``close()`` the stream (or the session) to end it.
        """
        stall = stall_value(on_stall)
        if drop not in ("block", "oldest"):
            raise ValueError(f"drop must be 'block' or 'oldest', not {drop!r}")
        if fds is not None and len(fds) != slots:
            raise ValueError(f"create_stream() got {len(fds)} fds for {slots} slots: give one backing per slot")
        if size is None and layout is not None:
            size = layout_bytes(layout)
        if size is None and fds is None:
            raise ValueError("create_stream() needs size=, layout= or fds=")
        current = layout_pair(layout)
        can_produce = specs.format_pairs_to_wire(formats if formats is not None else ([current] if current else []))
        if renegotiate and not can_produce:
            raise ValueError("renegotiate=True needs formats= (or a layout of a known format) to renegotiate among")
        slot_offers = specs.with_formats(offers, [current]) if current else offers
        buffers: list[ExportedBuffer] = []
        try:
            for slot in range(slots):
                slot_labels = {**(labels or {}), "bufbroker.stream": name, "bufbroker.slot": str(slot)}
                backing = None if fds is None else fds[slot]
                buffers.append(
                    self.export(
                        size if backing is None else None,
                        fd=backing,
                        offers=slot_offers,
                        layout=layout,
                        labels=slot_labels,
                        allow=allow,
                    )
                )
            request = pb.CreateStreamRequest(
                name=name,
                slot_buffer_ids=[buffer.id for buffer in buffers],
                stall_timeout=stall_timeout or 0.0,
                on_stall=stall,
                max_held=max_held or 0,
                labels=dict(labels or {}),
                formats=can_produce,
                renegotiate=renegotiate,
            )
            # Held while CreateStream is in flight: a consumer's link announced before the reply waits for the stream.
            with self._streams.creating():
                response = self.call("CreateStream", request)
                stream = Stream(
                    self._transport,
                    response.stream,
                    buffers,
                    drop,
                    on_close=self._streams.remove,
                    offers=offers,
                    align=align,
                )
                self._streams.add(stream)
        except BaseException:
            for buffer in buffers:
                try:
                    buffer.unregister()
                except errors.BrokerError:
                    buffer.close()
            raise
        return stream

    def subscribe(
        self,
        name: str,
        *,
        accept: Sequence[specs.Spec] | None = None,
        mode: ConsumerMode = "queue",
        max_held: int = 1,
        wait: float = 0.0,
    ) -> Subscription:
        """Join the stream ``name`` as a consumer; returns the Subscription to receive frames from.

        The broker attaches and maps every slot with ``accept`` (importer
        order, as ``attach()``; read access) and opens the link to the
        producer. ``mode="queue"`` gets every frame in order (the producer
        waits for you, up to its stall timeout); ``"latest"`` only frames
        published while you hold fewer than ``max_held`` slots (the others
        are dropped for you and counted). ``wait`` is how many seconds to
        wait for the stream to be created (the broker waits: no polling; at
        most 300 s); after that, NotFound. The first frame you get is the
        next one published.
        """
        request = pb.SubscribeRequest(
            name=name,
            accept=specs.accept_to_wire(accept, "read"),
            mode=mode_value(mode),
            max_held=max_held,
            wait_seconds=wait,
        )
        response, link = self._transport._call("Subscribe", request)  # no deadline: the broker bounds the wait
        attachments: list[Attachment] = []
        try:
            for slot, attached in enumerate(response.slots):
                mapped = attached.mapping if attached.HasField("mapping") else None
                fds = link.take_fds(mapped.fd_ticket, mapped.fd_count) if mapped is not None else []
                # Filed by labels: after a broker restart it is attached again to the slot registered again.
                again = pb.AttachRequest(
                    accept=request.accept,
                    access=specs.access_value("read"),
                    labels={"bufbroker.stream": name, "bufbroker.slot": str(slot)},
                )
                attachment = Attachment(self._transport, attached, again, fds)
                attachments.append(attachment)
                self._attachments[attachment.id] = attachment
            link_fds = link.take_fds(response.link_fd_ticket, 1)
            end = LinkEnd(socket.socket(fileno=link_fds[0]), response.stream.max_meta_bytes or DEFAULT_MAX_META_BYTES)
            subscription = Subscription(
                self._transport, response, attachments, end, mode, on_close=self._subscriptions.remove
            )
        except BaseException:
            for attachment in attachments:
                with contextlib.suppress(errors.BrokerError):
                    attachment.detach()
            raise
        self._subscriptions.append(subscription)
        return subscription

    def buffers(self, name: str = "", *, labels: Mapping[str, str] | None = None) -> list[pb.BufferInfo]:
        """Every registered buffer you may see (or the one named ``name``), with all of ``labels`` if given."""
        found: list[pb.BufferInfo] = []
        after = 0
        while True:
            page = self.call(
                "ListBuffers",
                pb.ListBuffersRequest(name=name, after_id=after, page_size=1000, labels=dict(labels or {})),
            )
            found.extend(page.buffers)
            if not page.next_after_id:
                return found
            after = page.next_after_id

    def explain(
        self, buffer: int | str, *, accept: Sequence[specs.Spec] | None = None, access: str = "read"
    ) -> pb.ExplainResponse:
        """Negotiate without attaching: what an attach would get, and why."""
        request = pb.ExplainRequest(accept=specs.accept_to_wire(accept, access), access=specs.access_value(access))
        if isinstance(buffer, str):
            request.buffer_name = buffer
        else:
            request.buffer_id = buffer
        return cast(pb.ExplainResponse, self.call("Explain", request))

    def stats(self) -> pb.GetStatsResponse:
        return cast(pb.GetStatsResponse, self.call("GetStats", pb.GetStatsRequest()))

    def close(self) -> None:
        """End the session: the broker detaches its attachments and revokes its buffers."""
        if self._transport.closed:
            return
        # Streams first: their consumers get Bye (end of stream) and their links close.
        for stream in self._streams.all():
            stream._close_locally()
        for subscription in list(self._subscriptions):
            subscription._close_locally()
        self._transport.close()
        # This process's side: the exporters' memfds and mappings, the
        # importers' fds and views (numpy arrays made from them keep their
        # pages until dropped).
        for exported in list(self._exports.values()):
            exported.close()
        for attachment in list(self._attachments.values()):
            attachment._close_locally()

    @property
    def closed(self) -> bool:
        return self._transport.closed

    def _forget_export(self, exported: ExportedBuffer) -> None:
        if self._exports.get(exported.id) is exported:
            del self._exports[exported.id]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        transport = getattr(self, "_transport", None)
        return f"<bufbroker.Session {transport.hello.session_id if transport else '?'} at {self.socket_dir}>"
