"""Answering calls on a session's call channels (the importer's fast path): a thin adapter.

A call is Attach, Map, Unmap or Detach: the same operations, checks and errors
as the RPC of that name (server/operations.py); the reply is one datagram with
the mapping's fds attached. Calls are answered right away on the event loop;
only an Attach(map) or Map of a buffer that is moving waits, in a task, for
the swap, an Attach with ``wait_seconds`` whose buffer is not there yet
waits, in a task, for its registration, and an Attach(map) or Map that copies
(segments->memfd-copy) is answered, from a task, once its copy in a worker
thread is done (server/operations.py). Timings go to the same RPC metrics as gRPC calls, under the service
name ``bufbroker.v1.CallChannel``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine

from bufbroker import fdwire
from bufbroker.v1 import broker_pb2 as bpb
from bufbroker.v1 import fd_channel_pb2 as pb
from bufbroker_broker.core.errors import BrokerError, InvalidArgument, NotFound, ResourceExhausted
from bufbroker_broker.core.mapping_type import MapResult
from bufbroker_broker.core.registry import Attachment, Buffer, Mapping
from bufbroker_broker.server.fdchannel.server import FDS_IN_FLIGHT, Connection, FdChannelServer
from bufbroker_broker.server.grpc.timing import RpcTimings
from bufbroker_broker.server.observe.latency import REQUEST_STARTED
from bufbroker_broker.server.operations import CopyPending, Operations, Target, check_wait
from bufbroker_broker.server.wire.errors import call_error, internal_call_error
from bufbroker_broker.server.wire.messages import attach_response, map_response

log = logging.getLogger(__name__)

SERVICE = "bufbroker.v1.CallChannel"
METHODS = {"attach": "Attach", "map": "Map", "unmap": "Unmap", "detach": "Detach"}

# The reply, its fds, which of them to close once sent, and how to undo if it is not delivered.
Answer = tuple[pb.FdMessage, list[int], list[int], Callable[[], None] | None]


class _MustWait(Exception):
    """Answer once ``until()`` is over (nothing was done yet): a move, or the buffer's registration."""

    def __init__(self, until: Callable[[], Awaitable[object]], then: Callable[[], None] | None = None) -> None:
        self.until = until
        self.then = then  # before answering again, e.g. "do not wait again"


class _AnswerLater(Exception):
    """The map copies: answer with ``answer(*await pending.finish())`` from a task."""

    def __init__(self, pending: CopyPending, answer: Callable[[Mapping, MapResult], Answer]) -> None:
        self.pending = pending
        self.answer = answer


def _move_over(operations: Operations, buffer: Buffer) -> _MustWait:
    return _MustWait(lambda: operations.wait_out_move(buffer))


