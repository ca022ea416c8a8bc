"""bufbroker.backing: the memfds behind an export, made by the SDK or duplicated from the caller's."""

from __future__ import annotations

import fcntl
import mmap
import os
import stat

import pytest

from bufbroker.backing import backing_fds, make_memfd


def test_make_memfd_rounds_up_to_whole_pages_and_can_be_sealed():
    fd = make_memfd("frames", 100)
    try:
        assert os.fstat(fd).st_size == mmap.PAGESIZE
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o644
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)  # refused without MFD_ALLOW_SEALING
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_GROW
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_a_size_gives_one_new_memfd_and_that_size():
    fds, size = backing_fds(5000, None, "export")
    assert size == 5000 and len(fds) == 1
    assert os.fstat(fds[0]).st_size == 2 * mmap.PAGESIZE
    os.close(fds[0])


def test_the_callers_fds_are_duplicated_and_the_size_read_from_fd_0():
    mine = [os.memfd_create("plane0", os.MFD_CLOEXEC), os.memfd_create("plane1", os.MFD_CLOEXEC)]
    os.ftruncate(mine[0], 3 * mmap.PAGESIZE)
    try:
        fds, size = backing_fds(None, mine, "export")
        assert size == 3 * mmap.PAGESIZE
        assert [os.fstat(fd).st_ino for fd in fds] == [os.fstat(fd).st_ino for fd in mine]
        assert set(fds).isdisjoint(mine), "the caller keeps its own fds"
        for fd in fds:
            os.close(fd)
        os.fstat(mine[0])  # still open
    finally:
        for fd in mine:
            os.close(fd)


@pytest.mark.parametrize(
    "size, fd, why",
    [
        (None, None, "exactly one of size="),
        (4096, 3, "exactly one of size="),
        (0, None, "size must be positive, not 0"),
        (None, [], "fd= needs at least one memfd"),
    ],
)
def test_bad_combinations_are_refused_before_any_fd_is_made(size, fd, why):
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(ValueError, match=why):
        backing_fds(size, fd, "export")
    assert len(os.listdir("/proc/self/fd")) == before
