"""The dmabuf type's access rules and the SDK's dma-buf ioctls (numbers and refusals).

Real dma-bufs (a dma-heap's) are the kernel lane's; p2p reachability is in
test_pci.py.
"""

from __future__ import annotations

import os

import pytest

from bufbroker import dmabuf
from bufbroker.v1 import mapping_types_pb2 as pb

from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.mapping_type import Matched, MatchContext, SoftMismatch
from bufbroker_broker.mapping_types.dmabuf import DMABUF

READ, READ_WRITE = pb.ACCESS_READ, pb.ACCESS_READ_WRITE


def ctx(writable: bool) -> MatchContext:
    return MatchContext(0, 0, 4096, (4096,), (writable,))


def test_ioctl_numbers_match_the_kernel_uapi():
    # _IOW('b', 0, struct dma_buf_sync) and _IOWR('H', 0, struct dma_heap_allocation_data)
    assert dmabuf.DMA_BUF_IOCTL_SYNC == 0x40086200
    assert dmabuf.DMA_HEAP_IOCTL_ALLOC == 0xC0184800


def test_read_write_fd_serves_read_and_read_write_importers():
    for access in (READ, READ_WRITE):
        assert DMABUF.match(pb.DmabufOffer(), pb.DmabufMatch(access=access), ctx(writable=True)) == Matched()


def test_read_only_fd_refuses_a_read_write_importer():
    result = DMABUF.match(pb.DmabufOffer(), pb.DmabufMatch(access=READ_WRITE), ctx(writable=False))
    assert isinstance(result, SoftMismatch) and result.reason.startswith("access:")


def test_read_only_offer_of_a_read_write_fd_never_matches_because_a_dma_buf_cannot_be_reopened():
    result = DMABUF.match(pb.DmabufOffer(max_access=READ), pb.DmabufMatch(access=READ), ctx(writable=True))
    assert isinstance(result, SoftMismatch)
    assert "cannot be reopened read-only; export an O_RDONLY dma-buf fd" in result.reason
    assert DMABUF.match(pb.DmabufOffer(max_access=READ), pb.DmabufMatch(access=READ), ctx(writable=False)) == Matched()


def test_a_dmabuf_buffer_is_one_fd():
    with pytest.raises(InvalidArgument, match="one dma-buf fd; 2 fds"):
        DMABUF.check_offer(pb.DmabufOffer(), (4096, 4096), 4096)


def test_a_memfd_is_not_a_dma_buf_to_the_sdk():
    fd = os.memfd_create("test-dmabuf", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 100)
        assert dmabuf.is_dmabuf(fd) is False
        assert dmabuf.fd_size(fd) == 100
    finally:
        os.close(fd)


@pytest.mark.skipif(os.path.exists("/dev/dma_heap/system"), reason="this host has a system dma-heap")
def test_heap_alloc_names_the_heaps_there_are_when_the_heap_is_missing():
    with pytest.raises(FileNotFoundError, match=r"no dma-heap /dev/dma_heap/system \(heaps here: "):
        dmabuf.heap_alloc(4096)
