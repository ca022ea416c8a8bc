"""The fd channel wire format on real SOCK_SEQPACKET sockets and real memfds."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bufbroker import fdwire
from bufbroker.v1 import fd_channel_pb2 as pb


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def opened():
    """A list of fds the test opened or received; all closed at teardown."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def memfd(opened: list[int], name: str = "fdwire") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    opened.append(fd)
    return fd


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


# --- decode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "no kind is set"),
        (pb.FdMessage().SerializeToString(), "no kind is set"),
        (b"\xff\xff\xff\xff", "not an FdMessage"),
        (b"\x00" * (fdwire.MAX_MESSAGE_BYTES + 1), f"exceeds {fdwire.MAX_MESSAGE_BYTES}"),
    ],
    ids=["empty-bytes", "empty-message", "garbage", "oversize"],
)
def test_decode_refuses_what_is_not_an_fd_message_with_fd_wire_error(data, why):
    with pytest.raises(fdwire.FdWireError, match=why):
        fdwire.decode(data)


def test_decode_returns_an_encoded_message():
    message = pb.FdMessage(send_fds=pb.SendFds(nonce="n", fd_count=2))
    assert fdwire.decode(fdwire.encode(message)) == message


@settings(database=None)
@given(st.binary(max_size=fdwire.MAX_MESSAGE_BYTES + 64))
def test_decode_of_any_bytes_returns_a_message_with_a_kind_or_raises_fd_wire_error(data):
    try:
        message = fdwire.decode(data)
    except fdwire.FdWireError:
        return
    assert message.WhichOneof("kind") is not None


# --- send and receive ------------------------------------------------------------------


def test_send_and_receive_carry_the_message_and_fds_of_the_same_files(pair, opened):
    a, b = pair
    originals = [memfd(opened, f"m{i}") for i in range(3)]
    message = pb.FdMessage(send_fds=pb.SendFds(nonce="abc", fd_count=3))
    fdwire.send(a, message, originals)
    received = fdwire.receive(b)
    opened.extend(received.fds)
    assert received.message == message
    assert (received.eof, received.truncated, received.error) == (False, False, "")
    assert len(received.fds) == 3
    assert not set(received.fds) & set(originals)
    assert [inode(fd) for fd in received.fds] == [inode(fd) for fd in originals]


def test_received_fds_are_close_on_exec(pair, opened):
    a, b = pair
    fdwire.send(a, pb.FdMessage(send_fds=pb.SendFds(fd_count=1)), [memfd(opened)])
    received = fdwire.receive(b)
    opened.extend(received.fds)
    assert fcntl.fcntl(received.fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC


def test_receive_from_a_closed_peer_reports_eof(pair):
    a, b = pair
    a.close()
    received = fdwire.receive(b)
    assert received.eof is True
    assert received.message is None
    assert received.fds == []


def test_send_refuses_more_fds_than_the_kernel_allows_and_sends_nothing(pair, opened):
    a, b = pair
    fd = memfd(opened)
    with pytest.raises(ValueError, match="254 fds"):
        fdwire.send(a, pb.FdMessage(send_fds=pb.SendFds(fd_count=254)), [fd] * 254)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        fdwire.receive(b)


def test_send_accepts_the_kernel_maximum_of_253_fds(pair, opened):
    a, b = pair
    fd = memfd(opened)
    fdwire.send(a, pb.FdMessage(send_fds=pb.SendFds(fd_count=253)), [fd] * fdwire.MAX_FDS_PER_MESSAGE)
    received = fdwire.receive(b)
    opened.extend(received.fds)
    assert len(received.fds) == 253
    assert not received.truncated


def test_garbage_datagram_with_an_fd_returns_the_error_and_the_fd(pair, opened):
    a, b = pair
    sent = memfd(opened)
    a.sendmsg([b"\xff\xff\xff\xff"], fdwire.ancillary([sent]))
    received = fdwire.receive(b)
    opened.extend(received.fds)
    assert received.message is None
    assert "not an FdMessage" in received.error
    assert received.eof is False
    assert [inode(fd) for fd in received.fds] == [inode(sent)]


def test_oversize_datagram_with_an_fd_returns_the_error_and_the_fd(pair, opened):
    a, b = pair
    sent = memfd(opened)
    a.sendmsg([b"\x00" * (fdwire.MAX_MESSAGE_BYTES + 100)], fdwire.ancillary([sent]))
    received = fdwire.receive(b)
    opened.extend(received.fds)
    assert received.message is None
    assert "longer than" in received.error
    assert [inode(fd) for fd in received.fds] == [inode(sent)]


def test_peer_credentials_of_a_socketpair_are_this_process(pair):
    a, b = pair
    assert fdwire.peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())
    assert fdwire.peer_credentials(b) == (os.getpid(), os.getuid(), os.getgid())
