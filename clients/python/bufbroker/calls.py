"""Call channels: the SDK's fast path for attach, map, unmap and detach.

A call channel is a SEQPACKET socket the broker hands out (OpenCallChannel)
and binds to the session. The calling thread sends one datagram and reads
the reply itself, fds included: no gRPC, and no hand-off to the fd-channel
reader thread. One call at a time per channel; a session keeps a few in a
pool and, when all are busy, makes the gRPC call instead (so a thread never
waits for another's call, e.g. an unmap on a move while maps wait for it).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

from google.protobuf.message import Message

from bufbroker import errors, fdwire
from bufbroker.v1 import fd_channel_pb2 as pb

log = logging.getLogger("bufbroker")

# A call waits at most this long for its reply (a map during a move waits
# for the move, a few seconds at most); then the channel is given up.
CALL_TIMEOUT = 60.0
MAX_CHANNELS = 8  # per session; the broker allows 16


class ChannelBroken(Exception):
    """The channel can carry no more calls (broker gone, timeout, bad reply)."""


class CallChannel:
    """One call channel. Not thread-safe: the pool lends it to one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(CALL_TIMEOUT)
        self.last_id = 0

    def call(self, kind: str, request: Message) -> tuple[pb.CallReply, list[int]]:
        """Send ``request`` as a ``kind`` call (attach, map, unmap, detach).

        Returns the CallReply and the fds that came with it (the caller owns
        them). Raises ChannelBroken when the channel can carry no more calls:
        discard it then.
        """
        self.last_id += 1
        message = pb.FdMessage()
        message.call.call_id = self.last_id
        getattr(message.call, kind).CopyFrom(request)
        try:
            self.sock.sendmsg([message.SerializeToString()])
            received = fdwire.receive(self.sock, fdwire.MAX_CALL_BYTES)
        except TimeoutError:
            raise ChannelBroken(f"no reply within {CALL_TIMEOUT} s") from None
        except OSError as error:
            raise ChannelBroken(str(error)) from None
        reply = received.message.reply if received.message is not None and received.message.HasField("reply") else None
        if reply is None or received.truncated or reply.call_id != self.last_id:
            fdwire.close_fds(received.fds)
            why = "the broker closed it" if received.eof else received.error or "an unexpected reply"
            raise ChannelBroken(why)
        return reply, received.fds

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in a call
        self.sock.close()


class CallPool:
    """A link's call channels, opened on demand (``open_one`` returns a connected socket)."""

    def __init__(self, open_one: Callable[[], socket.socket]) -> None:
        self._open_one = open_one
        self._lock = threading.Lock()
        self._free: list[CallChannel] = []
        self._all: list[CallChannel] = []
        self._opening = 0  # channels being opened, outside the lock
        self._usable = True
        self._closed = False

    def borrow(self) -> CallChannel | None:
        """A free channel, a new one, or None (all busy, or the broker has none to give)."""
        with self._lock:
            if self._free:
                return self._free.pop()
            if not self._usable or self._closed or len(self._all) + self._opening >= MAX_CHANNELS:
                return None
            self._opening += 1
        channel: CallChannel | None = None
        try:
            channel = CallChannel(self._open_one())
        except (errors.BrokerError, OSError) as error:
            log.debug("bufbroker: no call channel (%s); using gRPC calls", error)
        with self._lock:
            self._opening -= 1
            if channel is None:
                self._usable = False
            elif not self._closed:
                self._all.append(channel)
                return channel
        if channel is not None:  # the pool closed while it opened
            channel.close()
        return None

    def give_back(self, channel: CallChannel) -> None:
        """Return a borrowed channel after a call that got its reply."""
        with self._lock:
            if not self._closed:
                self._free.append(channel)
                return
        channel.close()

    def discard(self, channel: CallChannel) -> None:
        """Close a borrowed channel that broke (ChannelBroken); the pool may open another."""
        with self._lock:
            if channel in self._all:
                self._all.remove(channel)
        channel.close()

    def close(self) -> None:
        """Close every channel, busy ones included (their calls raise ChannelBroken)."""
        with self._lock:
            self._closed = True
            channels = list(self._all)
            self._all.clear()
            self._free.clear()
        for channel in channels:
            channel.close()
