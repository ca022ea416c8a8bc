"""Stream links on real SOCK_SEQPACKET socketpairs, with real memfds and eventfds as fences."""

from __future__ import annotations

import array
import asyncio
import os
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from bufbroker.streamlink import LinkClosed, LinkEnd, MalformedMessage
from bufbroker.v1 import stream_pb2 as pb


@pytest.fixture
def link():
    """(producer end, consumer end) of one link."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    producer, consumer = LinkEnd(a), LinkEnd(b)
    yield producer, consumer
    producer.close()
    consumer.close()


@pytest.fixture
def raw_link():
    """(raw socket, LinkEnd): the raw side sends whatever a broken or hostile peer might."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    end = LinkEnd(b)
    yield a, end
    a.close()
    end.close()


def open_fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def send_raw(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], ancillary)


# --- round trips -------------------------------------------------------------------------


def test_frame_round_trips_every_field(link):
    producer, consumer = link
    producer.send_frame(seq=2**40, slot=3, generation=7, meta=b"\x00meta\xff", timestamp_ns=123456789)
    got = consumer.receive()
    assert got.kind == "frame"
    frame = got.message.frame
    assert (frame.seq, frame.slot, frame.generation, frame.timestamp_ns, frame.meta, frame.fence_count) == (
        2**40,
        3,
        7,
        123456789,
        b"\x00meta\xff",
        0,
    )
    assert got.fds == []


def test_frame_timestamp_defaults_to_clock_monotonic_at_send(link):
    producer, consumer = link
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    producer.send_frame(seq=1, slot=0, generation=0)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert before <= consumer.receive().message.frame.timestamp_ns <= after


def test_release_round_trips_every_field(link):
    producer, consumer = link
    consumer.send_release(slot=2, seq=41, generation=3)
    got = producer.receive()
    assert got.kind == "release"
    release = got.message.release
    assert (release.slot, release.seq, release.generation, release.fence_count) == (2, 41, 3, 0)


def test_hello_reclaimed_and_bye_round_trip(link):
    producer, consumer = link
    hello = pb.LinkHello(
        protocol=pb.LINK_PROTOCOL_V1,
        role=pb.LINK_ROLE_PRODUCER,
        stream="camera",
        mode=pb.CONSUMER_MODE_LATEST,
        max_held=2,
        max_meta_bytes=4096,
        slot_count=4,
        next_seq=17,
        pid=os.getpid(),
    )
    producer.send_hello(hello)
    producer.send_reclaimed(slot=1, seq=9, generation=2, held_for_ns=2_500_000_000)
    producer.send_bye(pb.LINK_BYE_REASON_END_OF_STREAM, "producer stopped", last_seq=99)
    got = consumer.receive()
    assert (got.kind, got.message.hello) == ("hello", hello)
    got = consumer.receive()
    assert got.kind == "reclaimed"
    assert got.message.reclaimed == pb.Reclaimed(slot=1, seq=9, generation=2, held_for_ns=2_500_000_000)
    got = consumer.receive()
    assert got.kind == "bye"
    assert got.message.bye == pb.Bye(reason=pb.LINK_BYE_REASON_END_OF_STREAM, detail="producer stopped", last_seq=99)


def test_bye_detail_is_cut_to_what_the_peer_accepts():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with LinkEnd(a, max_meta_bytes=16) as sender, LinkEnd(b, max_meta_bytes=16) as receiver:
        sender.send_bye(pb.LINK_BYE_REASON_PROTOCOL_ERROR, "é" * 100)
        assert receiver.receive().message.bye.detail == "é" * 8


# --- fences --------------------------------------------------------------------------------


