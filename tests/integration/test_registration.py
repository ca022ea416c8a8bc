"""RegisterBuffer: fds are checked, sealed, accounted for, and never lost."""

from __future__ import annotations

import fcntl
import os
import socket
import time

import grpc
import pytest

import bufbroker
from bufbroker.v1 import mapping_types_pb2 as mt
from tests.raw_client import RawClient


def _pipe(tmp_path):
    r, w = os.pipe()
    os.close(w)
    return r


def _socket(tmp_path):
    a, b = socket.socketpair()
    b.close()
    return a.detach()


def _directory(tmp_path):
    return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)


def _regular_file(tmp_path):
    path = tmp_path / "plain-file"
    path.write_bytes(b"x" * 8192)
    return os.open(path, os.O_RDWR)


def _eventfd(tmp_path):
    return os.eventfd(0)


def _dev_null(tmp_path):
    return os.open("/dev/null", os.O_RDWR)


def _memfd_without_sealing(tmp_path):
    fd = os.memfd_create("no-seal")
    os.ftruncate(fd, 8192)
    return fd


BAD_FDS = {
    "pipe": (_pipe, "is a pipe, not a memfd"),
    "socket": (_socket, "is a socket, not a memfd"),
    "directory": (_directory, "is a directory, not a memfd"),
    "regular file": (_regular_file, "is a regular file, not a memfd"),
    "eventfd": (_eventfd, "not a memfd"),
    "/dev/null": (_dev_null, "/dev/null"),
    "memfd without sealing": (_memfd_without_sealing, "MFD_ALLOW_SEALING"),
}


@pytest.mark.parametrize("kind", list(BAD_FDS))
def test_bad_fd_kind_is_invalid_argument_and_the_broker_keeps_serving(broker, tmp_path, kind):
    make, expected = BAD_FDS[kind]
    fd = make(tmp_path)
    try:
        with broker.connect() as session:
            with pytest.raises(bufbroker.InvalidArgument) as raised:
                session.export(fd=fd)
            assert expected in raised.value.message
            assert "memfd" in raised.value.message  # says what to use instead
            good = session.export(4096)  # still serving
            assert good.id > 0
    finally:
        os.close(fd)
    assert broker.stats().buffers == 0


def test_memfd_smaller_than_declared_is_refused_naming_both_sizes(broker):
    fd = os.memfd_create("small", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4096)
    with RawClient(broker.socket_dir) as raw:
        raw.send_fds("n1", [fd])
        with pytest.raises(grpc.RpcError) as raised:
            raw.register("n1", 1 << 20)
    os.close(fd)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4096 bytes" in raised.value.details() and "1048576" in raised.value.details()


def test_registered_memfd_is_sealed_against_shrink_and_grow(broker):
    fd = os.memfd_create("seal-me", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 8192)
    with broker.connect() as session:
        session.export(fd=fd)
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 4096)  # an importer can never get SIGBUS from this
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 16384)
    os.close(fd)


def test_registration_without_offers_gets_the_compat_offer(broker):
    with broker.connect() as session:
        buffer = session.export(4096)
        assert list(buffer.info.offer_types) == ["memfd"]


def test_duplicate_name_is_refused_and_names_the_holder(broker):
    with broker.connect() as session:
        session.export(4096, name="unique")
        with pytest.raises(bufbroker.FailedPrecondition, match="'unique' is taken by buffer"):
            session.export(4096, name="unique")


@pytest.mark.parametrize(
    "offer, expected",
    [
        (
            mt.Offer(segments=mt.SegmentsOffer(extents=[mt.Extent(fd_index=0, offset=4096, length=4096)])),
            "past the end",
        ),
        (mt.Offer(segments=mt.SegmentsOffer(extents=[mt.Extent(fd_index=3, offset=0, length=1)])), "names fd 3"),
        (mt.Offer(), "is empty"),
        (mt.Offer(plugin=mt.PluginSpec(type_name="no-such-type")), "unknown mapping type 'no-such-type'"),
        (mt.Offer(memfd=mt.MemfdOffer(max_access=7)), "access 7"),
    ],
)
def test_bad_offer_is_invalid_argument_and_closes_the_fds(broker, offer, expected):
    fd = os.memfd_create("offer", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 4096)
    with RawClient(broker.socket_dir) as raw:
        raw.send_fds("n", [fd])
        with pytest.raises(grpc.RpcError) as raised:
            raw.register("n", 4096, offers=[offer])
    os.close(fd)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in raised.value.details()


def test_unclaimed_fds_are_closed_after_the_timeout(broker_factory):
    broker = broker_factory("--pending-fd-timeout", "0.3")
    fds = [os.memfd_create(f"orphan{i}", os.MFD_ALLOW_SEALING) for i in range(5)]
    with RawClient(broker.socket_dir) as raw:
        raw.send_fds("never-claimed", fds)
        for fd in fds:
            os.close(fd)
        time.sleep(0.2)
        assert broker.fd_count() >= broker.baseline_fds + 5  # the broker holds them for now
        deadline = time.monotonic() + 5
        while broker.stats().fds_expired < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broker.stats().fds_expired == 5
        with pytest.raises(grpc.RpcError) as raised:
            raw.register("never-claimed", 4096)  # too late
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_register_naming_a_nonce_never_sent_explains_the_fd_channel(broker):
    with RawClient(broker.socket_dir) as raw, pytest.raises(grpc.RpcError) as raised:
        raw.register("nothing-sent", 4096)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send them on the fd channel" in raised.value.details()


def test_malformed_fd_channel_messages_get_a_notice_and_lose_no_fd(broker):
    fd = os.memfd_create("garbage", os.MFD_ALLOW_SEALING)
    with RawClient(broker.socket_dir) as raw:
        raw.send_raw(b"\xff\xfe not protobuf \x00", [fd])
        notice = raw.receive().message.notice
        assert notice.code == "INVALID_ARGUMENT" and "malformed" in notice.message
        raw.send_fds("liar", [fd], fd_count=3)
        notice = raw.receive().message.notice
        assert notice.nonce == "liar" and "says 3 fds but 1 arrived" in notice.message
        raw.send_raw(b"")  # an empty datagram is not a close
        raw.send_fds("ok", [fd])  # the session still works
        os.ftruncate(fd, 4096)
        assert raw.register("ok", 4096).buffer.id > 0
    os.close(fd)


def test_truncated_control_message_is_reported_as_fds_dropped(broker_factory):
    # A broker that cannot hold many fds: it receives no more than its fd
    # budget leaves room for, the kernel drops the rest (MSG_CTRUNC), and the
    # sender is told which limit it met.
    broker = broker_factory(prefix=("prlimit", "--nofile=64:64", "--"))
    fds = [os.memfd_create(f"many{i}", os.MFD_ALLOW_SEALING) for i in range(100)]
    with RawClient(broker.socket_dir) as raw:
        raw.send_fds("too-many", fds)
        notice = raw.receive().message.notice
        assert notice.nonce == "too-many"
        assert notice.code == "RESOURCE_EXHAUSTED" and "fd_reserve" in notice.message, notice
        with pytest.raises(grpc.RpcError) as raised:
            raw.register("too-many", 4096)
        assert "fd_reserve" in raised.value.details()
    for fd in fds:
        os.close(fd)