class CallServer:
    def __init__(self, operations: Operations, channels: FdChannelServer, timings: RpcTimings | None = None) -> None:
        self.operations = operations
        self.channels = channels
        self.timings = timings
        self._waiting: set[asyncio.Task[None]] = set()  # calls waiting out a move, or for a copy
        channels.on_call = self.handle

    def handle(self, channel: Connection, call: pb.Call) -> None:
        kind = call.WhichOneof("request")
        started = time.perf_counter()
        marker = REQUEST_STARTED.set(started)  # the negotiation histogram measures from here
        code = "OK"
        undo: Callable[[], None] | None = None
        try:
            reply, fds, temporary, undo = self._answer(channel, call, kind)
        except _MustWait as wait:
            self._in_task(self._after_wait(channel, call, wait))
            return
        except _AnswerLater as later:
            self._in_task(self._after_copy(channel, call, kind, started, later))
            return
        except BrokerError as error:
            code = error.status
            reply, fds, temporary = call_error(call.call_id, error), [], []
        except Exception:
            log.exception("bug answering a %s call; the client got INTERNAL", kind)
            code = "INTERNAL"
            reply, fds, temporary = internal_call_error(call.call_id, METHODS.get(kind or "", "a call")), [], []
        finally:
            REQUEST_STARTED.reset(marker)
        self._send(channel, call, kind, started, code, (reply, fds, temporary, undo))

    def _in_task(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _after_copy(
        self, channel: Connection, call: pb.Call, kind: str | None, started: float, later: _AnswerLater
    ) -> None:
        """Answer a call whose map copies, once the copy (in a worker thread) is done."""
        code = "OK"
        undo: Callable[[], None] | None = None
        try:
            reply, fds, temporary, undo = later.answer(*await later.pending.finish())
        except BrokerError as error:
            code = error.status
            reply, fds, temporary = call_error(call.call_id, error), [], []
        except Exception:
            log.exception("bug answering a %s call; the client got INTERNAL", kind)
            code = "INTERNAL"
            reply, fds, temporary = internal_call_error(call.call_id, METHODS.get(kind or "", "a call")), [], []
        # A closed channel closes the copy's fds, and the failed send undoes the mapping.
        self._send(channel, call, kind, started, code, (reply, fds, temporary, undo))

    def _send(
        self, channel: Connection, call: pb.Call, kind: str | None, started: float, code: str, answer: Answer
    ) -> None:
        reply, fds, temporary, undo = answer
        data = fdwire.encode(reply)
        if len(data) > fdwire.MAX_CALL_BYTES:
            if undo is not None:
                undo()
            self.channels.ledger.close_all(temporary)
            code, fds, temporary, undo = "RESOURCE_EXHAUSTED", [], [], None
            too_big = ResourceExhausted(
                f"the reply would be {len(data)} bytes, more than a call channel carries ({fdwire.MAX_CALL_BYTES}); "
                "use the gRPC call, or shorten the accept list"
            )
            data = fdwire.encode(call_error(call.call_id, too_big))
        fallback = fdwire.encode(call_error(call.call_id, ResourceExhausted(FDS_IN_FLIGHT))) if fds else b""
        sent = self.channels.reply(channel, data, fds, temporary, fallback)
        if undo is not None:
            then_undo = undo
            sent.add_done_callback(lambda done: then_undo() if done.exception() is not None else None)
        if self.timings is not None:
            self.timings.observe(SERVICE, METHODS.get(kind or "", "Unknown"), code, time.perf_counter() - started)

    async def _after_wait(self, channel: Connection, call: pb.Call, wait: _MustWait) -> None:
        try:
            await wait.until()
        except BrokerError as error:
            if not channel.closed:
                self.channels.reply(channel, fdwire.encode(call_error(call.call_id, error)))
            return
        if wait.then is not None:
            wait.then()
        if not channel.closed:
            self.handle(channel, call)  # from the start: the attachment may be gone by now

    def _answer(self, channel: Connection, call: pb.Call, kind: str | None) -> Answer:
        session, operations = channel.session, self.operations
        if kind == "attach":
            request = call.attach
            target = Target.of(request)
            check_wait(request.wait_seconds)
            try:
                buffer = operations.select_buffer(session, target)
            except NotFound:
                if not request.wait_seconds:
                    raise
                raise _MustWait(
                    lambda: operations.await_buffer(session, target, request.wait_seconds),
                    then=lambda: request.ClearField("wait_seconds"),  # it is there: answer without waiting again
                ) from None
            if not request.map:
                response = attach_response(operations.attach(session, buffer, request.accept, request.access))
                return _reply(call, attach=response), [], [], None
            if operations.moving(buffer):
                raise _move_over(operations, buffer)
            self.channels.check_unread_replies(channel)
            try:
                attachment, mapping, result = operations.attach_map_now(session, buffer, request.accept, request.access)
            except CopyPending as pending:
                made = pending.attachment
                raise _AnswerLater(pending, lambda m, r: self._attached(call, made, m, r)) from None
            return self._attached(call, attachment, mapping, result)
        if kind == "map":
            attachment = operations.attachment(session, call.map.attachment_id)
            if operations.moving(attachment.buffer):
                raise _move_over(operations, attachment.buffer)
            self.channels.check_unread_replies(channel)
            try:
                mapping, result = operations.map_now(attachment)
            except CopyPending as pending:
                raise _AnswerLater(pending, lambda m, r: self._mapped(call, m, r)) from None
            return self._mapped(call, mapping, result)
        if kind == "unmap":
            operations.unmap(session, call.unmap.mapping_id)
            return _reply(call, unmap=bpb.UnmapResponse()), [], [], None
        if kind == "detach":
            operations.detach(session, call.detach.attachment_id)
            return _reply(call, detach=bpb.DetachResponse()), [], [], None
        raise InvalidArgument("the call names no request: set attach, map, unmap or detach")

    def _attached(self, call: pb.Call, attachment: Attachment, mapping: Mapping, result: MapResult) -> Answer:
        response = attach_response(attachment)
        response.mapping.CopyFrom(map_response(mapping, result))
        undo = self.operations.undo
        return _reply(call, attach=response), result.fds, result.temporary, lambda: undo(mapping, attachment)

    def _mapped(self, call: pb.Call, mapping: Mapping, result: MapResult) -> Answer:
        undo = self.operations.undo
        return _reply(call, map=map_response(mapping, result)), result.fds, result.temporary, lambda: undo(mapping)


def _reply(call: pb.Call, **answer: object) -> pb.FdMessage:
    return pb.FdMessage(reply=pb.CallReply(call_id=call.call_id, **answer))  # type: ignore[arg-type]