def test_fences_arrive_in_order_and_belong_to_the_receiver(link):
    producer, consumer = link
    memfd = os.memfd_create("slot-fence", os.MFD_CLOEXEC)
    eventfd = os.eventfd(0, os.EFD_CLOEXEC)
    producer.send_frame(seq=1, slot=0, generation=0, fences=[memfd, eventfd])
    memfd_inode = inode(memfd)
    os.close(memfd)  # the sender's copies are the sender's; closing them changes nothing for the receiver
    got = consumer.receive()
    try:
        assert got.message.frame.fence_count == 2
        received_memfd, received_eventfd = got.fds
        assert inode(received_memfd) == memfd_inode
        os.eventfd_write(eventfd, 5)  # the producer signals its fence ...
        assert os.eventfd_read(received_eventfd) == 5  # ... and the consumer's copy sees it
        assert os.get_inheritable(received_eventfd) is False, "received fds are close-on-exec"
    finally:
        os.close(eventfd)
        for fd in got.fds:
            os.close(fd)


def test_release_carries_release_fences(link):
    producer, consumer = link
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        consumer.send_release(slot=0, seq=1, generation=0, fences=[fence])
        got = producer.receive()
        assert got.message.release.fence_count == 1
        (received,) = got.fds
        os.eventfd_write(fence, 1)
        assert os.eventfd_read(received) == 1
        os.close(received)
    finally:
        os.close(fence)


def test_too_many_fences_are_refused_before_sending(link):
    producer, consumer = link
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with pytest.raises(ValueError, match="17 fences on one message; a link carries at most 16"):
            producer.send_frame(seq=1, slot=0, generation=0, fences=[fence] * 17)
    finally:
        os.close(fence)
    with pytest.raises(BlockingIOError):
        consumer.receive()


# --- end of link -------------------------------------------------------------------------


def test_peer_close_is_end_of_link(link):
    producer, consumer = link
    producer.send_frame(seq=1, slot=0, generation=0)
    producer.close()
    assert consumer.receive().kind == "frame", "what was sent before the close still arrives"
    with pytest.raises(LinkClosed, match="closed its end"):
        consumer.receive()
    with pytest.raises(LinkClosed):
        consumer.receive(timeout=None)


def test_peer_dying_with_messages_unread_is_end_of_link(link):
    producer, consumer = link
    producer.send_frame(seq=1, slot=0, generation=0)  # never read by the consumer
    consumer.send_release(slot=0, seq=1, generation=0)
    consumer.close()
    producer.receive()  # the release it sent
    with pytest.raises(LinkClosed):
        producer.receive()


def test_sending_to_a_closed_peer_raises_link_closed(link):
    producer, consumer = link
    consumer.close()
    with pytest.raises(LinkClosed, match="peer is gone"):
        producer.send_frame(seq=1, slot=0, generation=0)


# --- waiting -------------------------------------------------------------------------------


def test_receive_without_waiting_raises_blocking_io_error_and_fileno_wakes_select(link):
    producer, consumer = link
    with pytest.raises(BlockingIOError):
        consumer.receive()
    assert select.select([consumer], [], [], 0)[0] == []
    producer.send_release(slot=0, seq=1, generation=0)
    assert select.select([consumer], [], [], 1)[0] == [consumer]
    assert consumer.receive().kind == "release"


def test_receive_with_a_timeout_waits_then_raises_timeout_error(link):
    producer, consumer = link
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        consumer.receive(timeout=0.05)
    assert time.monotonic() - started >= 0.05


def test_receive_with_a_timeout_returns_what_arrives_while_it_waits(link):
    producer, consumer = link
    sender = threading.Timer(0.05, lambda: producer.send_frame(seq=9, slot=1, generation=0))
    sender.start()
    try:
        started = time.monotonic()
        got = consumer.receive(timeout=5.0)  # one blocking recvmsg under SO_RCVTIMEO
        assert got.message.frame.seq == 9
        assert time.monotonic() - started < 4.0
    finally:
        sender.join()
    # The socket's receive timeout does not leak into the other ways of receiving.
    with pytest.raises(BlockingIOError):
        consumer.receive()
    producer.send_frame(seq=10, slot=1, generation=0)
    assert consumer.receive(timeout=None).message.frame.seq == 10
    with pytest.raises(TimeoutError):
        consumer.receive(timeout=0.01)


