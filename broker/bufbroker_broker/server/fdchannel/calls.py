"""Answering calls on a session's call channels (the importer's fast path).

A call is Attach, Map, Unmap or Detach, with the same checks and errors as
the RPC of that name (the logic is BrokerService's); the reply is one
datagram with the mapping's fds attached. Calls are answered right away on
the event loop; only an Attach(map) or Map of a buffer that is moving waits,
in a task, for the swap. Timings go to the same RPC metrics as gRPC calls,
under the service name ``bufbroker.v1.CallChannel``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional

from bufbroker import fdwire
from bufbroker.v1 import broker_pb2 as bpb
from bufbroker.v1 import fd_channel_pb2 as pb

from bufbroker_broker.server.fdchannel.server import Connection, FdChannelServer, call_error
from bufbroker_broker.server.grpc.timing import RpcTimings
from bufbroker_broker.server.grpc.service import BrokerService
from bufbroker_broker.core.errors import BrokerError, InvalidArgument, ResourceExhausted
from bufbroker_broker.core.registry import Attachment, Buffer, Mapping
from bufbroker_broker.server.observe.latency import REQUEST_STARTED

log = logging.getLogger(__name__)

SERVICE = "bufbroker.v1.CallChannel"
METHODS = {"attach": "Attach", "map": "Map", "unmap": "Unmap", "detach": "Detach"}


class _MustWait(Exception):
    """The buffer is moving: answer once the move is over (nothing was done yet)."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer


class CallServer:
    def __init__(self, service: BrokerService, channels: FdChannelServer, timings: Optional[RpcTimings] = None) -> None:
        self.service = service
        self.registry = service.registry
        self.channels = channels
        self.timings = timings
        self._waiting: set[asyncio.Task] = set()   # calls waiting out a move
        channels.on_call = self.handle

    def handle(self, channel: Connection, call: pb.Call) -> None:
        kind = call.WhichOneof("request")
        started = time.perf_counter()
        marker = REQUEST_STARTED.set(started)   # the negotiation histogram measures from here
        code = "OK"
        try:
            reply, fds, temporary, undo = self._answer(channel, call, kind)
        except _MustWait as wait:
            task = asyncio.get_running_loop().create_task(self._after_move(channel, call, wait.buffer))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)
            return
        except BrokerError as error:
            code = error.status
            reply, fds, temporary, undo = call_error(call.call_id, error), [], [], None
        except Exception:
            log.exception("bug answering a %s call; the client got INTERNAL", kind)
            code = "INTERNAL"
            reply, fds, temporary, undo = _internal_reply(call.call_id, kind), [], [], None
        finally:
            REQUEST_STARTED.reset(marker)
        data = fdwire.encode(reply)
        if len(data) > fdwire.MAX_CALL_BYTES:
            if undo is not None:
                undo()
            self.channels.ledger.close_all(temporary)
            code, fds, temporary, undo = "RESOURCE_EXHAUSTED", [], [], None
            data = fdwire.encode(call_error(call.call_id, ResourceExhausted(
                f"the reply would be {len(data)} bytes, more than a call channel carries ({fdwire.MAX_CALL_BYTES}); "
                "use the gRPC call, or shorten the accept list"
            )))
        sent = self.channels.reply(channel, data, fds, temporary)
        if undo is not None:
            sent.add_done_callback(lambda done: undo() if done.exception() is not None else None)
        if self.timings is not None:
            self.timings.observe(SERVICE, METHODS.get(kind or "", "Unknown"), code, time.perf_counter() - started)

    async def _after_move(self, channel: Connection, call: pb.Call, buffer: Buffer) -> None:
        try:
            await self.service.wait_out_move(buffer)
        except BrokerError as error:
            self.channels.reply(channel, fdwire.encode(call_error(call.call_id, error)))
            return
        if not channel.closed:
            self.handle(channel, call)   # from the start: the attachment may be gone by now

    def _answer(
        self, channel: Connection, call: pb.Call, kind: Optional[str]
    ) -> tuple[pb.FdMessage, list[int], list[int], Optional[Callable[[], None]]]:
        """The reply, its fds, which of them to close once sent, and how to undo if it is not delivered."""
        session, registry = channel.session, self.registry
        if kind == "attach":
            request = call.attach
            buffer = self.service.find_buffer(request)
            if request.map and buffer.moving is not None:
                raise _MustWait(buffer)
            attachment, response = self.service.attach_now(session, request, buffer)
            if not request.map:
                return pb.FdMessage(reply=pb.CallReply(call_id=call.call_id, attach=response)), [], [], None
            try:
                mapping, result, mapped = self.service.map_now(attachment)
            except BrokerError:
                registry.detach(attachment)   # nothing half-made survives
                raise
            response.mapping.CopyFrom(mapped)
            reply = pb.FdMessage(reply=pb.CallReply(call_id=call.call_id, attach=response))
            return reply, result.fds, result.temporary, lambda: self._undo(attachment, mapping, detach=True)
        if kind == "map":
            attachment = registry.attachment_find(session, call.map.attachment_id)
            if attachment.buffer.moving is not None:
                raise _MustWait(attachment.buffer)
            mapping, result, response = self.service.map_now(attachment)
            reply = pb.FdMessage(reply=pb.CallReply(call_id=call.call_id, map=response))
            return reply, result.fds, result.temporary, lambda: self._undo(attachment, mapping, detach=False)
        if kind == "unmap":
            registry.unmap(registry.mapping_find(session, call.unmap.mapping_id))
            return pb.FdMessage(reply=pb.CallReply(call_id=call.call_id, unmap=bpb.UnmapResponse())), [], [], None
        if kind == "detach":
            registry.detach(registry.attachment_find(session, call.detach.attachment_id))
            return pb.FdMessage(reply=pb.CallReply(call_id=call.call_id, detach=bpb.DetachResponse())), [], [], None
        raise InvalidArgument("the call names no request: set attach, map, unmap or detach")

    def _undo(self, attachment: Attachment, mapping: Mapping, detach: bool) -> None:
        """The reply never reached the client: drop what it would have held."""
        if mapping.id in self.registry.mappings:
            self.registry.unmap(mapping)
        if detach and attachment.id in self.registry.attachments:
            self.registry.detach(attachment)


def _internal_reply(call_id: int, kind: Optional[str]) -> pb.FdMessage:
    return pb.FdMessage(reply=pb.CallReply(call_id=call_id, error=pb.CallError(
        code="INTERNAL", kind="internal",
        message=f"internal error in {METHODS.get(kind or '', 'a call')}; the broker logged the details "
        "(this is a bug: please report it)",
    )))
