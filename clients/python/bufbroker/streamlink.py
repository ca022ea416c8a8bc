"""One end of a stream link: the direct producer <-> consumer socket of a stream.

A link is a SOCK_SEQPACKET socket; one datagram is one serialized
``LinkMessage`` (proto/bufbroker/v1/stream.proto) plus, for Frame and
Release, exactly ``fence_count`` fence fds as SCM_RIGHTS ancillary data.
This module is the per-frame hot path: each send is one ``sendmsg`` and each
receive one ``recvmsg``, also when it waits: a receive with a timeout is a
blocking ``recvmsg`` bounded by the socket's SO_RCVTIMEO, not ``poll`` +
``recvmsg`` (each syscall in Python also drops and retakes the GIL, and on a
busy machine every extra wake-up shows in the hand-off latency).

fd ownership: a sender keeps its fences (the kernel duplicates them into the
datagram); a receiver owns the fds in what ``receive`` returns and must close
them. A datagram that is refused has its fds closed before the error is
raised, so bad input never leaks an fd.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

from bufbroker.v1 import stream_pb2 as pb

# Frame.meta limit unless the stream's settings say otherwise.
DEFAULT_MAX_META_BYTES = 4096
# Fences on one Frame or Release; more is not a fence, it is a mistake.
MAX_FENCES = 16
# Upper bounds (microseconds) of the hand-off latency histogram a consumer
# reports (StreamCounters.latency_buckets, broker.proto); one more bucket
# counts what is above the last.
HANDOFF_LATENCY_BOUNDS_US = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000)
# Everything in a LinkMessage but a Frame's meta or a Bye's detail fits in
# this (tags, varints, the oneof wrapper); Bye.detail is cut to fit too.
_ENVELOPE_BYTES = 128
_FD_SIZE = array.array("i").itemsize
# Plain ints: the socket module's flags are IntFlag enums, whose operators cost more than the syscall.
_SEND = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
_RECEIVE_WAITING = int(socket.MSG_CMSG_CLOEXEC)
_RECEIVE_NOW = int(socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
_TRUNCATED = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)
_ANCILLARY_TRUNCATED = int(socket.MSG_CTRUNC)
_new_tuple = tuple.__new__
# struct timeval for SO_RCVTIMEO; all zero means "no timeout" to the kernel.
_TIMEVAL = struct.Struct("@ll")
_NO_RCVTIMEO = 0


# observer(payload bytes, fd count) after each datagram a link of this process sent (observe_sends).
_send_observers: list[Callable[[int, int], None]] = []


def observe_sends(observer: Callable[[int, int], None]) -> None:
    """Call ``observer(payload_bytes, fd_count)`` after every datagram any stream link of this process sends.

    Frames, releases, hellos and byes, on the sending thread. For
    instrumentation (the video example's meter): it costs each send one
    call, so leave it off in production.
    """
    _send_observers.append(observer)


class LinkError(Exception):
    """Base of the link's errors."""


class LinkClosed(LinkError):
    """The peer closed its end of the link or died; nothing more will arrive."""


class MalformedMessage(LinkError):
    """A datagram the peer sent is not a valid LinkMessage; its fds were closed."""


class Received(NamedTuple):
    """One message read from a link. The caller owns ``fds`` and must close them."""

    kind: str  # which LinkMessage field is set: "hello", "frame", "release", "reclaimed" or "bye"
    message: pb.LinkMessage
    fds: list[int]


class LinkEnd:
    """One end of a stream link, wrapping a connected SOCK_SEQPACKET socket.

    The LinkEnd owns ``sock`` from construction on (``close()`` closes it).
    Sends never wait (a full peer queue raises BlockingIOError), and
    ``receive(timeout=0)`` does not either, so ``fileno()`` can be handed to
    ``select``/``poll`` or ``asyncio``'s ``add_reader``. The socket itself is
    kept in blocking mode with MSG_DONTWAIT per call, so that
    ``receive(timeout=None)`` is one blocking ``recvmsg`` and nothing more,
    and ``receive(timeout=t)`` one blocking ``recvmsg`` under SO_RCVTIMEO.

    ``max_meta_bytes`` bounds Frame.meta both ways: ``send_frame`` refuses
    longer meta, and ``receive`` refuses a datagram carrying it.
    """

    __slots__ = (
        "_ancillary_bytes",
        "_frame",
        "_frame_message",
        "_rcvtimeo_us",
        "_read_bytes",
        "_release",
        "_release_message",
        "max_meta_bytes",
        "sock",
    )

    def __init__(self, sock: socket.socket, max_meta_bytes: int = DEFAULT_MAX_META_BYTES) -> None:
        if sock.type != socket.SOCK_SEQPACKET:
            raise ValueError(f"a stream link is a SOCK_SEQPACKET socket, not {sock.type!r}")
        if max_meta_bytes < 0:
            raise ValueError(f"max_meta_bytes must be >= 0, not {max_meta_bytes}")
        self.sock = sock
        self.max_meta_bytes = max_meta_bytes
        sock.setblocking(True)
        # One byte more than the largest valid message, so an oversize one shows as MSG_TRUNC.
        self._read_bytes = max_meta_bytes + _ENVELOPE_BYTES + 1
        self._ancillary_bytes = socket.CMSG_SPACE(MAX_FENCES * _FD_SIZE)
        # The socket's SO_RCVTIMEO in microseconds as last set (0: none; it starts unset).
        self._rcvtimeo_us = _NO_RCVTIMEO
        # Reused for every frame and release: filling a kept message costs a third of building a new one.
        self._frame_message = pb.LinkMessage()
        self._frame = self._frame_message.frame
        self._release_message = pb.LinkMessage()
        self._release = self._release_message.release

    def fileno(self) -> int:
        """The socket's fd, readable when a message (or EOF) is waiting."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close this end; the peer reads EOF. Idempotent."""
        self.sock.close()

    def __enter__(self) -> LinkEnd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sending -------------------------------------------------------------------

    def send_frame(
        self,
        seq: int,
        slot: int,
        generation: int,
        meta: bytes = b"",
        fences: Sequence[int] = (),
        timestamp_ns: int | None = None,
    ) -> None:
        """Tell the consumer slot ``slot`` holds frame ``seq``; ``fences`` travel with it.

        ``timestamp_ns`` defaults to CLOCK_MONOTONIC now. The caller keeps its
        ``fences`` (the consumer gets duplicates). Raises ValueError for meta
        over ``max_meta_bytes`` or too many fences, LinkClosed if the consumer
        is gone, BlockingIOError if its queue is full.
        """
        self._send(self.encode_frame(seq, slot, generation, meta, len(fences), timestamp_ns), fences)

    def encode_frame(
        self,
        seq: int,
        slot: int,
        generation: int,
        meta: bytes = b"",
        fence_count: int = 0,
        timestamp_ns: int | None = None,
    ) -> bytes:
        """The datagram ``send_frame`` would send (a serialized LinkMessage), for ``send_encoded``.

        A producer sending one frame to several consumers encodes it once:
        the bytes are the same on every link of the stream. Raises ValueError
        for meta over ``max_meta_bytes``.
        """
        if len(meta) > self.max_meta_bytes:
            raise ValueError(f"frame meta of {len(meta)} bytes exceeds the link's limit of {self.max_meta_bytes}")
        frame = self._frame
        frame.seq = seq
        frame.slot = slot
        frame.generation = generation
        frame.timestamp_ns = time.monotonic_ns() if timestamp_ns is None else timestamp_ns
        frame.meta = meta
        frame.fence_count = fence_count
        return self._frame_message.SerializeToString()

    def send_encoded(self, data: bytes, fences: Sequence[int] = ()) -> None:
        """Send a datagram from ``encode_frame`` with its ``fences`` (as many as it announced).

        The caller keeps its ``fences``. Raises LinkClosed if the consumer is
        gone, BlockingIOError if its queue is full.
        """
        self._send(data, fences)

    def send_release(self, slot: int, seq: int, generation: int, fences: Sequence[int] = ()) -> None:
        """Tell the producer this consumer is done with ``slot`` showing frame ``seq``.

        The caller keeps its ``fences``. Raises LinkClosed if the producer is
        gone, BlockingIOError if its queue is full.
        """
        release = self._release
        release.slot = slot
        release.seq = seq
        release.generation = generation
        release.fence_count = len(fences)
        self._send(self._release_message.SerializeToString(), fences)

    def send_hello(self, hello: pb.LinkHello) -> None:
        """Send the link's first message (see stream.proto for what each side puts in it)."""
        self._send(pb.LinkMessage(hello=hello).SerializeToString(), ())

    def send_reclaimed(self, slot: int, seq: int, generation: int, held_for_ns: int) -> None:
        """Tell the consumer the producer took ``slot`` (frame ``seq``) back from it."""
        reclaimed = pb.Reclaimed(slot=slot, seq=seq, generation=generation, held_for_ns=held_for_ns)
        self._send(pb.LinkMessage(reclaimed=reclaimed).SerializeToString(), ())

    def send_bye(self, reason: pb.LinkByeReason, detail: str = "", last_seq: int = 0) -> None:
        """Say why this end is closing; ``detail`` is cut to fit the peer's datagram limit."""
        limit = self.max_meta_bytes
        encoded = detail.encode()
        if len(encoded) > limit:
            detail = encoded[:limit].decode(errors="ignore")
        bye = pb.Bye(reason=reason, detail=detail, last_seq=last_seq)
        self._send(pb.LinkMessage(bye=bye).SerializeToString(), ())

    def _send(self, data: bytes, fds: Sequence[int]) -> None:
        try:
            if not fds:
                self.sock.send(data, _SEND)  # send() parses no iovec or ancillary list: cheaper than sendmsg()
            else:
                if len(fds) > MAX_FENCES:
                    raise ValueError(f"{len(fds)} fences on one message; a link carries at most {MAX_FENCES}")
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                self.sock.sendmsg((data,), ancillary, _SEND)
        except (BrokenPipeError, ConnectionResetError) as error:
            raise LinkClosed(f"the link's peer is gone ({error.strerror})") from None
        if _send_observers:
            for observer in _send_observers:
                observer(len(data), len(fds))

    # --- receiving -----------------------------------------------------------------

    def receive(self, timeout: float | None = 0.0) -> Received:
        """Read the next message and its fds; the caller owns the fds.

        ``timeout`` is how long to wait for one: 0 (the default) does not wait
        and raises BlockingIOError when nothing is there (for callers woken by
        ``fileno()``), ``None`` waits as long as it takes, otherwise
        TimeoutError after that many seconds. Raises LinkClosed once the peer
        closed or died (after what it sent before that was read), and
        MalformedMessage (having closed the datagram's fds) for a datagram
        that is not a valid LinkMessage.
        """
        if timeout is None:
            self._set_rcvtimeo(_NO_RCVTIMEO)
            return self._receive_now(_RECEIVE_WAITING)
        if timeout <= 0:
            return self._receive_now(_RECEIVE_NOW)
        deadline = time.monotonic() + timeout
        left = timeout
        while True:
            # One blocking recvmsg that the kernel ends after SO_RCVTIMEO (EAGAIN: BlockingIOError).
            # The timeout set is rounded *down* to a power of two microseconds, so the callers'
            # usual pattern, a slowly shrinking "time left until my deadline", keeps the value
            # the socket already has and costs no setsockopt; a wait that ends early only loops.
            microseconds = int(left * 1e6)
            self._set_rcvtimeo(1 << (microseconds.bit_length() - 1) if microseconds > 0 else 1)
            try:
                return self._receive_now(_RECEIVE_WAITING)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no message on the stream link within {timeout} s") from None

    def _set_rcvtimeo(self, microseconds: int) -> None:
        """Make the socket's blocking receives give up after ``microseconds`` (0: never); a no-op if already so."""
        if microseconds != self._rcvtimeo_us:
            seconds, rest = divmod(microseconds, 1_000_000)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(seconds, rest))
            self._rcvtimeo_us = microseconds

    def _receive_now(self, flags: int) -> Received:
        try:
            data, ancdata, got, _ = self.sock.recvmsg(self._read_bytes, self._ancillary_bytes, flags)
        except ConnectionResetError:
            # The peer closed with our messages unread. The kernel reports that once, before
            # what the peer had sent us; read that, then the end of the link.
            data, ancdata, got, _ = self.sock.recvmsg(self._read_bytes, self._ancillary_bytes, flags)
        fds = _fds_from(ancdata) if ancdata else []
        if not data:
            if not fds:
                raise LinkClosed("the link's peer closed its end")
            _refuse(fds, "an empty datagram carrying fds")
        if got & _TRUNCATED:
            if got & _ANCILLARY_TRUNCATED:
                _refuse(fds, f"more than {MAX_FENCES} fds on one datagram (the kernel dropped the rest)")
            _refuse(fds, f"a datagram longer than {self._read_bytes - 1} bytes (max_meta_bytes {self.max_meta_bytes})")
        message = pb.LinkMessage()
        try:
            message.ParseFromString(data)
        except Exception as error:  # protobuf raises DecodeError and friends
            _refuse(fds, f"not a LinkMessage ({error})")
        kind = message.WhichOneof("kind")
        if kind == "frame":  # the common case first: one frame per datagram, most with no fence
            frame = message.frame
            if frame.fence_count != len(fds):
                _refuse(fds, f"a frame announcing {frame.fence_count} fences but carrying {len(fds)} fds")
            # Meta can only be over the limit if the whole datagram is: skip reading it (a copy) otherwise.
            if len(data) > self.max_meta_bytes and len(frame.meta) > self.max_meta_bytes:
                _refuse(fds, f"frame meta of {len(frame.meta)} bytes over the limit of {self.max_meta_bytes}")
        elif kind == "release":
            release = message.release
            if release.fence_count != len(fds):
                _refuse(fds, f"a release announcing {release.fence_count} fences but carrying {len(fds)} fds")
        elif kind is None:
            _refuse(fds, "a LinkMessage with no kind set")
        elif fds:
            _refuse(fds, f"a {kind} carrying {len(fds)} fds (only frame and release carry fences)")
        # tuple.__new__ directly: a NamedTuple's own __new__ is a Python function, one more frame per message.
        return _new_tuple(Received, (kind, message, fds))


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[: len(data) - len(data) % _FD_SIZE]))
    return fds


def _refuse(fds: list[int], what: str) -> NoReturn:
    """Close ``fds`` (they came with a bad datagram) and raise MalformedMessage."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError as error:
            if error.errno != errno.EBADF:
                raise
    raise MalformedMessage(f"stream link: refused {what}; its {len(fds)} fds were closed")
