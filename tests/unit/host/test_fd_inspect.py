"""inspect_memfd(): only sealable memfds of the declared size are shared, and sealed."""

from __future__ import annotations

import fcntl
import os
import socket
import stat

import pytest

from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.host.fd_inspect import inspect_fd, inspect_memfd

SIZE = 8192


@pytest.fixture
def opened():
    """A list of fds the test opened; all closed at teardown."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def memfd(opened: list[int], size: int = SIZE, flags: int = os.MFD_ALLOW_SEALING) -> int:
    fd = os.memfd_create("test-fd-inspect", flags | os.MFD_CLOEXEC)
    opened.append(fd)
    os.ftruncate(fd, size)
    return fd


def read_only_reopen(opened: list[int], fd: int) -> int:
    ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    opened.append(ro)
    return ro


def a_pipe(opened, tmp_path):
    r, w = os.pipe()
    opened.extend([r, w])
    return r


def a_socket(opened, tmp_path):
    a, b = socket.socketpair()
    opened.extend([a.detach(), b.detach()])
    return opened[-2]


def a_directory(opened, tmp_path):
    opened.append(os.open(tmp_path, os.O_RDONLY))
    return opened[-1]


def a_regular_file(opened, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"\0" * SIZE)
    opened.append(os.open(path, os.O_RDWR))
    return opened[-1]


def an_eventfd(opened, tmp_path):
    opened.append(os.eventfd(0))
    return opened[-1]


def dev_null(opened, tmp_path):
    opened.append(os.open("/dev/null", os.O_RDWR))
    return opened[-1]


@pytest.mark.parametrize(
    "make, kind",
    [
        (a_pipe, "a pipe"),
        (a_socket, "a socket"),
        (a_directory, "a directory"),
        (a_regular_file, "a regular file"),
        (an_eventfd, "eventfd"),
        (dev_null, "/dev/null"),
    ],
    ids=["pipe", "socket", "directory", "regular-file", "eventfd", "dev-null"],
)
def test_an_fd_that_is_not_a_memfd_is_refused_naming_its_kind_and_the_fix(make, kind, opened, tmp_path):
    fd = make(opened, tmp_path)
    with pytest.raises(InvalidArgument) as raised:
        inspect_memfd(fd, 2, 0)
    message = raised.value.message
    assert message.startswith("fd 2 of the buffer")
    assert kind in message
    assert "not a memfd" in message
    assert "os.memfd_create(name, os.MFD_ALLOW_SEALING)" in message
    os.fstat(fd)  # the caller still owns the refused fd: it was not closed


def test_a_memfd_without_allow_sealing_is_refused_naming_mfd_allow_sealing(opened):
    fd = memfd(opened, flags=0)
    with pytest.raises(InvalidArgument, match=r"without sealing support.*MFD_ALLOW_SEALING"):
        inspect_memfd(fd, 0, SIZE)


def test_a_memfd_smaller_than_the_declared_size_is_refused_naming_both_sizes(opened):
    fd = memfd(opened, size=100)
    with pytest.raises(InvalidArgument, match="memfd of 100 bytes, smaller than the declared size 4096"):
        inspect_memfd(fd, 0, 4096)


def test_a_good_memfd_is_accepted_with_its_size_and_writable(opened):
    fd = memfd(opened)
    buffer_fd = inspect_memfd(fd, 0, 4096)
    assert (buffer_fd.fd, buffer_fd.size, buffer_fd.writable) == (fd, SIZE, True)


def test_an_accepted_memfd_is_sealed_against_shrink_and_grow(opened):
    fd = memfd(opened)
    inspect_memfd(fd, 0, SIZE)
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK
    assert seals & fcntl.F_SEAL_GROW
    with pytest.raises(PermissionError):
        os.ftruncate(fd, SIZE // 2)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, SIZE * 2)
    assert os.fstat(fd).st_size == SIZE


def test_a_read_only_reopen_of_a_sealed_memfd_is_accepted_not_writable(opened):
    fd = memfd(opened)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    ro = read_only_reopen(opened, fd)
    buffer_fd = inspect_memfd(ro, 0, SIZE)
    assert (buffer_fd.fd, buffer_fd.size, buffer_fd.writable) == (ro, SIZE, False)


def test_a_read_only_fd_of_an_unsealed_memfd_is_refused_with_how_to_seal_it(opened):
    # The kernel adds seals only through a writable fd.
    ro = read_only_reopen(opened, memfd(opened))
    with pytest.raises(InvalidArgument) as raised:
        inspect_memfd(ro, 0, SIZE)
    assert "read-only fd" in raised.value.message and "F_ADD_SEALS" in raised.value.message
    assert "MFD_ALLOW_SEALING" not in raised.value.message


def test_an_accepted_memfd_is_writable_by_its_owner_only(opened):
    fd = memfd(opened)
    assert stat.S_IMODE(os.fstat(fd).st_mode) & 0o022  # a memfd starts 0777
    inspect_memfd(fd, 0, SIZE)
    assert stat.S_IMODE(os.fstat(fd).st_mode) & 0o022 == 0


# --- dma-bufs (buffers offered as dmabuf) ------------------------------------------------


@pytest.mark.parametrize(
    "make, kind",
    [(a_pipe, "a pipe"), (a_regular_file, "a regular file"), (dev_null, "/dev/null")],
    ids=["pipe", "regular-file", "dev-null"],
)
def test_an_fd_that_is_not_a_dma_buf_is_refused_for_dmabuf_offers(make, kind, opened, tmp_path):
    fd = make(opened, tmp_path)
    with pytest.raises(InvalidArgument) as raised:
        inspect_fd(fd, 0, "dmabuf")
    assert kind in raised.value.message and "not a dma-buf" in raised.value.message
    assert "bufbroker.dmabuf.heap_alloc()" in raised.value.message
    os.fstat(fd)  # still the caller's


def test_a_memfd_is_refused_for_dmabuf_offers_naming_the_types_that_take_one(opened):
    with pytest.raises(InvalidArgument, match=r"is a memfd, not a dma-buf.*offer memfd, segments or udmabuf"):
        inspect_fd(memfd(opened), 0, "dmabuf")


def test_memfd_kind_keeps_every_memfd_check(opened):
    fd = memfd(opened, flags=0)
    with pytest.raises(InvalidArgument, match="without sealing support"):
        inspect_fd(fd, 0, "memfd")


def test_an_accepted_memfd_records_its_seals(opened):
    buffer_fd = inspect_fd(memfd(opened), 0, "memfd")
    assert buffer_fd.kind == "memfd"
    assert buffer_fd.seals & (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) == fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def test_an_accepted_memfd_is_sealed_so_no_importer_can_add_seals_and_it_is_accepted_again(opened):
    fd = memfd(opened)
    first = inspect_memfd(fd, 0, SIZE)
    assert first.seals & fcntl.F_SEAL_SEAL and not first.seals & fcntl.F_SEAL_WRITE  # udmabuf needs no write seal
    with pytest.raises(PermissionError):
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, 0x0010)  # F_SEAL_FUTURE_WRITE would lock the exporter out
    again = inspect_memfd(fd, 0, SIZE)  # a second buffer (or a re-registration) of the same memfd
    assert again.seals == first.seals and again.file_id == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
    os.pwrite(fd, b"still writable", 0)
