"""The udmabuf type's rules (mapping_types/udmabuf.py), on host facts made for each case.

A match reads the host from ``ctx.host`` (probed once by host/probe.py), so
the rules are tested on facts: udmabuf missing, or "available" at /dev/null
(which opens, and whose ioctl the kernel refuses, which tests the map-time
error too). Probing the device is tests/unit/host/test_udmabuf.py's;
building real udmabufs is the kernel lane's (tests/kernel/).
"""

from __future__ import annotations

import fcntl
import mmap
import os

import pytest

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing, BufferFd
from bufbroker_broker.core.errors import FailedPrecondition
from bufbroker_broker.core.host_facts import HostFacts, UdmabufFacts
from bufbroker_broker.core.mapping_type import MatchContext, Matched, SoftMismatch, check_mapping_type
from bufbroker_broker.mapping_types.udmabuf import UDMABUF, UdmabufParams

PAGE = mmap.PAGESIZE
MISSING = "/dev/udmabuf does not exist (the kernel needs CONFIG_UDMABUF)"
NO_DEVICE = HostFacts(udmabuf=UdmabufFacts(False, MISSING))
# "Available": /dev/null opens, but is no udmabuf device.
DEV_NULL = HostFacts(udmabuf=UdmabufFacts(True, "/dev/null is usable", device="/dev/null"))


def ctx(fd_sizes=(4 * PAGE,), writable=(True,), seals=(), size=None, host=DEV_NULL, dry_run=False) -> MatchContext:
    size = fd_sizes[0] if size is None else size
    return MatchContext(0, 0, size, tuple(fd_sizes), tuple(writable), fd_seals=tuple(seals), host=host, dry_run=dry_run)


def offer(*extents: tuple[int, int, int], access: int = pb.ACCESS_READ_WRITE) -> pb.UdmabufOffer:
    """An offer of these extents; it allows writes (a udmabuf needs that) unless ``access`` says otherwise."""
    return pb.UdmabufOffer(
        extents=[pb.Extent(fd_index=i, offset=o, length=n) for i, o, n in extents], max_access=access
    )


def reason(result) -> str:
    assert isinstance(result, SoftMismatch), result
    return result.reason


def test_udmabuf_is_a_complete_mapping_type_with_host_support():
    check_mapping_type(UDMABUF)
    assert UDMABUF.host_support(DEV_NULL) == (True, "/dev/null is usable")
    assert UDMABUF.host_support(NO_DEVICE) == (False, MISSING)


def test_missing_device_is_a_soft_mismatch_saying_udmabuf_is_unavailable_and_why():
    result = UDMABUF.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx(host=NO_DEVICE))
    assert reason(result) == f"udmabuf unavailable: {MISSING}"


def test_match_reads_availability_from_the_host_facts_and_opens_no_device():
    # The facts say a device that does not exist is usable: a match that
    # looked for itself would refuse; it believes the probe.
    believed = HostFacts(udmabuf=UdmabufFacts(True, "usable", device="/nonexistent/udmabuf"))
    assert UDMABUF.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx(host=believed)) == Matched()


def test_unprobed_host_facts_offer_no_udmabuf():
    result = UDMABUF.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx(host=HostFacts()))
    assert reason(result) == "udmabuf unavailable: the broker did not probe this host"


def test_whole_page_extents_of_a_writable_memfd_match():
    assert UDMABUF.match(offer((0, 0, 2 * PAGE), (0, 3 * PAGE, PAGE)), pb.UdmabufMatch(), ctx()) == Matched()


def test_read_only_offer_is_a_soft_mismatch_because_a_udmabuf_is_always_writable():
    result = UDMABUF.match(offer((0, 0, PAGE), access=pb.ACCESS_READ), pb.UdmabufMatch(access=pb.ACCESS_READ), ctx())
    assert "always mappable writable" in reason(result)


@pytest.mark.parametrize("importer", [pb.ACCESS_READ, pb.ACCESS_READ_WRITE])
def test_default_offer_is_read_only_so_no_udmabuf_and_the_reason_says_how_to_allow_writes(importer):
    default = offer((0, 0, PAGE), access=pb.ACCESS_UNSPECIFIED)
    text = reason(UDMABUF.match(default, pb.UdmabufMatch(access=importer), ctx()))
    assert text.startswith("access: a udmabuf is always mappable writable")
    assert "the exporter offers udmabuf read-only (the default)" in text
    assert "allow_write=True or Udmabuf(access='read_write')" in text


