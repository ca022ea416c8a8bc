"""The fd channel's wire format, shared by the SDK and the broker.

One SOCK_SEQPACKET datagram = one serialized ``FdMessage`` plus, optionally,
file descriptors as SCM_RIGHTS ancillary data. Datagram boundaries are kept
by the socket, so there is no framing beyond the protobuf itself.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bufbroker import protocol
from bufbroker.v1 import fd_channel_pb2 as pb

# The kernel refuses more than SCM_MAX_FD (253) fds in one message.
MAX_FDS_PER_MESSAGE = 253
# Control messages are small; anything larger is not ours.
MAX_MESSAGE_BYTES = 4096
# Calls and replies on a call channel carry accept lists, traces and handles.
MAX_CALL_BYTES = 65536
_ANCILLARY_BYTES = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array.array("i").itemsize)

# Kept here for the broker and tests that read it from this module; defined in bufbroker.protocol.
SESSION_METADATA_KEY = protocol.SESSION_METADATA_KEY


class FdWireError(ValueError):
    """A datagram that is not a valid FdMessage."""


@dataclass
class Received:
    """One datagram read from the channel. The reader owns ``fds``."""

    message: pb.FdMessage | None
    fds: list[int]
    truncated: bool  # MSG_CTRUNC: the kernel dropped some of the fds
    eof: bool  # the peer closed the connection
    error: str = ""  # why ``message`` is None although data arrived


def decode(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> pb.FdMessage:
    """Parse one datagram; raises FdWireError with what was wrong."""
    if len(data) > max_bytes:
        raise FdWireError(f"message of {len(data)} bytes exceeds {max_bytes}")
    message = pb.FdMessage()
    try:
        message.ParseFromString(data)
    except Exception as error:  # protobuf raises DecodeError and friends
        raise FdWireError(f"not an FdMessage: {error}") from None
    if message.WhichOneof("kind") is None:
        raise FdWireError("empty FdMessage: no kind is set")
    return message


def encode(message: pb.FdMessage) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % array.array("i").itemsize
            fds.extend(array.array("i", data[:usable]))
    return fds


def receive(sock: socket.socket, max_bytes: int = MAX_MESSAGE_BYTES) -> Received:
    """Read one datagram of at most ``max_bytes``; never leaks an fd that arrived with it.

    Raises BlockingIOError on a non-blocking socket with nothing to read.
    """
    data, ancdata, flags, _ = sock.recvmsg(max_bytes + 1, _ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC)
    fds = fds_from_ancillary(ancdata)
    truncated = bool(flags & socket.MSG_CTRUNC)
    if not data and not fds:
        return Received(None, [], truncated, eof=True)
    if flags & socket.MSG_TRUNC:
        return Received(None, fds, truncated, False, f"message longer than {max_bytes} bytes")
    try:
        return Received(decode(data, max_bytes), fds, truncated, False)
    except FdWireError as error:
        return Received(None, fds, truncated, False, str(error))


def send(sock: socket.socket, message: pb.FdMessage, fds: Sequence[int] = ()) -> None:
    """Send one datagram with ``fds`` attached (the caller keeps its copies)."""
    if len(fds) > MAX_FDS_PER_MESSAGE:
        raise ValueError(f"{len(fds)} fds in one message; the kernel allows {MAX_FDS_PER_MESSAGE}")
    sock.sendmsg([encode(message)], ancillary(fds))


def ancillary(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    """SCM_RIGHTS ancillary data carrying ``fds`` (none when empty)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, as the kernel recorded them at connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def close_fds(fds: Iterable[int]) -> None:
    """Close each fd, ignoring those already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
