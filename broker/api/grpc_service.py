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
from typing import Any, AsyncIterator

import grpc
from bufbroker.fdwire import SESSION_METADATA_KEY
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import broker_pb2_grpc as pb_grpc

from broker import mapping_types
from broker.api.fd_channel import FdChannelServer
from broker.api.grpc_errors import abort_with, expected_errors, trace_to_wire
from broker.core.errors import BrokerError, FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from broker.core.registry import Attachment, Buffer, RevokedEvent, Registry, Session
from broker.fd_inspect import inspect_memfd
from broker.fd_ledger import FdLedger
from broker.introspection import buffer_info, list_attachments, list_mapping_types, list_sessions

log = logging.getLogger(__name__)

MAX_NAME = 256
MAX_LABELS = 64
MAX_PAGE = 1000
DEFAULT_PAGE = 100
# A size the kernel can mmap on 64-bit Linux; anything larger is a typo.
MAX_SIZE = 1 << 46


class BrokerService(pb_grpc.BrokerServicer):
    def __init__(self, registry: Registry, channels: FdChannelServer, ledger: FdLedger, version: str) -> None:
        self.registry = registry
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
        if queue is None:
            return
        if isinstance(event, RevokedEvent):
            queue.put_nowait(
                pb.Event(
                    revoked=pb.Revoked(
                        buffer_id=event.buffer_id,
                        attachment_ids=list(event.attachment_ids),
                        reason=event.reason,
                    )
                )
            )

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
            infos = [inspect_memfd(fd, i) for i, fd in enumerate(fds)]
            check_registration(request, infos[0].size)
            sizes = tuple(info.size for info in infos)
            offers = mapping_types.offers_from_wire(request.offers, sizes, request.size)
            buffer = self.registry.buffer_register(
                session,
                infos,
                request.size,
                offers,
                name=request.name,
                labels=dict(request.labels),
                layout=request.layout if request.HasField("layout") else None,
            )
            unwind.pop_all()
        log.debug("buffer %d registered by session %d", buffer.id, session.id)
        return pb.RegisterBufferResponse(buffer=buffer_info(buffer))

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

    def _find_buffer(self, request: Any) -> Buffer:
        which = request.WhichOneof("buffer")
        if which is None:
            raise InvalidArgument("name the buffer: set buffer_id or buffer_name")
        if which == "buffer_name":
            return self.registry.buffer_find(name=request.buffer_name)
        return self.registry.buffer_find(request.buffer_id)

    @expected_errors
    async def Attach(self, request: pb.AttachRequest, context: Any) -> pb.AttachResponse:
        session = self.authenticate(context)
        buffer = self._find_buffer(request)
        accept, compat = mapping_types.accept_from_wire(request.accept, request.access)
        if not compat and not session.events_open:
            raise FailedPrecondition(
                "a dynamic attach (one that names mapping types) needs this session's event "
                "stream open, so it can be told to unmap when the buffer moves; call Events "
                "first (bufbroker.connect() does), or attach with an empty accept list as a "
                "compat importer, which pins the buffer"
            )
        attachment = self.registry.attach(session, buffer, accept, pinned=compat)
        response = pb.AttachResponse(
            attachment_id=attachment.id,
            buffer_id=buffer.id,
            map_type=attachment.map_type.name,
            trace=trace_to_wire(attachment.trace),
            pinned=attachment.pinned,
        )
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
        mapping, result = self.registry.map(attachment)
        try:
            ticket = await self.channels.deliver(session, result.fds, result.temporary)
        except BrokerError:
            if mapping.id in self.registry.mappings:
                self.registry.unmap(mapping)
            raise
        return pb.MapResponse(
            mapping_id=mapping.id,
            handle=mapping_types.handle_to_wire(attachment.map_type, result.handle),
            fd_ticket=ticket,
            fd_count=len(result.fds),
            size=attachment.buffer.size,
        )

    @expected_errors
    async def Unmap(self, request: pb.UnmapRequest, context: Any) -> pb.UnmapResponse:
        session = self.authenticate(context)
        self.registry.unmap(self.registry.mapping_find(session, request.mapping_id))
        return pb.UnmapResponse()

    # --- introspection -------------------------------------------------------

    @expected_errors
    async def ListBuffers(self, request: pb.ListBuffersRequest, context: Any) -> pb.ListBuffersResponse:
        self.authenticate(context)
        page_size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        if request.name:
            found = self.registry.buffers_by_name.get(request.name)
            candidates = [found] if found is not None else []
        else:
            candidates = [b for i, b in sorted(self.registry.buffers.items()) if i > request.after_id]
        page = candidates[:page_size]
        response = pb.ListBuffersResponse(buffers=[buffer_info(b) for b in page])
        if len(candidates) > page_size:
            response.next_after_id = page[-1].id
        return response

    @expected_errors
    async def Explain(self, request: pb.ExplainRequest, context: Any) -> pb.ExplainResponse:
        session = self.authenticate(context)
        accept, _ = mapping_types.accept_from_wire(request.accept, request.access)
        try:
            if request.WhichOneof("buffer") is None and request.offers:
                negotiation = self.registry.explain_offers(session, mapping_types.offers_from_wire(request.offers, (MAX_SIZE,), MAX_SIZE), accept)
            else:
                negotiation = self.registry.explain(session, self._find_buffer(request), accept)
        except (NotFound, InvalidArgument):
            raise
        except BrokerError as error:
            return pb.ExplainResponse(trace=trace_to_wire(getattr(error, "trace", ())), error=error.message)
        return pb.ExplainResponse(map_type=negotiation.map_type.name, trace=trace_to_wire(negotiation.trace))

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
    if request.size == 0 or request.size > MAX_SIZE:
        raise InvalidArgument(
            f"size {request.size} is not usable: give the buffer's size in bytes, 1 to {MAX_SIZE}"
        )
    if fd0_size < request.size:
        raise InvalidArgument(
            f"fd 0 of the buffer is a memfd of {fd0_size} bytes, smaller than the declared size "
            f"{request.size}; ftruncate it to the size you register"
        )


def check_name(name: str) -> None:
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"buffer name is {len(name)} characters; at most {MAX_NAME} are allowed")
    if any(ord(c) < 32 for c in name):
        raise InvalidArgument("buffer name contains control characters; use printable text")
