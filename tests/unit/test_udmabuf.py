"""The udmabuf type's rules (broker/mapping_types/udmabuf.py) on this host.

This host has no /dev/udmabuf, so the soft mismatch "udmabuf unavailable"
is tested against the real device path. The rules that apply once the
device opens are tested with the type pointed at /dev/null (it opens, and
the kernel refuses its ioctl, which tests the map-time error too). Building
real udmabufs is the kernel lane's job (tests/kernel/).
"""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

import pytest

from bufbroker.v1 import mapping_types_pb2 as pb

from bufbroker_broker.core.errors import FailedPrecondition
from bufbroker_broker.core.mapping_type import Matched, MatchContext, SoftMismatch, check_mapping_type
from bufbroker_broker.core.registry import Attachment, Buffer, BufferFd, Session
from bufbroker_broker.mapping_types.udmabuf import (
    UDMABUF,
    UDMABUF_CREATE,
    UDMABUF_CREATE_LIST,
    UdmabufType,
)

PAGE = mmap.PAGESIZE
OPENS = UdmabufType(device="/dev/null")   # "available": opens, but is no udmabuf device


def ctx(fd_sizes=(4 * PAGE,), writable=(True,), seals=(), size=None, sysfs="/sys") -> MatchContext:
    size = fd_sizes[0] if size is None else size
    return MatchContext(0, 0, size, tuple(fd_sizes), tuple(writable), fd_seals=tuple(seals), sysfs_root=sysfs)


def offer(*extents: tuple[int, int, int], access: int = pb.ACCESS_UNSPECIFIED) -> pb.UdmabufOffer:
    return pb.UdmabufOffer(
        extents=[pb.Extent(fd_index=i, offset=o, length=n) for i, o, n in extents], max_access=access
    )


def reason(result) -> str:
    assert isinstance(result, SoftMismatch), result
    return result.reason


def test_udmabuf_is_a_complete_mapping_type_with_host_support_and_release():
    check_mapping_type(UDMABUF)
    assert callable(UDMABUF.host_support) and callable(UDMABUF.release)


def test_ioctl_numbers_match_the_kernel_uapi():
    # _IOW('u', 0x42, struct udmabuf_create) and _IOW('u', 0x43, struct udmabuf_create_list)
    assert (UDMABUF_CREATE, UDMABUF_CREATE_LIST) == (0x40187542, 0x40087543)


@pytest.mark.skipif(os.path.exists("/dev/udmabuf"), reason="this host has /dev/udmabuf (the kernel lane covers it)")
def test_missing_device_is_a_soft_mismatch_saying_udmabuf_is_unavailable():
    result = UDMABUF.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx())
    assert reason(result).startswith("udmabuf unavailable: /dev/udmabuf does not exist")
    assert UDMABUF.host_support()[0] is False


def test_device_that_cannot_be_opened_is_a_soft_mismatch_saying_why(tmp_path: Path):
    not_a_device = UdmabufType(device=str(tmp_path))   # a directory: open(O_RDWR) fails
    assert reason(not_a_device.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx())).startswith(
        f"udmabuf unavailable: cannot open {tmp_path}"
    )


def test_whole_page_extents_of_a_writable_memfd_match():
    assert OPENS.match(offer((0, 0, 2 * PAGE), (0, 3 * PAGE, PAGE)), pb.UdmabufMatch(), ctx()) == Matched()


def test_read_only_offer_is_a_soft_mismatch_because_a_udmabuf_is_always_writable():
    result = OPENS.match(offer((0, 0, PAGE), access=pb.ACCESS_READ), pb.UdmabufMatch(access=pb.ACCESS_READ), ctx())
    assert "always mappable writable" in reason(result)


def test_read_only_exporter_fd_is_a_soft_mismatch():
    assert "memfd is read-only" in reason(OPENS.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx(writable=(False,))))


def test_memfd_sealed_against_writes_is_a_soft_mismatch():
    sealed = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    result = OPENS.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx(seals=(sealed,)))
    assert "fd 0 is sealed against writes" in reason(result)


def test_extent_not_starting_on_a_page_is_a_soft_mismatch():
    assert "extent 0 starts at byte 100" in reason(OPENS.match(offer((0, 100, PAGE)), pb.UdmabufMatch(), ctx()))


def test_extent_before_the_last_must_be_whole_pages():
    result = OPENS.match(offer((0, 0, 100), (0, PAGE, PAGE)), pb.UdmabufMatch(), ctx())
    assert "extent 0 is 100 bytes; every extent but the last must be whole pages" in reason(result)


def test_last_extent_may_end_inside_a_page_the_memfd_has():
    assert OPENS.match(offer((0, 0, PAGE + 100)), pb.UdmabufMatch(), ctx(fd_sizes=(2 * PAGE,))) == Matched()
    result = OPENS.match(offer((0, 0, 100)), pb.UdmabufMatch(), ctx(fd_sizes=(100,)))
    assert "runs past the end of fd 0 (100 bytes)" in reason(result)


def test_buffer_over_the_modules_size_limit_is_a_soft_mismatch(tmp_path: Path):
    parameters = tmp_path / "module" / "udmabuf" / "parameters"
    parameters.mkdir(parents=True)
    (parameters / "size_limit_mb").write_text("1\n")
    big = 2 << 20
    result = OPENS.match(offer((0, 0, big)), pb.UdmabufMatch(), ctx(fd_sizes=(big,), sysfs=str(tmp_path)))
    assert "over the kernel's udmabuf size_limit_mb (1 MiB)" in reason(result)


def test_dry_run_without_a_buffer_checks_only_availability_and_access():
    dry = MatchContext(0, 0, 0, (0,), (True,))
    assert OPENS.match(offer((0, 100, 7)), pb.UdmabufMatch(), dry) == Matched()


def test_finish_fixes_the_access_asked_for_and_the_extents():
    params = OPENS.finish(offer((0, 0, PAGE), (1, PAGE, 10)), pb.UdmabufMatch(access=pb.ACCESS_READ), ctx())
    assert params == (pb.ACCESS_READ, ((0, 0, PAGE), (1, PAGE, 10)))


@pytest.fixture
def buffer():
    fd = os.memfd_create("test-udmabuf", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, 2 * PAGE)
    session = Session(id=1, token="t", pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
    yield Buffer(id=7, exporter=session, size=2 * PAGE, fds=[BufferFd(fd, 2 * PAGE, True)], offers=[], name="cam")
    os.close(fd)


def test_map_error_from_the_kernel_is_a_failed_precondition_naming_the_buffer(buffer):
    attachment = Attachment(9, buffer, buffer.exporter, OPENS, (pb.ACCESS_READ, ((0, 0, PAGE),)), (), pinned=False)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FailedPrecondition, match=r"refused to build a dma-buf of buffer 7 \(cam\)"):
        OPENS.map(buffer, attachment)
    assert len(os.listdir("/proc/self/fd")) == before   # the device fd was closed
    assert OPENS.release(buffer) == []   # nothing was kept
