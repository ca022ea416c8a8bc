"""bufbroker.calls: call channels and their pool, over real SOCK_SEQPACKET socketpairs.

The broker's end of each channel is a small thread in this file that reads
Call datagrams and answers them as the broker would: a map gets a reply
with one real memfd attached, a detach an empty reply.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from bufbroker import calls, errors, fdwire
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import fd_channel_pb2 as fdpb


class FakeBrokerEnd:
    """Answers calls on the far end of a socketpair until it closes; ``silent`` never replies."""

    def __init__(self, sock: socket.socket, silent: bool = False, wrong_id: bool = False) -> None:
        self.sock = sock
        self.silent = silent
        self.wrong_id = wrong_id
        self.calls: list[fdpb.Call] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                received = fdwire.receive(self.sock, fdwire.MAX_CALL_BYTES)
            except OSError:
                return
            if received.eof:
                return
            call = received.message.call
            self.calls.append(call)
            if self.silent:
                continue
            reply = fdpb.FdMessage()
            reply.reply.call_id = call.call_id + (1 if self.wrong_id else 0)
            fds: list[int] = []
            if call.WhichOneof("request") == "map":
                fd = os.memfd_create("mapped", os.MFD_CLOEXEC)
                os.write(fd, f"attachment {call.map.attachment_id}".encode())
                fds = [fd]
                reply.reply.map.CopyFrom(pb.MapResponse(mapping_id=call.map.attachment_id * 10, fd_count=1))
            else:
                reply.reply.detach.CopyFrom(pb.DetachResponse())
            try:
                fdwire.send(self.sock, reply, fds)
            except OSError:
                return  # closed while answering
            finally:
                fdwire.close_fds(fds)

    def close(self) -> None:
        """Hang up as a broker does: the peer sees EOF, and this end's thread ends."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=2)
        self.sock.close()


class Broker:
    """Opens call channels as OpenCallChannel would: each one a socketpair with a FakeBrokerEnd."""

    def __init__(self, **behaviour: bool) -> None:
        self.behaviour = behaviour
        self.ends: list[FakeBrokerEnd] = []
        self.pools: list[calls.CallPool] = []
        self.loose: list[socket.socket] = []
        self.refuse = False

    def pool(self) -> calls.CallPool:
        pool = calls.CallPool(self.open_one)
        self.pools.append(pool)
        return pool

    def channel(self) -> calls.CallChannel:
        """A channel outside any pool (closed with the broker)."""
        sock = self.open_one()
        self.loose.append(sock)
        return calls.CallChannel(sock)

    def open_one(self) -> socket.socket:
        if self.refuse:
            raise errors.ResourceExhausted("max_call_channels = 16 reached")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ends.append(FakeBrokerEnd(theirs, **self.behaviour))
        return ours

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
        for sock in self.loose:
            sock.close()
        for end in self.ends:
            end.close()


@pytest.fixture
def broker():
    broker = Broker()
    yield broker
    broker.close()


@pytest.fixture
def silent_broker():
    broker = Broker(silent=True)
    yield broker
    broker.close()


@pytest.fixture
def confused_broker():
    broker = Broker(wrong_id=True)
    yield broker
    broker.close()


def test_a_call_is_one_datagram_each_way_and_the_reply_brings_its_fds(broker):
    channel = broker.channel()
    reply, fds = channel.call("map", pb.MapRequest(attachment_id=4))
    assert reply.map.mapping_id == 40 and reply.call_id == 1
    assert len(fds) == 1 and os.pread(fds[0], 12, 0) == b"attachment 4"
    fdwire.close_fds(fds)
    reply, fds = channel.call("detach", pb.DetachRequest(attachment_id=4))
    assert reply.WhichOneof("reply") == "detach" and fds == [] and reply.call_id == 2
    assert [c.call_id for c in broker.ends[0].calls] == [1, 2]


def test_a_reply_to_another_call_breaks_the_channel(confused_broker):
    channel = confused_broker.channel()
    with pytest.raises(calls.ChannelBroken, match="an unexpected reply"):
        channel.call("map", pb.MapRequest(attachment_id=1))


def test_a_broker_that_closed_its_end_breaks_the_channel(broker):
    channel = broker.channel()
    broker.ends[0].close()
    with pytest.raises(calls.ChannelBroken):
        channel.call("detach", pb.DetachRequest(attachment_id=1))


def test_the_pool_lends_a_returned_channel_again_instead_of_opening_another(broker):
    pool = broker.pool()
    for attachment_id in (1, 2, 3):
        channel = pool.borrow()
        assert channel is not None
        _, fds = channel.call("map", pb.MapRequest(attachment_id=attachment_id))
        fdwire.close_fds(fds)
        pool.give_back(channel)
    assert len(broker.ends) == 1


def test_busy_channels_make_the_pool_open_more_up_to_its_limit_then_lend_none(broker, monkeypatch):
    monkeypatch.setattr(calls, "MAX_CHANNELS", 2)
    pool = broker.pool()
    first, second = pool.borrow(), pool.borrow()
    assert first is not None and second is not None and first is not second
    assert pool.borrow() is None, "every channel busy: the caller makes the gRPC call instead"
    pool.give_back(first)
    assert pool.borrow() is first
    assert len(broker.ends) == 2


def test_a_discarded_channel_frees_its_place_in_the_pool(broker, monkeypatch):
    monkeypatch.setattr(calls, "MAX_CHANNELS", 1)
    pool = broker.pool()
    broken = pool.borrow()
    assert broken is not None and pool.borrow() is None
    pool.discard(broken)
    assert broken.sock.fileno() == -1
    fresh = pool.borrow()
    assert fresh is not None and fresh is not broken


def test_a_broker_that_gives_no_channel_makes_the_pool_stop_asking(broker):
    broker.refuse = True
    pool = broker.pool()
    assert pool.borrow() is None
    broker.refuse = False
    assert pool.borrow() is None, "after one refusal the session uses gRPC calls only"
    assert broker.ends == []


def test_closing_the_pool_wakes_a_call_waiting_for_its_reply(silent_broker):
    broker = silent_broker
    pool = broker.pool()
    channel = pool.borrow()
    assert channel is not None
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            channel.call("map", pb.MapRequest(attachment_id=1))
        except calls.ChannelBroken as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 2
    while not broker.ends[0].calls and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.close()
    caller.join(timeout=2)
    assert not caller.is_alive() and len(outcome) == 1
    assert pool.borrow() is None, "a closed pool lends nothing"