def test_read_only_exporter_fd_is_a_soft_mismatch():
    assert "memfd is read-only" in reason(UDMABUF.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx(writable=(False,))))


def test_memfd_sealed_against_writes_is_a_soft_mismatch():
    sealed = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    result = UDMABUF.match(offer((0, 0, PAGE)), pb.UdmabufMatch(), ctx(seals=(sealed,)))
    assert "fd 0 is sealed against writes" in reason(result)


def test_extent_not_starting_on_a_page_is_a_soft_mismatch():
    assert "extent 0 starts at byte 100" in reason(UDMABUF.match(offer((0, 100, PAGE)), pb.UdmabufMatch(), ctx()))


def test_extent_before_the_last_must_be_whole_pages():
    result = UDMABUF.match(offer((0, 0, 100), (0, PAGE, PAGE)), pb.UdmabufMatch(), ctx())
    assert "extent 0 is 100 bytes; every extent but the last must be whole pages" in reason(result)


def test_last_extent_may_end_inside_a_page_the_memfd_has():
    assert UDMABUF.match(offer((0, 0, PAGE + 100)), pb.UdmabufMatch(), ctx(fd_sizes=(2 * PAGE,))) == Matched()
    result = UDMABUF.match(offer((0, 0, 100)), pb.UdmabufMatch(), ctx(fd_sizes=(100,)))
    assert "runs past the end of fd 0 (100 bytes)" in reason(result)


def test_buffer_over_the_modules_size_limit_is_a_soft_mismatch():
    small = HostFacts(udmabuf=UdmabufFacts(True, "usable", device="/dev/null", size_limit_mb=1))
    big = 2 << 20
    result = UDMABUF.match(offer((0, 0, big)), pb.UdmabufMatch(), ctx(fd_sizes=(big,), host=small))
    assert "over the kernel's udmabuf size_limit_mb (1 MiB)" in reason(result)
    assert UDMABUF.match(offer((0, 0, big)), pb.UdmabufMatch(), ctx(fd_sizes=(big,))) == Matched()  # 64 MiB


def test_more_extents_than_the_modules_list_limit_is_a_soft_mismatch():
    short = HostFacts(udmabuf=UdmabufFacts(True, "usable", device="/dev/null", list_limit=2))
    three = offer((0, 0, PAGE), (0, PAGE, PAGE), (0, 2 * PAGE, PAGE))
    assert "3 extents, over the kernel's udmabuf list_limit (2)" in reason(
        UDMABUF.match(three, pb.UdmabufMatch(), ctx(host=short))
    )


def test_dry_run_without_a_buffer_checks_only_availability_and_access():
    dry = MatchContext(0, 0, 0, (0,), (True,), host=DEV_NULL, dry_run=True)
    assert UDMABUF.match(offer((0, 100, 7)), pb.UdmabufMatch(), dry) == Matched()
    dry_without_device = MatchContext(0, 0, 0, (0,), (True,), host=NO_DEVICE, dry_run=True)
    assert "udmabuf unavailable" in reason(UDMABUF.match(offer((0, 100, 7)), pb.UdmabufMatch(), dry_without_device))


def test_a_buffer_size_of_zero_is_no_dry_run_the_flag_says_so():
    not_dry = MatchContext(0, 0, 0, (0,), (True,), host=DEV_NULL)
    assert "extent 0 starts at byte 100" in reason(UDMABUF.match(offer((0, 100, 7)), pb.UdmabufMatch(), not_dry))


def test_finish_fixes_the_access_asked_for_the_extents_and_the_probed_device():
    params = UDMABUF.finish(offer((0, 0, PAGE), (1, PAGE, 10)), pb.UdmabufMatch(access=pb.ACCESS_READ), ctx())
    assert params == UdmabufParams(pb.ACCESS_READ, ((0, 0, PAGE), (1, PAGE, 10)), "/dev/null")


@pytest.fixture
def backing():
    fd = os.memfd_create("test-udmabuf", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, 2 * PAGE)
    yield Backing(buffer_id=7, name="cam", size=2 * PAGE, fds=[BufferFd(fd, 2 * PAGE, True)])
    os.close(fd)


def test_map_error_from_the_kernel_is_a_failed_precondition_naming_the_buffer(backing):
    params = UdmabufParams(pb.ACCESS_READ, ((0, 0, PAGE),), "/dev/null")
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FailedPrecondition, match=r"refused to build a dma-buf of buffer 7 \(cam\)"):
        UDMABUF.map(backing, params)
    assert len(os.listdir("/proc/self/fd")) == before  # the device fd was closed
    assert backing.kept == {}  # nothing was kept
