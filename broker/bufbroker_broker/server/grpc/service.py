"""The Broker gRPC service (grpc.aio) on DIR/grpc.sock.

Handlers authenticate the session from its token, turn wire messages into
core calls and back, and leave every rule to the core. fds travel on the
fd channel; this module only names them (nonces and tickets).
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import ExitStack
from typing import Any, AsyncIterator, Callable

import grpc
from bufbroker.fdwire import SESSION_METADATA_KEY
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import broker_pb2_grpc as pb_grpc

from bufbroker_broker import mapping_types
from bufbroker_broker.server.fdchannel.server import FdChannelServer
from bufbroker_broker.server.grpc.errors import abort_with, expected_errors, trace_to_wire
from bufbroker_broker.core.errors import (
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from bufbroker_broker.core.principals import SAME_UID, parse_principals
from bufbroker_broker.core.registry import (
    ACTIVE,
    EXIT_KEEP,
    EXIT_REVOKE,
    Attachment,
    AttachmentInvalidatedEvent,
    Buffer,
    ExporterGoneEvent,
    Mapping,
    MoveNotifyEvent,
    Registry,
    RevokedEvent,
    Session,
)
from bufbroker_broker.core.mapping_type import MapResult
from bufbroker_broker.host.fd_inspect import inspect_fd
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.server.observe import introspection
from bufbroker_broker.server.observe.introspection import buffer_info, list_attachments, list_mapping_types, list_sessions

log = logging.getLogger(__name__)

MAX_NAME = 256
MAX_LABELS = 64
MAX_PAGE = 1000
DEFAULT_PAGE = 100
# A size the kernel can mmap on 64-bit Linux; anything larger is a typo.
MAX_SIZE = 1 << 46


class BrokerService(pb_grpc.BrokerServicer):
    def __init__(
        self, registry: Registry, channels: FdChannelServer, ledger: FdLedger, version: str, move_timeout: float = 2.0
    ) -> None:
        self.registry = registry
        self.move_timeout = move_timeout
        self.channels = channels
        self.ledger = ledger
        self.version = version
        self.event_queues: dict[int, asyncio.Queue] = {}
        registry.notify = self.notify

    # --- sessions and events ---------------------------------------------------

    def authenticate(self, context: grpc.aio.ServicerContext) -> Session:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == SESSION_METADATA_KEY:
                token = value if isinstance(value, str) else ""
        session = self.registry.sessions_by_token.get(token) if token else None
        if session is None or session.closed:
            raise Unauthenticated(
                "no valid session token: connect to the broker's fd.sock first and send the "
                f"token from its HELLO as gRPC metadata {SESSION_METADATA_KEY!r} (bufbroker.connect() does this)"
            )
        return session

    def notify(self, session: Session, event: Any) -> None:
        queue = self.event_queues.get(session.id)
        if queue is not None:
            queue.put_nowait(event_to_wire(event))

    def session_ended(self, session: Session) -> None:
        queue = self.event_queues.pop(session.id, None)
        if queue is not None:
            queue.put_nowait(None)  # ends the stream

    async def Events(self, request: pb.EventsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Event]:
        try:
            session = self.authenticate(context)
            if session.id in self.event_queues:
                raise FailedPrecondition("this session already has its event stream open; open it once")
        except BrokerError as error:
            await abort_with(context, error)
            return
        queue: asyncio.Queue = asyncio.Queue()
        self.event_queues[session.id] = queue
        session.events_open = True
        try:
            yield pb.Event(ready=pb.Ready())
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            session.events_open = False
            if self.event_queues.get(session.id) is queue:
                del self.event_queues[session.id]

    # --- buffers -------------------------------------------------------------

    @expected_errors
    async def RegisterBuffer(self, request: pb.RegisterBufferRequest, context: Any) -> pb.RegisterBufferResponse:
        session = self.authenticate(context)
        fds = await self.channels.take_fds(session, request.nonce)
        with ExitStack() as unwind:
            # Until the registry owns them, these fds are ours to close.
            unwind.callback(self.ledger.close_all, fds)
            kind = mapping_types.offers_fd_kind(request.offers)   # memfd, or dmabuf for dmabuf offers
            infos = [inspect_fd(fd, i, kind) for i, fd in enumerate(fds)]
            check_registration(request, infos[0].size)
            sizes = tuple(info.size for info in infos)
            offers = mapping_types.offers_from_wire(request.offers, sizes, request.size)
            allow = parse_principals(request.allow, "allow") or (SAME_UID,)
            buffer = self.registry.buffer_register(
                session,
                infos,
                request.size,
                offers,
                name=request.name,
                labels=dict(request.labels),
                layout=request.layout if request.HasField("layout") else None,
                allow=allow,
                on_exporter_exit=EXIT_KEEP if request.on_exporter_exit == pb.EXPORTER_EXIT_POLICY_KEEP else EXIT_REVOKE,
            )
            buffer.wire_offers = list(request.offers)
            unwind.pop_all()
        log.debug("buffer %d registered by session %d", buffer.id, session.id)
        return pb.RegisterBufferResponse(buffer=buffer_info(buffer))

    @expected_errors
    async def MoveBuffer(self, request: pb.MoveBufferRequest, context: Any) -> pb.MoveBufferResponse:
        session = self.authenticate(context)
        buffer = self.registry.buffer_owned(session, request.buffer_id)
        if buffer.moving is not None:
            raise FailedPrecondition(f"buffer {buffer.id} is already moving; wait for that move to finish")
        fds = await self.channels.take_fds(session, request.nonce)
        with ExitStack() as unwind:
            unwind.callback(self.ledger.close_all, fds)
            wire_offers = list(request.offers) or list(buffer.wire_offers)
            infos = [inspect_fd(fd, i, mapping_types.offers_fd_kind(wire_offers)) for i, fd in enumerate(fds)]
            check_size(request.size, infos[0].size)
            sizes = tuple(info.size for info in infos)
            offers = mapping_types.offers_from_wire(wire_offers, sizes, request.size)
            waiting = self.registry.move_notify(buffer, request.reason or "moved by its exporter")
            buffer.moving = asyncio.Event()
            try:
                await wait_until(lambda: not any(a.mappings for a in waiting), self.move_timeout)
                if buffer.state != ACTIVE:
                    raise FailedPrecondition(f"buffer {buffer.id} was revoked while it was moving")
                late = self.registry.move_commit(
                    buffer, infos, request.size, offers, request.layout if request.HasField("layout") else None
                )
                buffer.wire_offers = wire_offers
                unwind.pop_all()
            finally:
                buffer.moving.set()
                buffer.moving = None
        if late:
            log.warning(
                "buffer %d moved; importer(s) %s did not unmap within %s s and are marked non-compliant",
                buffer.id,
                ", ".join(f"pid {a.session.pid} (attachment {a.id})" for a in late),
                self.move_timeout,
            )
        return pb.MoveBufferResponse(buffer=buffer_info(buffer), non_compliant_attachment_ids=[a.id for a in late])

    @expected_errors
    async def RevokeBuffer(self, request: pb.RevokeBufferRequest, context: Any) -> pb.RevokeBufferResponse:
        session = self.authenticate(context)
        buffer = self.registry.buffer_owned(session, request.buffer_id)
        self.registry.buffer_revoke(buffer, request.reason or "revoked by its exporter")
        return pb.RevokeBufferResponse()

    @expected_errors
    async def UnregisterBuffer(self, request: pb.UnregisterBufferRequest, context: Any) -> pb.UnregisterBufferResponse:
        session = self.authenticate(context)
        buffer = self.registry.buffer_owned(session, request.buffer_id)
        self.registry.buffer_unregister(buffer)
        return pb.UnregisterBufferResponse()

    # --- attachments and mappings ----------------------------------------------

    def find_buffer(self, request: Any) -> Buffer:
        which = request.WhichOneof("buffer")
        if which is None:
            raise InvalidArgument("name the buffer: set buffer_id or buffer_name")
        if which == "buffer_name":
            return self.registry.buffer_find(name=request.buffer_name)
        return self.registry.buffer_find(request.buffer_id)

    def attach_now(
        self, session: Session, request: pb.AttachRequest, buffer: Buffer
    ) -> tuple[Attachment, pb.AttachResponse]:
        """Negotiate and attach to ``buffer`` (no mapping); shared by the Attach RPC and the call channel."""
        accept, compat = mapping_types.accept_from_wire(request.accept, request.access)
        if not compat and not session.events_open:
            raise FailedPrecondition(
                "a dynamic attach (one that names mapping types) needs this session's event "
                "stream open, so it can be told to unmap when the buffer moves; call Events "
                "first (bufbroker.connect() does), or attach with an empty accept list as a "
                "compat importer, which pins the buffer"
            )
        attachment = self.registry.attach(session, buffer, accept, pinned=compat)
        return attachment, pb.AttachResponse(
            attachment_id=attachment.id,
            buffer_id=buffer.id,
            map_type=attachment.map_type.name,
            trace=trace_to_wire(attachment.trace),
            pinned=attachment.pinned,
        )

    def map_now(self, attachment: Attachment) -> tuple[Mapping, MapResult, pb.MapResponse]:
        """Map a buffer that is not moving; the caller sends ``result.fds`` (and unmaps if it cannot)."""
        mapping, result = self.registry.map(attachment)
        buffer = attachment.buffer
        response = pb.MapResponse(
            mapping_id=mapping.id,
            handle=mapping_types.handle_to_wire(attachment.map_type, result.handle),
            fd_count=len(result.fds),
            size=buffer.size,
            generation=buffer.generation,
        )
        if buffer.layout is not None:
            response.layout.CopyFrom(buffer.layout)
        return mapping, result, response

    async def wait_out_move(self, buffer: Buffer) -> None:
        """Mapping during a move gets the new backing: wait for the swap."""
        moving = buffer.moving
        if moving is None:
            return
        try:
            await asyncio.wait_for(moving.wait(), self.move_timeout + 1)
        except asyncio.TimeoutError:
            raise Unavailable(f"buffer {buffer.id} is still moving; map again") from None

    @expected_errors
    async def Attach(self, request: pb.AttachRequest, context: Any) -> pb.AttachResponse:
        session = self.authenticate(context)
        attachment, response = self.attach_now(session, request, self.find_buffer(request))
        if request.map:
            try:
                response.mapping.CopyFrom(await self._map(session, attachment))
            except BrokerError:
                self.registry.detach(attachment)  # nothing half-made survives
                raise
        return response

    @expected_errors
    async def Detach(self, request: pb.DetachRequest, context: Any) -> pb.DetachResponse:
        session = self.authenticate(context)
        self.registry.detach(self.registry.attachment_find(session, request.attachment_id))
        return pb.DetachResponse()

    @expected_errors
    async def Map(self, request: pb.MapRequest, context: Any) -> pb.MapResponse:
        session = self.authenticate(context)
        attachment = self.registry.attachment_find(session, request.attachment_id)
        return await self._map(session, attachment)

    async def _map(self, session: Session, attachment: Attachment) -> pb.MapResponse:
        if attachment.buffer.moving is not None:
            await self.wait_out_move(attachment.buffer)
            if attachment.id not in session.attachments:
                raise NotFound(f"attachment {attachment.id} was detached while its buffer moved")
        mapping, result, response = self.map_now(attachment)
        try:
            response.fd_ticket = await self.channels.deliver(session, result.fds, result.temporary)
        except BrokerError:
            if mapping.id in self.registry.mappings:
                self.registry.unmap(mapping)
            raise
        return response

    @expected_errors
    async def Unmap(self, request: pb.UnmapRequest, context: Any) -> pb.UnmapResponse:
        session = self.authenticate(context)
        self.registry.unmap(self.registry.mapping_find(session, request.mapping_id))
        return pb.UnmapResponse()

    @expected_errors
    async def OpenCallChannel(self, request: pb.OpenCallChannelRequest, context: Any) -> pb.OpenCallChannelResponse:
        session = self.authenticate(context)
        client_end = self.channels.open_call_channel(session)
        return pb.OpenCallChannelResponse(fd_ticket=await self.channels.deliver(session, [client_end], [client_end]))

    # --- introspection -------------------------------------------------------

    @expected_errors
    async def ListBuffers(self, request: pb.ListBuffersRequest, context: Any) -> pb.ListBuffersResponse:
        session = self.authenticate(context)
        page_size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        if request.name:
            found = self.registry.buffers_by_name.get(request.name)
            candidates = [found] if found is not None else []
        else:
            candidates = [b for i, b in sorted(self.registry.buffers.items()) if i > request.after_id]
        # Clients must not see each other's buffers unless allowed to.
        candidates = [b for b in candidates if self.registry.buffer_visible(session, b)]
        page = candidates[:page_size]
        response = pb.ListBuffersResponse(buffers=[buffer_info(b) for b in page])
        if len(candidates) > page_size:
            response.next_after_id = page[-1].id
        return response

    @expected_errors
    async def Explain(self, request: pb.ExplainRequest, context: Any) -> pb.ExplainResponse:
        session = self.authenticate(context)
        bare_offers = request.WhichOneof("buffer") is None and bool(request.offers)
        buffer = None if bare_offers else self.find_buffer(request)
        return introspection.explain(
            self.registry, session, request.accept, request.access, buffer=buffer, offers=request.offers
        )

    @expected_errors
    async def GetStats(self, request: pb.GetStatsRequest, context: Any) -> pb.GetStatsResponse:
        self.authenticate(context)
        registry, ledger = self.registry, self.ledger
        return pb.GetStatsResponse(
            sessions=len(registry.sessions),
            buffers=len(registry.buffers),
            attachments=len(registry.attachments),
            mappings=len(registry.mappings),
            fds_held=ledger.held,
            fds_received=ledger.received,
            fds_sent=ledger.sent,
            fds_closed=ledger.closed,
            fds_expired=ledger.expired,
            pid=os.getpid(),
            version=self.version,
        )


    @expected_errors
    async def ListSessions(self, request: pb.ListSessionsRequest, context: Any) -> pb.ListSessionsResponse:
        self.authenticate(context)
        return pb.ListSessionsResponse(sessions=list_sessions(self.registry))

    @expected_errors
    async def ListAttachments(self, request: pb.ListAttachmentsRequest, context: Any) -> pb.ListAttachmentsResponse:
        self.authenticate(context)
        return pb.ListAttachmentsResponse(attachments=list_attachments(self.registry, request.buffer_id))

    @expected_errors
    async def ListMappingTypes(self, request: pb.ListMappingTypesRequest, context: Any) -> pb.ListMappingTypesResponse:
        self.authenticate(context)
        return pb.ListMappingTypesResponse(mapping_types=list_mapping_types())


def check_registration(request: pb.RegisterBufferRequest, fd0_size: int) -> None:
    check_name(request.name)
    if len(request.labels) > MAX_LABELS:
        raise InvalidArgument(f"{len(request.labels)} labels; at most {MAX_LABELS} are allowed")
    check_size(request.size, fd0_size)


def check_size(size: int, fd0_size: int) -> None:
    if size == 0 or size > MAX_SIZE:
        raise InvalidArgument(f"size {size} is not usable: give the buffer's size in bytes, 1 to {MAX_SIZE}")
    if fd0_size < size:
        raise InvalidArgument(
            f"fd 0 of the buffer has {fd0_size} bytes, fewer than the declared size {size}; "
            "ftruncate a memfd to the size you register (a dma-buf's size is fixed: register at most that)"
        )


async def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` on the loop until true or ``timeout``; return it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def event_to_wire(event: Any) -> pb.Event:
    """A registry event as the session's wire Event."""
    if isinstance(event, RevokedEvent):
        return pb.Event(
            revoked=pb.Revoked(buffer_id=event.buffer_id, attachment_ids=list(event.attachment_ids), reason=event.reason)
        )
    if isinstance(event, MoveNotifyEvent):
        return pb.Event(
            move_notify=pb.MoveNotify(
                attachment_id=event.attachment_id,
                buffer_id=event.buffer_id,
                reason=event.reason,
                generation=event.generation,
            )
        )
    if isinstance(event, ExporterGoneEvent):
        policy = pb.EXPORTER_EXIT_POLICY_KEEP if event.policy == EXIT_KEEP else pb.EXPORTER_EXIT_POLICY_REVOKE
        return pb.Event(exporter_gone=pb.ExporterGone(buffer_id=event.buffer_id, policy=policy))
    if isinstance(event, AttachmentInvalidatedEvent):
        return pb.Event(
            attachment_invalidated=pb.AttachmentInvalidated(attachment_id=event.attachment_id, reason=event.reason)
        )
    raise TypeError(f"no wire form for event {event!r}")


def check_name(name: str) -> None:
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"buffer name is {len(name)} characters; at most {MAX_NAME} are allowed")
    if any(ord(c) < 32 for c in name):
        raise InvalidArgument("buffer name contains control characters; use printable text")
