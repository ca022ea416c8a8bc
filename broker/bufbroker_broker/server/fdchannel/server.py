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

import array
import asyncio
import errno
import fcntl
import logging
import os
import re
import secrets
import select
import socket
import sys
import termios
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bufbroker import fdwire
from bufbroker.v1 import fd_channel_pb2 as pb
from bufbroker_broker.core.errors import BrokerError, InvalidArgument, ResourceExhausted, Unavailable
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.core.registry import Registry, Session
from bufbroker_broker.host.fds import open_fd_count
from bufbroker_broker.host.peer import peer_groups
from bufbroker_broker.server.fdchannel.vouches import Vouches
from bufbroker_broker.server.wire.errors import call_error, notice

log = logging.getLogger(__name__)

# Seconds a count of the broker's open fds is reused (corrected by the ledger's changes since).
FD_COUNT_TTL = 0.05
FDS_DROPPED = "fds dropped: receiver out of file descriptors or refused by a security module"
FDS_IN_FLIGHT = (
    "the broker could not pass the fds: too many of its fds are in flight, unread by clients (ETOOMANYREFS); "
    "retry, or ask the operator to raise the broker's nofile limit or lower max_unread_replies"
)


@dataclass
class Limits:
    pending_fd_timeout: float = 10.0  # unclaimed fds are closed after this
    nonce_wait: float = 2.0  # how long RegisterBuffer waits for its fds
    max_pending_fds: int = 1024  # per session, sent but not yet claimed
    max_send_queue: int = 256  # datagrams queued for a slow reader
    send_timeout: float = 5.0  # Map waits this long for its fds to go out
    max_call_channels: int = 16  # per session
    max_sessions: int = 4096  # open sessions, all uids together
    max_sessions_per_uid: int = 1024
    fd_limit: int = 0  # the broker's RLIMIT_NOFILE; 0: unknown, no process-wide check
    fd_reserve: int = 0  # fds kept free (for accepting, refusing, maps); the daemon sets it
    max_unread_replies: int = 64  # per session, all its call channels: replies with fds the client has not read


# Accepting while out of fds: pause this long, doubling up to the maximum.
ACCEPT_BACKOFF_MIN = 0.1
ACCEPT_BACKOFF_MAX = 2.0
# Clients refused through the spare fd at most, each time the table is found full.
SPARE_BURST = 64
# A refusal of the same kind is logged at most once per this many seconds.
REFUSAL_LOG_PERIOD = 10.0
# Refused nonces remembered per connection (for the RegisterBuffer naming them); the oldest are forgotten.
MAX_REMEMBERED_REFUSALS = 256


