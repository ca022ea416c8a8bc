"""The fd channel server: DIR/fd.sock, SOCK_SEQPACKET, SCM_RIGHTS.

Each connection is one session. The broker reads SO_PEERCRED at accept and
answers with a HELLO carrying the session token. Exporters send fds under a
nonce that RegisterBuffer later names; the broker sends an importer's fds
under the ticket that the Map reply names. Everything runs on the event
loop through add_reader/add_writer, so a slow client never blocks anyone.

A session may also open call channels (OpenCallChannel): socketpairs whose
far end the client holds, carrying Attach/Map/Unmap/Detach as one datagram
each way with the fds in the reply. They skip gRPC and the fd hand-off
between the SDK's threads; ``on_call`` (bufbroker_broker.server.fdchannel.calls) answers them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import select
import socket
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bufbroker import fdwire
from bufbroker.v1 import fd_channel_pb2 as pb
from bufbroker_broker.core.errors import BrokerError, InvalidArgument, ResourceExhausted, Unavailable
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.core.registry import Registry, Session
from bufbroker_broker.server.wire.errors import call_error, notice

log = logging.getLogger(__name__)

FDS_DROPPED = "fds dropped: receiver out of file descriptors or refused by a security module"


@dataclass
class Limits:
    pending_fd_timeout: float = 10.0  # unclaimed fds are closed after this
    nonce_wait: float = 2.0  # how long RegisterBuffer waits for its fds
    max_pending_fds: int = 1024  # per session, sent but not yet claimed
    max_send_queue: int = 256  # datagrams queued for a slow reader
    send_timeout: float = 5.0  # Map waits this long for its fds to go out
    max_call_channels: int = 16  # per session


@dataclass
class _Pending:
    fds: list[int]
    timer: asyncio.TimerHandle


@dataclass
class _Outgoing:
    data: bytes
    fds: list[int]
    temporary: list[int]
    sent: asyncio.Future


@dataclass
class Connection:
    """One fd-channel connection and the session it carries.

    A call channel is a Connection too, with ``main`` naming the session's
    own connection; ending it does not end the session.
    """

    sock: socket.socket
    session: Session
    main: Connection | None = None
    call_channels: list[Connection] = field(default_factory=list)
    pending: dict[str, _Pending] = field(default_factory=dict)
    failed: dict[str, BrokerError] = field(default_factory=dict)
    waiters: dict[str, asyncio.Future] = field(default_factory=dict)
    queue: deque = field(default_factory=deque)
    writing: bool = False
    next_ticket: int = 1
    closed: bool = False

    @property
    def pending_fd_count(self) -> int:
        return sum(len(p.fds) for p in self.pending.values())


class FdChannelServer:
    def __init__(
        self,
        path: str,
        registry: Registry,
        ledger: FdLedger,
        limits: Limits,
        version: str,
        on_session_end: Callable[[Session], None] = lambda s: None,
    ) -> None:
        self.path = path
        self.registry = registry
        self.ledger = ledger
        self.limits = limits
        self.version = version
        self.on_session_end = on_session_end
        # Answers a Call on a call channel: on_call(connection, call).
        self.on_call: Callable[[Connection, Any], None] = lambda connection, call: None
        self.connections: dict[int, Connection] = {}
        self._listener: socket.socket | None = None
        self._running_loop: asyncio.AbstractEventLoop | None = None

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on; set by :meth:`start`, which every other use follows."""
        assert self._running_loop is not None, "FdChannelServer.start() must run first"
        return self._running_loop

    # --- listening ------------------------------------------------------------

    def start(self, listener: socket.socket) -> None:
        """Serve on an already bound and listening socket."""
        self._running_loop = asyncio.get_running_loop()
        self._listener = listener
        listener.setblocking(False)
        self._loop.add_reader(listener.fileno(), self._on_accept)

    def stop_accepting(self) -> None:
        """Refuse new sessions; the open ones carry on."""
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def stop(self) -> None:
        """Refuse new sessions and end every open one."""
        self.stop_accepting()
        for connection in list(self.connections.values()):
            self.end(connection, "broker shutting down")

    def connection(self, session: Session) -> Connection:
        connection = self.connections.get(session.id)
        if connection is None or connection.closed:
            raise Unavailable(f"session {session.id} has no open fd channel; reconnect")
        return connection

    def _on_accept(self) -> None:
        if self._listener is None:  # stopped accepting since the loop saw it readable
            return
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            # EMFILE and friends: log and keep serving the others.
            log.warning("fd channel accept failed: %s", error)
            return
        sock.setblocking(False)
        try:
            pid, uid, gid = fdwire.peer_credentials(sock)
        except OSError as error:
            log.warning("fd channel: cannot read peer credentials: %s", error)
            sock.close()
            return
        token = secrets.token_hex(16)  # 128 bits
        session = self.registry.session_open(token, pid, uid, gid)
        connection = Connection(sock, session)
        self.connections[session.id] = connection
        self._loop.add_reader(sock.fileno(), self._on_readable, connection)
        hello = pb.FdMessage(
            hello=pb.Hello(
                session_token=token,
                session_id=session.id,
                pid=pid,
                uid=uid,
                gid=gid,
                broker_version=self.version,
            )
        )
        self._enqueue(connection, fdwire.encode(hello), [], [])
        log.debug("session %d opened by pid %d uid %d", session.id, pid, uid)

    # --- call channels ----------------------------------------------------------

    def open_call_channel(self, session: Session) -> int:
        """A new call channel for ``session``; returns the client's end (ledger-adopted)."""
        main = self.connection(session)
        limit = self.limits.max_call_channels
        if len(main.call_channels) >= limit:
            raise ResourceExhausted(
                f"this session already has {limit} call channels (limit max_call_channels); "
                "share them between threads, as the SDK does"
            )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        ours.setblocking(False)
        channel = Connection(ours, session, main=main)
        main.call_channels.append(channel)
        self._loop.add_reader(ours.fileno(), self._on_call_readable, channel)
        return self.ledger.adopt_opened(theirs.detach())

    def _on_call_readable(self, channel: Connection) -> None:
        for received in self._datagrams(channel, fdwire.MAX_CALL_BYTES, "call channel"):
            message = received.message
            problem = ""
            if received.fds or received.truncated:
                self.ledger.close_all(received.fds)
                problem = "calls carry no fds; send fds on the session's fd channel (send_fds)"
            elif received.eof:
                problem = "empty call-channel message; send a serialized FdMessage with a call"
            elif message is None:
                problem = f"malformed call-channel message ({received.error}); use the bufbroker SDK"
            elif message.WhichOneof("kind") != "call":
                problem = f"a call channel carries only calls, not {message.WhichOneof('kind')}"
            if problem or message is None:
                call_id = message.call.call_id if message is not None and message.HasField("call") else 0
                self.reply(channel, fdwire.encode(call_error(call_id, InvalidArgument(problem))))
                continue
            self.on_call(channel, message.call)

    def reply(
        self, channel: Connection, data: bytes, fds: list[int] | None = None, temporary: list[int] | None = None
    ) -> asyncio.Future:
        """Send a call's encoded reply, with ``fds`` attached; the future says when it is out."""
        return self._enqueue(channel, data, fds or [], temporary or [])

    # --- receiving ------------------------------------------------------------

    def _datagrams(self, connection: Connection, max_bytes: int, what: str) -> Iterator[fdwire.Received]:
        """Each datagram waiting on ``connection``, its fds adopted by the ledger.

        Ends the connection when the client hung up or the socket broke,
        and stops once the connection is ended (by us or by the caller).
        """
        while not connection.closed:
            try:
                received = fdwire.receive(connection.sock, max_bytes)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.end(connection, f"{what} read failed: {error}")
                return
            self.ledger.adopt_received(received.fds)
            if received.eof and _peer_hung_up(connection.sock):
                self.end(connection, f"client closed its {what}")
                return
            yield received

    def _on_readable(self, connection: Connection) -> None:
        for received in self._datagrams(connection, fdwire.MAX_MESSAGE_BYTES, "fd channel"):
            if received.eof:  # an empty datagram reads like EOF on SEQPACKET
                self._refuse(connection, "", InvalidArgument("empty fd-channel message; send a serialized FdMessage"))
                continue
            self._handle(connection, received)

    def _handle(self, connection: Connection, received: fdwire.Received) -> None:
        message = received.message
        nonce = message.send_fds.nonce if message is not None and message.HasField("send_fds") else ""
        if received.truncated:
            self.ledger.close_all(received.fds)
            self._refuse(connection, nonce, ResourceExhausted(FDS_DROPPED))
            return
        if message is None:
            self.ledger.close_all(received.fds)
            self._refuse(
                connection,
                "",
                InvalidArgument(f"malformed fd-channel message ({received.error}); use the bufbroker SDK"),
            )
            return
        if message.WhichOneof("kind") != "send_fds":
            self.ledger.close_all(received.fds)
            self._refuse(
                connection,
                "",
                InvalidArgument(f"clients may only send send_fds on the fd channel, not {message.WhichOneof('kind')}"),
            )
            return
        error = self._check_send_fds(connection, message.send_fds, received.fds)
        if error is not None:
            self.ledger.close_all(received.fds)
            self._refuse(connection, nonce, error)
            return
        timer = self._loop.call_later(self.limits.pending_fd_timeout, self._expire, connection, nonce)
        connection.pending[nonce] = _Pending(received.fds, timer)
        waiter = connection.waiters.pop(nonce, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_send_fds(self, connection: Connection, send: pb.SendFds, fds: list[int]) -> BrokerError | None:
        nonce = send.nonce
        if not nonce or len(nonce) > 128:
            return InvalidArgument("send_fds needs a nonce of 1 to 128 characters")
        if nonce in connection.pending or nonce in connection.failed:
            return InvalidArgument(f"nonce {nonce!r} was already used in this session; use a fresh one")
        if not fds:
            return InvalidArgument(f"send_fds {nonce!r} carried no fds; attach them as SCM_RIGHTS")
        if send.fd_count != len(fds):
            return InvalidArgument(f"send_fds {nonce!r} says {send.fd_count} fds but {len(fds)} arrived")
        limit = self.limits.max_pending_fds
        if connection.pending_fd_count + len(fds) > limit:
            return ResourceExhausted(
                f"too many unclaimed fds: this session may hold at most {limit} fds sent but "
                "not yet named by RegisterBuffer (limit max_pending_fds)"
            )
        return None

    def _refuse(self, connection: Connection, nonce: str, error: BrokerError) -> None:
        """Tell the sender on the channel; a RegisterBuffer for the nonce gets it too."""
        if nonce and nonce not in connection.pending:
            connection.failed[nonce] = error
            waiter = connection.waiters.pop(nonce, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        refusal = notice(nonce, error)
        self._enqueue(connection, fdwire.encode(refusal), [], [])

    def _expire(self, connection: Connection, nonce: str) -> None:
        pending = connection.pending.pop(nonce, None)
        if pending is not None:
            log.info("session %d: fds under nonce %r were never claimed; closed", connection.session.id, nonce)
            self.ledger.expire(pending.fds)

    async def take_fds(self, session: Session, nonce: str) -> list[int]:
        """The fds sent under ``nonce``; the caller owns them from here.

        The gRPC call may overtake the fd-channel datagram (two sockets), so
        wait a little for it before giving up.
        """
        connection = self.connection(session)
        if nonce not in connection.pending and nonce not in connection.failed:
            waiter = connection.waiters.setdefault(nonce, self._loop.create_future())
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self.limits.nonce_wait)
            except TimeoutError:
                connection.waiters.pop(nonce, None)
                raise InvalidArgument(
                    f"no fds arrived under nonce {nonce!r}: send them on the fd channel "
                    "(send_fds) before RegisterBuffer; the SDK's export() does this"
                ) from None
        if nonce in connection.failed:
            raise connection.failed.pop(nonce)
        pending = connection.pending.pop(nonce, None)
        if pending is None:
            raise Unavailable("the session ended while waiting for its fds")
        pending.timer.cancel()
        return pending.fds

    # --- sending --------------------------------------------------------------

    async def deliver(self, session: Session, fds: list[int], temporary: list[int]) -> int:
        """Send ``fds`` under a new ticket; returns the ticket once they are out.

        ``temporary`` fds (opened for this delivery) are closed once sent or
        when the delivery fails; the others stay owned by their buffer.
        """
        try:
            connection = self.connection(session)
        except BrokerError:
            self.ledger.close_all(temporary)
            raise
        ticket = connection.next_ticket
        connection.next_ticket += 1
        message = pb.FdMessage(deliver_fds=pb.DeliverFds(ticket=ticket, fd_count=len(fds)))
        sent = self._enqueue(connection, fdwire.encode(message), fds, temporary)
        try:
            await asyncio.wait_for(asyncio.shield(sent), self.limits.send_timeout)
        except TimeoutError:
            log.warning(
                "ending session %d (pid %d): its fd channel accepted nothing for %s s",
                session.id,
                session.pid,
                self.limits.send_timeout,
            )
            self.end(connection, "fd delivery timed out")
            raise Unavailable("the fds could not be delivered: your session stopped reading its fd channel") from None
        failure = sent.exception()
        if failure is not None:
            raise failure
        return ticket

    def _enqueue(self, connection: Connection, data: bytes, fds: list[int], temporary: list[int]) -> asyncio.Future:
        sent = self._loop.create_future()
        if connection.closed:
            self.ledger.close_all(temporary)
            sent.set_exception(Unavailable("the session's fd channel is closed"))
            sent.exception()  # retrieved: nobody may await it
            return sent
        if len(connection.queue) >= self.limits.max_send_queue:
            self.ledger.close_all(temporary)
            sent.set_exception(Unavailable("the session's fd channel send queue is full"))
            sent.exception()
            log.warning(
                "ending %s of session %d (pid %d): it stopped reading (%d messages queued)",
                "a call channel" if connection.main is not None else "the fd channel",
                connection.session.id,
                connection.session.pid,
                self.limits.max_send_queue,
            )
            self.end(connection, "send queue full")
            return sent
        connection.queue.append(_Outgoing(data, fds, temporary, sent))
        self._flush(connection)
        return sent

    def _flush(self, connection: Connection) -> None:
        while connection.queue and not connection.closed:
            out = connection.queue[0]
            try:
                connection.sock.sendmsg([out.data], fdwire.ancillary(out.fds))
            except (BlockingIOError, InterruptedError):
                if not connection.writing:
                    connection.writing = True
                    self._loop.add_writer(connection.sock.fileno(), self._flush, connection)
                return
            except OSError as error:
                # The peer went away (EPIPE) or the socket broke.
                self.end(connection, f"fd channel write failed: {error}")
                return
            connection.queue.popleft()
            self.ledger.count_sent(len(out.fds))
            self.ledger.close_all(out.temporary)
            if not out.sent.done():
                out.sent.set_result(None)
        if connection.writing and not connection.queue:
            connection.writing = False
            self._loop.remove_writer(connection.sock.fileno())

    # --- ending ---------------------------------------------------------------

    def end(self, connection: Connection, reason: str) -> None:
        """End the session (or just the call channel): release everything it held, in reverse order."""
        if connection.closed:
            return
        connection.closed = True
        session = connection.session
        if connection.main is not None:
            log.debug("session %d: a call channel closed: %s", session.id, reason)
        else:
            log.debug("session %d (pid %d) ended: %s", session.id, session.pid, reason)
            for channel in list(connection.call_channels):
                self.end(channel, reason)
        self._loop.remove_reader(connection.sock.fileno())
        if connection.writing:
            self._loop.remove_writer(connection.sock.fileno())
        while connection.queue:
            out = connection.queue.popleft()
            self.ledger.close_all(out.temporary)
            if not out.sent.done():
                out.sent.set_exception(Unavailable(f"session ended: {reason}"))
                out.sent.exception()
        for pending in connection.pending.values():
            pending.timer.cancel()
            self.ledger.close_all(pending.fds)
        connection.pending.clear()
        for waiter in connection.waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        connection.sock.close()
        if connection.main is not None:
            connection.main.call_channels.remove(connection)
            return
        self.connections.pop(session.id, None)
        self.registry.session_close(session)
        self.on_session_end(session)


def _peer_hung_up(sock: socket.socket) -> bool:
    """True when the peer closed: a zero-length read alone could be an empty datagram."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP)
    return bool(poller.poll(0))
