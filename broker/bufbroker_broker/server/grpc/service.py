"""The Broker gRPC service (grpc.aio) on DIR/grpc.sock: a thin adapter.

Handlers authenticate the session from its token and proof, decode the request, call
one operation (server/operations.py) and encode its result; every rule lives
in the operations layer and the core. fds travel on the fd channel; this
module only names them (nonces and tickets).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from bufbroker.protocol import PROOF_METADATA_KEY, SESSION_METADATA_KEY
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import broker_pb2_grpc as pb_grpc
from bufbroker_broker.core import format_pairs
from bufbroker_broker.core.errors import BrokerError, FailedPrecondition, Unauthenticated
from bufbroker_broker.core.registry import (
    EXIT_KEEP,
    EXIT_REVOKE,
    AttachmentInvalidatedEvent,
    ExporterGoneEvent,
    MoveNotifyEvent,
    RevokedEvent,
    Session,
)
from bufbroker_broker.server.fdchannel.server import FdChannelServer
from bufbroker_broker.server.observe.introspection import (
    buffer_info,
    list_attachments,
    list_mapping_types,
    list_sessions,
)
from bufbroker_broker.server.operations import Operations, Target, labels_match
from bufbroker_broker.server.streams import (
    StreamLinkOpenedEvent,
    StreamRenegotiateEvent,
    Streams,
    link_opened_to_wire,
    renegotiate_to_wire,
    stream_info,
    subscribe_response,
)
from bufbroker_broker.server.wire.errors import grpc_abort, grpc_errors, trace_to_wire
from bufbroker_broker.server.wire.messages import attach_response, map_response, named_buffer

log = logging.getLogger(__name__)

MAX_PAGE = 1000
MAX_PAGE_BYTES = 1 << 20  # a ListStreams page (a stream with 64 consumers is ~20 KB): far below gRPC's 4 MiB
DEFAULT_PAGE = 100

Context = grpc.aio.ServicerContext[Any, Any]


class BrokerService(pb_grpc.BrokerServicer):
    def __init__(
        self,
        operations: Operations,
        channels: FdChannelServer,
        version: str,
        settings: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        self.operations = operations
        self.registry = operations.registry
        self.channels = channels
        self.version = version
        # (name, value as text, source) of each effective setting, for GetSettings; no secrets.
        self.settings = tuple(settings)
        self.event_queues: dict[int, asyncio.Queue[pb.Event | None]] = {}
        self.registry.notify = self.notify

    # --- sessions and events ---------------------------------------------------

    async def authenticate(self, context: Context) -> Session:
        """The session whose token and proof the call carries.

        The token names the session; the proof (vouches.py) shows the call
        comes from the process holding that session's fd channel, since gRPC
        over a Unix socket cannot show who sent it. A token without its proof
        is refused, so a leaked token does not let another process act as
        its session.
        """
        token = proof = ""
        for key, value in context.invocation_metadata() or ():
            if key == SESSION_METADATA_KEY:
                token = value if isinstance(value, str) else ""
            elif key == PROOF_METADATA_KEY:
                proof = value if isinstance(value, str) else ""
        session = self.registry.sessions_by_token.get(token) if token else None
        if session is None or session.closed:
            raise Unauthenticated(
                "no valid session token: connect to the broker's fd.sock first and send the "
                f"token from its HELLO as gRPC metadata {SESSION_METADATA_KEY!r} (bufbroker.connect() does this)"
            )
        if not await self.channels.vouched(session, proof):
            raise Unauthenticated(
                f"this call carries session {session.id}'s token but no proof from that session's fd channel: "
                f"a token works only for the process holding its fd channel; send Vouch(proof) on the fd channel, "
                f"then the call with metadata {PROOF_METADATA_KEY!r} = proof (bufbroker.connect() does this)"
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

    async def Events(self, request: pb.EventsRequest, context: Context) -> AsyncIterator[pb.Event]:
        try:
            session = await self.authenticate(context)
            if session.id in self.event_queues:
                raise FailedPrecondition("this session already has its event stream open; open it once")
        except BrokerError as error:
            await grpc_abort(context, error)
            return
        queue: asyncio.Queue[pb.Event | None] = asyncio.Queue()
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

    @grpc_errors
    async def RegisterBuffer(self, request: pb.RegisterBufferRequest, context: Context) -> pb.RegisterBufferResponse:
        session = await self.authenticate(context)
        fds = await self.channels.take_fds(session, request.nonce)
        buffer = self.operations.register(
            session,
            fds,
            request.size,
            request.offers,
            name=request.name,
            labels=dict(request.labels),
            layout=request.layout if request.HasField("layout") else None,
            allow=request.allow,
            on_exporter_exit=EXIT_KEEP if request.on_exporter_exit == pb.EXPORTER_EXIT_POLICY_KEEP else EXIT_REVOKE,
        )
        return pb.RegisterBufferResponse(buffer=buffer_info(buffer))

    @grpc_errors
    async def MoveBuffer(self, request: pb.MoveBufferRequest, context: Context) -> pb.MoveBufferResponse:
        session = await self.authenticate(context)
        if self.operations.moving(self.registry.buffer_owned(session, request.buffer_id)):
            raise FailedPrecondition(f"buffer {request.buffer_id} is already moving; wait for that move to finish")
        fds = await self.channels.take_fds(session, request.nonce)
        buffer, late = await self.operations.move(
            session,
            request.buffer_id,
            fds,
            request.size,
            request.offers,
            request.layout if request.HasField("layout") else None,
            request.reason,
        )
        return pb.MoveBufferResponse(buffer=buffer_info(buffer), non_compliant_attachment_ids=[a.id for a in late])

    @grpc_errors
    async def RevokeBuffer(self, request: pb.RevokeBufferRequest, context: Context) -> pb.RevokeBufferResponse:
        self.operations.revoke(await self.authenticate(context), request.buffer_id, request.reason)
        return pb.RevokeBufferResponse()

    @grpc_errors
    async def UnregisterBuffer(
        self, request: pb.UnregisterBufferRequest, context: Context
    ) -> pb.UnregisterBufferResponse:
        self.operations.unregister(await self.authenticate(context), request.buffer_id)
        return pb.UnregisterBufferResponse()

    # --- attachments and mappings ----------------------------------------------

    @grpc_errors
    async def Attach(self, request: pb.AttachRequest, context: Context) -> pb.AttachResponse:
        session = await self.authenticate(context)
        # Waits on the loop (an awaited event) when asked to wait for the buffer to be registered.
        buffer = await self.operations.await_buffer(session, Target.of(request), request.wait_seconds)
        if not request.map:
            return attach_response(self.operations.attach(session, buffer, request.accept, request.access))
        await self.operations.wait_out_move(buffer)
        attachment, mapping, result = await self.operations.attach_map(session, buffer, request.accept, request.access)
        response = attach_response(attachment)
        response.mapping.CopyFrom(await self._deliver(session, mapping, result, attachment))
        return response

    @grpc_errors
    async def Detach(self, request: pb.DetachRequest, context: Context) -> pb.DetachResponse:
        self.operations.detach(await self.authenticate(context), request.attachment_id)
        return pb.DetachResponse()

    @grpc_errors
    async def Map(self, request: pb.MapRequest, context: Context) -> pb.MapResponse:
        session = await self.authenticate(context)
        attachment = self.operations.attachment(session, request.attachment_id)
        mapping, result = await self.operations.map(session, attachment)
        return await self._deliver(session, mapping, result)

    async def _deliver(self, session: Session, mapping: Any, result: Any, attachment: Any = None) -> pb.MapResponse:
        """Send the mapping's fds under a ticket; undo the mapping (and a new attachment) if that fails."""
        response = map_response(mapping, result)
        try:
            response.fd_ticket = await self.channels.deliver(session, result.fds, result.temporary)
        except BaseException:
            self.operations.undo(mapping, attachment)
            raise
        return response

    @grpc_errors
    async def Unmap(self, request: pb.UnmapRequest, context: Context) -> pb.UnmapResponse:
        self.operations.unmap(await self.authenticate(context), request.mapping_id)
        return pb.UnmapResponse()

    @grpc_errors
    async def OpenCallChannel(self, request: pb.OpenCallChannelRequest, context: Context) -> pb.OpenCallChannelResponse:
        session = await self.authenticate(context)
        client_end = self.channels.open_call_channel(session)
        return pb.OpenCallChannelResponse(fd_ticket=await self.channels.deliver(session, [client_end], [client_end]))

    # --- introspection -------------------------------------------------------

    @grpc_errors
    async def ListBuffers(self, request: pb.ListBuffersRequest, context: Context) -> pb.ListBuffersResponse:
        session = await self.authenticate(context)
        page_size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        visible = self.registry.buffer_visible  # clients must not see each other's buffers unless allowed to
        labels = dict(request.labels)
        self.operations.limits.check_labels(labels, "selector labels")
        if request.name:
            found = self.registry.buffers_by_name.get(request.name)
            page = [found] if found is not None and visible(session, found) and labels_match(found, labels) else []
            return pb.ListBuffersResponse(buffers=[buffer_info(b) for b in page])
        listed = self.operations.list_buffers(
            request.after_id, page_size, lambda b: visible(session, b) and labels_match(b, labels)
        )
        response = pb.ListBuffersResponse(buffers=[buffer_info(b) for b in listed.buffers])
        if listed.more:
            response.next_after_id = listed.buffers[-1].id
        return response

    @grpc_errors
    async def Explain(self, request: pb.ExplainRequest, context: Context) -> pb.ExplainResponse:
        session = await self.authenticate(context)
        bare_offers = request.WhichOneof("buffer") is None and bool(request.offers)
        buffer = None if bare_offers else self.operations.find_buffer(*named_buffer(request), asker=session)
        answer = self.operations.explain(session, request.accept, request.access, buffer, request.offers)
        return pb.ExplainResponse(map_type=answer.map_type, trace=trace_to_wire(answer.trace), error=answer.error)

    @grpc_errors
    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        await self.authenticate(context)
        stats = self.operations.stats()
        return pb.GetStatsResponse(
            sessions=stats.sessions,
            buffers=stats.buffers,
            attachments=stats.attachments,
            mappings=stats.mappings,
            fds_held=stats.fds_held,
            fds_received=stats.fds_received,
            fds_sent=stats.fds_sent,
            fds_closed=stats.fds_closed,
            fds_expired=stats.fds_expired,
            pid=os.getpid(),
            version=self.version,
        )

    @grpc_errors
    async def ListSessions(self, request: pb.ListSessionsRequest, context: Context) -> pb.ListSessionsResponse:
        await self.authenticate(context)
        return pb.ListSessionsResponse(sessions=list_sessions(self.registry))

    @grpc_errors
    async def ListAttachments(self, request: pb.ListAttachmentsRequest, context: Context) -> pb.ListAttachmentsResponse:
        await self.authenticate(context)
        return pb.ListAttachmentsResponse(attachments=list_attachments(self.registry, request.buffer_id))

    @grpc_errors
    async def ListMappingTypes(
        self, request: pb.ListMappingTypesRequest, context: Context
    ) -> pb.ListMappingTypesResponse:
        await self.authenticate(context)
        return pb.ListMappingTypesResponse(mapping_types=list_mapping_types(self.registry.host))

    @grpc_errors
    async def GetSettings(self, request: pb.GetSettingsRequest, context: Context) -> pb.GetSettingsResponse:
        await self.authenticate(context)
        return pb.GetSettingsResponse(
            settings=[pb.Setting(name=name, value=value, source=source) for name, value, source in self.settings],
            pid=os.getpid(),
            version=self.version,
        )

    # --- streams (server/streams.py: the daemon sets ``streams``) --------------

    streams: Streams | None = None

    def _streams(self) -> Streams:
        assert self.streams is not None, "the daemon sets BrokerService.streams before serving"
        return self.streams

    @grpc_errors
    async def CreateStream(self, request: pb.CreateStreamRequest, context: Context) -> pb.CreateStreamResponse:
        session, streams = await self.authenticate(context), self._streams()
        self.operations.limits.check_format_pairs(request.formats, "the stream")
        stream = streams.create(
            session,
            request.name,
            list(request.slot_buffer_ids),
            stall_timeout=request.stall_timeout,
            on_stall=request.on_stall,
            max_held=request.max_held,
            labels=dict(request.labels),
            formats=format_pairs.pairs_from_wire(request.formats, "stream"),
            renegotiate=request.renegotiate,
        )
        return pb.CreateStreamResponse(stream=stream_info(stream, streams.clock(), streams.limits))

    @grpc_errors
    async def DeleteStream(self, request: pb.DeleteStreamRequest, context: Context) -> pb.DeleteStreamResponse:
        self._streams().delete_owned(await self.authenticate(context), request.stream_id)
        return pb.DeleteStreamResponse()

    @grpc_errors
    async def Subscribe(self, request: pb.SubscribeRequest, context: Context) -> pb.SubscribeResponse:
        session, streams = await self.authenticate(context), self._streams()
        # Waits on the loop (an awaited event) when asked to wait for the stream to be created.
        subscription = await streams.subscribe(
            session,
            request.name,
            list(request.accept),
            mode=request.mode,
            max_held=request.max_held,
            wait=request.wait_seconds,
        )
        return subscribe_response(subscription, streams.clock(), streams.limits)

    @grpc_errors
    async def ListStreams(self, request: pb.ListStreamsRequest, context: Context) -> pb.ListStreamsResponse:
        session, streams = await self.authenticate(context), self._streams()
        now = streams.clock()
        page_size = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        listed = [s for s in streams.listed(session, request.name) if s.id > request.after_id]
        response = pb.ListStreamsResponse()
        size = 0
        for stream in listed[:page_size]:
            info = stream_info(stream, now, streams.limits)
            size += info.ByteSize()
            if response.streams and size > MAX_PAGE_BYTES:
                break
            response.streams.append(info)
        if len(response.streams) < len(listed):
            response.next_after_id = response.streams[-1].id
        return response

    @grpc_errors
    async def ReportStreamStats(
        self, request: pb.ReportStreamStatsRequest, context: Context
    ) -> pb.ReportStreamStatsResponse:
        self._streams().report(
            await self.authenticate(context),
            request.stream_id,
            request.producer if request.HasField("producer") else None,
            list(request.links),
        )
        return pb.ReportStreamStatsResponse()

    @grpc_errors
    async def SetSessionName(self, request: pb.SetSessionNameRequest, context: Context) -> pb.SetSessionNameResponse:
        self._streams().name_session(await self.authenticate(context), request.name)
        return pb.SetSessionNameResponse()


def event_to_wire(event: Any) -> pb.Event:
    """A registry event as the session's wire Event."""
    if isinstance(event, RevokedEvent):
        return pb.Event(
            revoked=pb.Revoked(
                buffer_id=event.buffer_id, attachment_ids=list(event.attachment_ids), reason=event.reason
            )
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
    if isinstance(event, StreamLinkOpenedEvent):
        return link_opened_to_wire(event)
    if isinstance(event, StreamRenegotiateEvent):
        return renegotiate_to_wire(event)
    raise TypeError(f"no wire form for event {event!r}")