class _Throttle:
    """Warnings logged at most once per period per kind, with how many were left out."""

    def __init__(self, period: float, clock: Callable[[], float]) -> None:
        self.period = period
        self.clock = clock
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.period:
            self._quiet[kind] = self._quiet.get(kind, 0) + 1
            return
        self._last[kind] = now
        quiet = self._quiet.pop(kind, 0)
        suffix = f" ({quiet} more like it in the last {now - last:.0f} s)" if quiet and last is not None else ""
        log.warning(message + suffix, *args)


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
    fallback: bytes = b""  # sent instead, without fds, when the kernel refuses the fds (ETOOMANYREFS)


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
    failed: dict[str, BrokerError] = field(default_factory=dict)  # at most MAX_REMEMBERED_REFUSALS, oldest dropped
    forgotten_refusals: int = 0
    waiters: dict[str, asyncio.Future] = field(default_factory=dict)
    queue: deque = field(default_factory=deque)
    writing: bool = False
    next_ticket: int = 1
    closed: bool = False
    # Why the kernel dropped fds of the last datagram, when it was the fd budget.
    budget_error: BrokerError | None = None
    # Replies with fds sent on this call channel that the client may not have read yet.
    unread_replies: int = 0
    # Proofs for this session's gRPC calls (main connection only; see vouches.py).
    vouches: Vouches = field(default_factory=lambda: Vouches(_monotonic))

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
        self.sessions_by_uid: dict[int, int] = {}
        self.open_fds: Callable[[], int] = open_fd_count
        # Counting /proc/self/fd costs O(open fds): it is counted at most every
        # FD_COUNT_TTL seconds, and what the ledger took or closed since is added.
        self._fd_count = 0
        self._fd_counted_at = -FD_COUNT_TTL
        self._held_at_count = 0
        self._listener: socket.socket | None = None
        self._running_loop: asyncio.AbstractEventLoop | None = None
        self._throttle = _Throttle(REFUSAL_LOG_PERIOD, _monotonic)
        # The spare-fd trick: one fd held to be closed when the table is full,
        # so the broker can still accept a client and tell it why it is refused.
        self._spare: int | None = None
        self._backoff = 0.0
        self._backoff_until = 0.0
        self._resume: asyncio.TimerHandle | None = None
        self._refused_accepts = 0

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
        self._open_spare()
        self._loop.add_reader(listener.fileno(), self._on_accept)

    def stop_accepting(self) -> None:
        """Refuse new sessions; the open ones carry on."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

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

    # --- admission and the fd budget -------------------------------------------------

    def _open_spare(self) -> None:
        if self._spare is None:
            try:
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._spare = None  # out of fds: try again after the next accept

    def _fd_headroom(self) -> int:
        """How many more fds the process may open and still keep ``fd_reserve`` free."""
        if not self.limits.fd_limit:
            return fdwire.MAX_FDS_PER_MESSAGE
        now = _monotonic()
        if now - self._fd_counted_at >= FD_COUNT_TTL:
            self._fd_count, self._fd_counted_at, self._held_at_count = self.open_fds(), now, self.ledger.held
        in_use = self._fd_count + self.ledger.held - self._held_at_count
        return self.limits.fd_limit - self.limits.fd_reserve - in_use

    def _reserve_error(self) -> ResourceExhausted:
        limits = self.limits
        return ResourceExhausted(
            f"the broker is keeping its last {limits.fd_reserve} of {limits.fd_limit} file descriptors free "
            f"(limit fd_reserve = {limits.fd_reserve}, of its RLIMIT_NOFILE); retry later, or ask the operator "
            "to raise the broker's nofile limit or lower max_fds_per_session and max_sessions"
        )

    def _admission(self, uid: int) -> ResourceExhausted | None:
        """Why a new session of ``uid`` is refused, or None."""
        limits = self.limits
        if len(self.connections) >= limits.max_sessions:
            return ResourceExhausted(
                f"the broker already serves {len(self.connections)} sessions, the limit "
                f"(max_sessions = {limits.max_sessions}); close sessions you do not need, or ask the "
                "operator to raise max_sessions"
            )
        held = self.sessions_by_uid.get(uid, 0)
        if held >= limits.max_sessions_per_uid:
            return ResourceExhausted(
                f"uid {uid} already has {held} sessions, the limit (max_sessions_per_uid = "
                f"{limits.max_sessions_per_uid}); share one session between threads, as the SDK allows, "
                "or ask the operator to raise max_sessions_per_uid"
            )
        if self._fd_headroom() <= 0:
            return self._reserve_error()
        return None

    def _refuse_session(self, sock: socket.socket, error: BrokerError, uid: int = -1) -> None:
        """Answer a connection with the refusal instead of HELLO, then close it."""
        try:
            sock.setblocking(False)
            sock.send(fdwire.encode(notice("", error)))
        except OSError:
            pass  # it went away or cannot take a datagram: it still sees the close
        sock.close()
        self._throttle.warning(
            re.sub(r"\d+", "N", error.message),
            "fd channel: refused a session%s: %s",
            f" of uid {uid}" if uid >= 0 else "",
            error.message,
        )

    def _accept_exhausted(self, error: OSError) -> None:
        """Out of fds at accept: refuse the waiting clients through the spare fd, then pause accepting.

        Another thread (gRPC's) may take the fd the spare frees; then the
        clients left wait for the next try, after the back-off.
        """
        listener = self._listener
        assert listener is not None
        refusal = ResourceExhausted(
            f"the broker is out of file descriptors ({error.strerror}; its limit is "
            f"{self.limits.fd_limit or 'unknown'}); retry later, or ask the operator to raise its nofile "
            "limit or lower max_fds_per_session and max_sessions"
        )
        for _ in range(SPARE_BURST):
            if self._spare is None:
                break
            os.close(self._spare)
            self._spare = None
            try:
                sock, _ = listener.accept()
            except OSError:
                self._open_spare()
                break
            self._refuse_session(sock, refusal)
            self._refused_accepts += 1
            self._open_spare()
        now = self._loop.time()
        self._backoff = min(max(self._backoff * 2, ACCEPT_BACKOFF_MIN), ACCEPT_BACKOFF_MAX)
        self._backoff_until = now + self._backoff
        log.warning(
            "fd channel accept failed: %s; %d client(s) refused (through the spare fd) since the last report; "
            "not accepting for %.1f s",
            error.strerror,
            self._refused_accepts,
            self._backoff,
        )
        self._refused_accepts = 0
        self._loop.remove_reader(listener.fileno())
        self._resume = self._loop.call_later(self._backoff, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._listener is not None:
            self._loop.add_reader(self._listener.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        if self._listener is None:  # stopped accepting since the loop saw it readable
            return
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self._accept_exhausted(error)  # back off instead of spinning on a readable listener
            else:
                self._throttle.warning("accept", "fd channel accept failed: %s", error)
            return
        if self._backoff and self._loop.time() > self._backoff_until + 10 * ACCEPT_BACKOFF_MAX:
            self._backoff = 0.0  # a long time without running out: start the back-off small again
        self._open_spare()
        sock.setblocking(False)
        try:
            pid, uid, gid = fdwire.peer_credentials(sock)
        except OSError as error:
            log.warning("fd channel: cannot read peer credentials: %s", error)
            sock.close()
            return
        refusal = self._admission(uid)
        if refusal is not None:
            self._refuse_session(sock, refusal, uid)
            return
        token = secrets.token_hex(16)  # 128 bits
        session = self.registry.session_open(token, pid, uid, gid, peer_groups(sock, pid))
        connection = Connection(sock, session)
        self.connections[session.id] = connection
        self.sessions_by_uid[uid] = self.sessions_by_uid.get(uid, 0) + 1
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
        self,
        channel: Connection,
        data: bytes,
        fds: list[int] | None = None,
        temporary: list[int] | None = None,
        fallback: bytes = b"",
    ) -> asyncio.Future:
        """Send a call's encoded reply, with ``fds`` attached; the future says when it is out.

        ``fallback`` (an error reply without fds) goes instead when the kernel
        refuses to pass the fds (ETOOMANYREFS); the future then fails.
        """
        if fds:
            channel.unread_replies += 1
        return self._enqueue(channel, data, fds or [], temporary or [], fallback)

    def check_unread_replies(self, channel: Connection) -> None:
        """Refuse a call that would send fds while the session has too many replies with fds unread.

        A reply the client never reads keeps its fds in flight, counted
        against the broker's RLIMIT_NOFILE. A channel whose send queue the
        kernel reports empty has had all its replies read.
        """
        main = channel.main or channel
        unread = 0
        for each in main.call_channels:
            if each.unread_replies and not each.queue and _unread_bytes(each.sock) == 0:
                each.unread_replies = 0
            unread += each.unread_replies
        limit = self.limits.max_unread_replies
        if unread >= limit:
            self._throttle.warning(
                "unread replies",
                "session %d (pid %d): refused a call: %d replies with fds unread (max_unread_replies = %d)",
                channel.session.id,
                channel.session.pid,
                unread,
                limit,
            )
            raise ResourceExhausted(
                f"this session has {unread} call replies carrying fds it has not read, the limit "
                f"(max_unread_replies = {limit}); read the replies of your call channels before calling again, "
                "or ask the operator to raise max_unread_replies"
            )

    # --- receiving ------------------------------------------------------------

    def _fd_budget(self, connection: Connection) -> tuple[int, BrokerError | None]:
        """How many fds the next datagram of ``connection`` may bring, and the refusal past that."""
        session_room = self.registry.fd_room(connection.session, connection.pending_fd_count)
        process_room = self._fd_headroom()
        if process_room < session_room:
            return max(0, process_room), self._reserve_error()
        limit = self.registry.limits.max_fds
        return session_room, ResourceExhausted(
            f"this session already holds {limit - session_room} fds in the broker, registered or sent "
            f"but not yet claimed (limit max_fds_per_session = {limit}); unregister buffers first, send "
            "each file once, or ask the operator to raise max_fds_per_session"
        )

    def _datagrams(
        self, connection: Connection, max_bytes: int, what: str, budgeted: bool = False
    ) -> Iterator[fdwire.Received]:
        """Each datagram waiting on ``connection``, its fds adopted by the ledger.

        With ``budgeted``, the kernel installs no more fds than the session's
        and the process's fd budgets leave room for (the rest it closes, and
        ``connection.budget_error`` says why). Ends the connection when the
        client hung up or the socket broke, and stops once the connection is
        ended (by us or by the caller).
        """
        while not connection.closed:
            try:
                if budgeted:
                    room, why = self._fd_budget(connection)
                    received = _receive(connection.sock, max_bytes, room)
                    connection.budget_error = why if received.truncated and room < fdwire.MAX_FDS_PER_MESSAGE else None
                else:
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
        for received in self._datagrams(connection, fdwire.MAX_MESSAGE_BYTES, "fd channel", budgeted=True):
            if received.eof:  # an empty datagram reads like EOF on SEQPACKET
                self._refuse(connection, "", InvalidArgument("empty fd-channel message; send a serialized FdMessage"))
                continue
            self._handle(connection, received)

    def _handle(self, connection: Connection, received: fdwire.Received) -> None:
        message = received.message
        nonce = message.send_fds.nonce if message is not None and message.HasField("send_fds") else ""
        if received.truncated:
            self.ledger.close_all(received.fds)
            self._refuse(connection, nonce, connection.budget_error or ResourceExhausted(FDS_DROPPED))
            if connection.budget_error is not None:
                self._throttle.warning(
                    "fd budget",
                    "session %d (pid %d): refused fds: %s",
                    connection.session.id,
                    connection.session.pid,
                    connection.budget_error.message,
                )
            return
        if message is None:
            self.ledger.close_all(received.fds)
            self._refuse(
                connection,
                "",
                InvalidArgument(f"malformed fd-channel message ({received.error}); use the bufbroker SDK"),
            )
            return
        kind = message.WhichOneof("kind")
        if kind == "vouch" and not received.fds:
            refused = connection.vouches.add(message.vouch.proof)
            if refused is not None:
                self._refuse(connection, "", refused)
            return
        if kind != "send_fds":
            self.ledger.close_all(received.fds)
            self._refuse(
                connection,
                "",
                InvalidArgument(f"clients may only send send_fds or vouch (without fds) on the fd channel, not {kind}"),
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
        try:
            self.registry.check_fd_budget(connection.session, len(fds), pending=connection.pending_fd_count)
        except ResourceExhausted as error:
            return error
        return None

    def _refuse(self, connection: Connection, nonce: str, error: BrokerError) -> None:
        """Tell the sender on the channel; a RegisterBuffer for the nonce gets it too."""
        if nonce and nonce not in connection.pending:
            connection.failed.pop(nonce, None)
            connection.failed[nonce] = error
            while len(connection.failed) > MAX_REMEMBERED_REFUSALS:
                connection.failed.pop(next(iter(connection.failed)))  # the oldest
                connection.forgotten_refusals += 1
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
                forgotten = (
                    f", or they were refused and the refusal forgotten (this session had {connection.forgotten_refusals}"
                    f" refusals beyond the last {MAX_REMEMBERED_REFUSALS} remembered; see the notices on the fd channel)"
                    if connection.forgotten_refusals
                    else ""
                )
                raise InvalidArgument(
                    f"no fds arrived under nonce {nonce!r}: send them on the fd channel "
                    f"(send_fds) before RegisterBuffer; the SDK's export() does this{forgotten}"
                ) from None
        if nonce in connection.failed:
            raise connection.failed.pop(nonce)
        pending = connection.pending.pop(nonce, None)
        if pending is None:
            raise Unavailable("the session ended while waiting for its fds")
        pending.timer.cancel()
        return pending.fds

    async def vouched(self, session: Session, proof: str) -> bool:
        """True if ``session``'s own fd channel vouched for ``proof`` (used up here); see vouches.py."""
        connection = self.connections.get(session.id)
        if connection is None or connection.closed:
            return False
        return await connection.vouches.take(proof, self.limits.nonce_wait)

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

    def _enqueue(
        self, connection: Connection, data: bytes, fds: list[int], temporary: list[int], fallback: bytes = b""
    ) -> asyncio.Future:
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
        connection.queue.append(_Outgoing(data, fds, temporary, sent, fallback))
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
                if error.errno == errno.ETOOMANYREFS and out.fds:
                    self._fds_refused(connection, out)
                    continue
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

    def _fds_refused(self, connection: Connection, out: _Outgoing) -> None:
        """The kernel would not pass these fds (too many of the broker's fds in flight): the sender's
        problem, so the receiver is answered without them and its session goes on."""
        connection.queue.popleft()
        if out.fds and connection.main is not None:
            connection.unread_replies = max(0, connection.unread_replies - 1)
        self.ledger.close_all(out.temporary)
        error = ResourceExhausted(FDS_IN_FLIGHT)
        if not out.sent.done():
            out.sent.set_exception(error)
            out.sent.exception()  # retrieved: the caller may have stopped waiting
        if out.fallback:
            connection.queue.appendleft(_Outgoing(out.fallback, [], [], self._loop.create_future()))
        self._throttle.warning(
            "too many refs",
            "session %d (pid %d): could not pass %d fds (ETOOMANYREFS: too many of the broker's fds are in "
            "flight, unread by clients); answered without them",
            connection.session.id,
            connection.session.pid,
            len(out.fds),
        )

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
        connection.vouches.close()
        connection.sock.close()
        if connection.main is not None:
            connection.main.call_channels.remove(connection)
            return
        if self.connections.pop(session.id, None) is not None:
            left = self.sessions_by_uid.get(session.uid, 0) - 1
            if left > 0:
                self.sessions_by_uid[session.uid] = left
            else:
                self.sessions_by_uid.pop(session.uid, None)
        self.registry.session_close(session)
        self.on_session_end(session)


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def _receive(sock: socket.socket, max_bytes: int, max_fds: int) -> fdwire.Received:
    """fdwire.receive, with room for at most ``max_fds`` fds: the kernel closes the rest (MSG_CTRUNC).

    Fds past the budget never enter the broker's fd table.
    """
    max_fds = max(0, min(max_fds, fdwire.MAX_FDS_PER_MESSAGE))
    room = socket.CMSG_LEN(max_fds * array.array("i").itemsize) if max_fds else 0
    data, ancdata, flags, _ = sock.recvmsg(max_bytes + 1, room, socket.MSG_CMSG_CLOEXEC)
    fds = fdwire.fds_from_ancillary(ancdata)
    truncated = bool(flags & socket.MSG_CTRUNC)
    if not data and not fds:
        return fdwire.Received(None, [], truncated, eof=True)
    if flags & socket.MSG_TRUNC:
        return fdwire.Received(None, fds, truncated, False, f"message longer than {max_bytes} bytes")
    try:
        return fdwire.Received(fdwire.decode(data, max_bytes), fds, truncated, False)
    except fdwire.FdWireError as error:
        return fdwire.Received(None, fds, truncated, False, str(error))


def _unread_bytes(sock: socket.socket) -> int:
    """What the peer has not read yet of what was sent on ``sock`` (SIOCOUTQ); -1 when unknown."""
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4), sys.byteorder, signed=True)
    except OSError:
        return -1


def _peer_hung_up(sock: socket.socket) -> bool:
    """True when the peer closed: a zero-length read alone could be an empty datagram."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP)
    return bool(poller.poll(0))