def test_an_encoded_frame_goes_out_the_same_on_every_link():
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(3)]
    producers = [LinkEnd(a) for a, _ in pairs]
    consumers = [LinkEnd(b) for _, b in pairs]
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        data = producers[0].encode_frame(seq=5, slot=2, generation=1, meta=b"m", fence_count=1, timestamp_ns=77)
        for producer in producers:
            producer.send_encoded(data, [fence])
        for consumer in consumers:
            got = consumer.receive()
            frame = got.message.frame
            assert (frame.seq, frame.slot, frame.generation, frame.meta, frame.timestamp_ns) == (5, 2, 1, b"m", 77)
            assert len(got.fds) == 1
            os.close(got.fds[0])
        with pytest.raises(ValueError, match="exceeds the link's limit"):
            producers[0].encode_frame(seq=6, slot=0, generation=1, meta=b"m" * 4097)
    finally:
        os.close(fence)
        for end in producers + consumers:
            end.close()


def test_link_end_refuses_a_socket_that_is_not_seqpacket():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, pytest.raises(ValueError, match="SOCK_SEQPACKET"):
        LinkEnd(a)


# --- bad datagrams -------------------------------------------------------------------------


def frame_bytes(fence_count: int, meta: bytes = b"") -> bytes:
    frame = pb.Frame(seq=1, slot=0, generation=0, meta=meta, fence_count=fence_count)
    data: bytes = pb.LinkMessage(frame=frame).SerializeToString()
    return data


BAD_DATAGRAMS = [
    pytest.param(b"\xff\xff\xff", 1, "not a LinkMessage", id="garbage"),
    pytest.param(b"", 1, "empty datagram carrying fds", id="empty-with-fds"),
    pytest.param(b"\x98\x06\x01", 1, "no kind set", id="no-kind"),
    pytest.param(frame_bytes(fence_count=2), 1, "announcing 2 fences but carrying 1 fds", id="too-few-fds"),
    pytest.param(frame_bytes(fence_count=0), 2, "announcing 0 fences but carrying 2 fds", id="undeclared-fds"),
    pytest.param(
        pb.LinkMessage(hello=pb.LinkHello(stream="s")).SerializeToString(),
        1,
        "a hello carrying 1 fds",
        id="fds-on-hello",
    ),
    pytest.param(
        frame_bytes(1, b"m" * 4097), 1, "frame meta of 4097 bytes over the limit of 4096", id="meta-over-limit"
    ),
    pytest.param(frame_bytes(1, b"m" * 8000), 1, "a datagram longer than 4224 bytes", id="datagram-over-limit"),
    pytest.param(frame_bytes(20), 20, "more than 16 fds on one datagram", id="ancillary-truncated"),
]


@pytest.mark.parametrize("data, fd_count, why", BAD_DATAGRAMS)
def test_bad_datagrams_are_refused_and_their_fds_closed(raw_link, data, fd_count, why):
    sock, end = raw_link
    baseline = open_fd_count()
    fences = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(fd_count)]
    send_raw(sock, data, fences)
    for fd in fences:
        os.close(fd)
    with pytest.raises(MalformedMessage, match=why):
        end.receive()
    assert open_fd_count() == baseline, "a refused datagram leaked an fd"
    # The link is still usable: the next good message arrives.
    send_raw(sock, pb.LinkMessage(release=pb.Release(slot=1, seq=2)).SerializeToString(), [])
    assert end.receive().message.release.seq == 2


def test_oversize_meta_is_refused_before_sending(link):
    producer, consumer = link
    with pytest.raises(ValueError, match="meta of 4097 bytes exceeds the link's limit of 4096"):
        producer.send_frame(seq=1, slot=0, generation=0, meta=b"m" * 4097)
    producer.send_frame(seq=1, slot=0, generation=0, meta=b"m" * 4096)
    assert len(consumer.receive().message.frame.meta) == 4096


def test_meta_limit_is_per_link():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with LinkEnd(a, max_meta_bytes=8192) as sender, LinkEnd(b, max_meta_bytes=64) as receiver:
        sender.send_frame(seq=1, slot=0, generation=0, meta=b"m" * 65)
        with pytest.raises(MalformedMessage, match="over the limit of 64"):
            receiver.receive()


def test_a_good_stream_of_messages_leaves_no_fd_behind(link):
    producer, consumer = link
    baseline = open_fd_count()
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    for seq in range(1, 200):
        producer.send_frame(seq=seq, slot=seq % 4, generation=0, fences=[fence])
        got = consumer.receive()
        assert got.message.frame.seq == seq
        for fd in got.fds:
            os.close(fd)
        consumer.send_release(slot=seq % 4, seq=seq, generation=0)
        assert producer.receive().message.release.seq == seq
    os.close(fence)
    assert open_fd_count() == baseline


# --- the cost of a link, printed (behaviour is tested above; speed lives in bench/) ------------

ECHO_CHILD = textwrap.dedent(
    """
    import os, socket, sys
    sock = socket.socket(fileno=int(sys.argv[2]))
    if sys.argv[1] == "raw":
        while data := sock.recv(16):
            sock.send(data)
    else:
        from bufbroker.streamlink import LinkClosed, LinkEnd
        end = LinkEnd(sock)
        try:
            while True:
                got = end.receive(timeout=None)
                frame = got.message.frame
                for fd in got.fds:
                    os.close(fd)
                end.send_release(frame.slot, frame.seq, frame.generation)
        except LinkClosed:
            pass
    """
)
ROUND_TRIPS = 10_000


def ping_pong(kind: str) -> float:
    """Seconds per round trip with an echoing child process on the other end."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = subprocess.Popen(
        [sys.executable, "-c", ECHO_CHILD, kind, str(theirs.fileno())], pass_fds=[theirs.fileno()], env=os.environ
    )
    theirs.close()
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        if kind == "raw":
            payload = bytes(16)
            mine.send(payload)
            mine.recv(16)  # the child is up
            started = time.perf_counter()
            for _ in range(ROUND_TRIPS):
                mine.sendmsg([payload])
                mine.recv(16)
        else:
            end = LinkEnd(mine)
            fences = [fence] if kind == "link+fence" else []
            end.send_frame(0, 0, 0)
            end.receive(timeout=None)
            started = time.perf_counter()
            for seq in range(1, ROUND_TRIPS + 1):
                end.send_frame(seq, seq & 3, 0, b"", fences)
                release = end.receive(timeout=None).message.release
                assert release.seq == seq
        elapsed = time.perf_counter() - started
    finally:
        mine.close()
        os.close(fence)
        child.wait(timeout=30)
    return elapsed / ROUND_TRIPS


def test_print_link_ping_pong_against_raw_seqpacket(capsys):
    raw = ping_pong("raw")
    linked = ping_pong("link")
    fenced = ping_pong("link+fence")
    with capsys.disabled():
        print(
            f"\n{ROUND_TRIPS} round trips, µs each: raw 16-byte sendmsg/recv {raw * 1e6:.1f}, "
            f"LinkEnd frame+release {linked * 1e6:.1f} ({linked / raw:.2f}x), "
            f"with one eventfd fence {fenced * 1e6:.1f} ({fenced / raw:.2f}x)"
        )


def test_asyncio_can_wait_on_a_link_through_its_fileno(link):
    producer, consumer = link

    async def receive_when_readable():
        loop = asyncio.get_running_loop()
        arrived: asyncio.Future[int] = loop.create_future()
        loop.add_reader(
            consumer.fileno(), lambda: arrived.done() or arrived.set_result(consumer.receive().message.frame.seq)
        )
        loop.call_later(0.01, producer.send_frame, 5, 1, 0)
        try:
            return await asyncio.wait_for(arrived, 5)
        finally:
            loop.remove_reader(consumer.fileno())

    assert asyncio.run(receive_when_readable()) == 5
