"""The dmabuf type's access and p2p rules, and the SDK's dma-buf ioctls (numbers and refusals).

Real dma-bufs (a dma-heap's) are the kernel lane's; probing the PCI topology
is tests/unit/host/test_pci.py's.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bufbroker import dmabuf
from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.host_facts import HostFacts, PciTopology
from bufbroker_broker.core.mapping_type import MatchContext, Matched, SoftMismatch
from bufbroker_broker.host.pci import probe_pci_topology
from bufbroker_broker.mapping_types.dmabuf import DMABUF
from tests.unit.host.test_pci import GPU, MISSING, NIC, NVME, REMOTE, build_sysfs

READ, READ_WRITE = pb.ACCESS_READ, pb.ACCESS_READ_WRITE


def ctx(writable: bool) -> MatchContext:
    return MatchContext(0, 0, 4096, (4096,), (writable,))


def test_ioctl_numbers_match_the_kernel_uapi():
    # _IOW('b', 0, struct dma_buf_sync) and _IOWR('H', 0, struct dma_heap_allocation_data)
    assert dmabuf.DMA_BUF_IOCTL_SYNC == 0x40086200
    assert dmabuf.DMA_HEAP_IOCTL_ALLOC == 0xC0184800


def test_read_write_offer_of_a_read_write_fd_serves_read_and_read_write_importers():
    offer = pb.DmabufOffer(max_access=READ_WRITE)
    for access in (READ, READ_WRITE):
        assert DMABUF.match(offer, pb.DmabufMatch(access=access), ctx(writable=True)) == Matched()


def test_default_offer_is_read_only_so_a_read_write_fd_matches_no_importer_and_says_how_to_allow_writes():
    for access in (READ, READ_WRITE):
        result = DMABUF.match(pb.DmabufOffer(), pb.DmabufMatch(access=access), ctx(writable=True))
        assert isinstance(result, SoftMismatch), access
        assert result.reason.startswith("access:")
        assert "allow_write=True or Dmabuf(access='read_write')" in result.reason
        if access == READ:  # even a reader: the broker cannot hand it a read-only dma-buf
            assert "the default is read only, but the exporter's dma-buf fd is read-write" in result.reason
            assert "export an O_RDONLY dma-buf fd" in result.reason


def test_default_offer_of_a_read_only_fd_serves_read_importers():
    assert DMABUF.match(pb.DmabufOffer(), pb.DmabufMatch(access=READ), ctx(writable=False)) == Matched()


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


# --- the dmabuf type's p2p rule --------------------------------------------------------


@pytest.fixture
def topology(tmp_path: Path) -> PciTopology:
    """The synthetic tree of tests/unit/host/test_pci.py, probed as the broker does at start."""
    return probe_pci_topology(build_sysfs(tmp_path / "sys"))


def p2p_ctx(topology: PciTopology, writable: bool = True) -> MatchContext:
    return MatchContext(1000, 1000, 4096, (4096,), (writable,), host=HostFacts(pci=topology))


def p2p_offer(device: str = GPU) -> pb.DmabufOffer:
    offer = pb.DmabufOffer(max_access=READ_WRITE, device=device, requires_p2p=True)
    return DMABUF.check_offer(offer, (4096,), 4096)


def p2p_match(device: str, accepts_p2p: bool = True) -> pb.DmabufMatch:
    return DMABUF.check_match(pb.DmabufMatch(device=device, accepts_p2p=accepts_p2p))


def test_p2p_offer_matches_an_importer_under_the_same_switch(topology):
    assert DMABUF.match(p2p_offer(), p2p_match(NIC), p2p_ctx(topology)) == Matched()


@pytest.mark.parametrize(
    "device, accepts, reason",
    [
        (REMOTE, True, "p2p: 0000:81:00.0 and 0000:03:00.0 are under different host bridges"),
        (NVME, True, "p2p: 0000:05:00.0 and 0000:03:00.0 share only the host bridge"),
        (MISSING, True, "p2p: device 0000:09:00.0 is not on this host"),
        (NIC, False, "the importer's device 0000:04:00.0 does not accept p2p"),
        ("", True, "the importer names no device"),
    ],
)
def test_p2p_offer_is_a_soft_mismatch_with_the_reason_when_unreachable(topology, device, accepts, reason):
    result = DMABUF.match(p2p_offer(), p2p_match(device, accepts), p2p_ctx(topology))
    assert isinstance(result, SoftMismatch)
    assert reason in result.reason


def test_offer_without_p2p_matches_any_importer_device(topology):
    offer = DMABUF.check_offer(pb.DmabufOffer(max_access=READ_WRITE, device=GPU), (4096,), 4096)
    assert DMABUF.match(offer, p2p_match(REMOTE, accepts_p2p=False), p2p_ctx(topology)) == Matched()


def test_p2p_offer_without_a_device_is_refused_at_registration():
    with pytest.raises(InvalidArgument, match="requires p2p but names no device"):
        DMABUF.check_offer(pb.DmabufOffer(requires_p2p=True), (4096,), 4096)


def test_bad_device_address_is_refused_at_registration_and_attach():
    with pytest.raises(InvalidArgument, match=r"dmabuf offer device: '\.\./x' is not a PCI address"):
        DMABUF.check_offer(pb.DmabufOffer(device="../x"), (4096,), 4096)
    with pytest.raises(InvalidArgument, match="dmabuf match device"):
        DMABUF.check_match(pb.DmabufMatch(device="gpu0"))


def test_p2p_match_reads_the_topology_probed_at_start_not_sysfs():
    # A topology no sysfs backs: the match must not look for one.
    gpu = ("pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:01.0", GPU)
    nic = ("pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:02.0", NIC)
    made_up = PciTopology("/nonexistent", {GPU: gpu, NIC: nic})
    assert DMABUF.match(p2p_offer(), p2p_match(NIC), p2p_ctx(made_up)) == Matched()
    result = DMABUF.match(p2p_offer(), p2p_match(NIC), p2p_ctx(PciTopology("/nonexistent")))
    assert isinstance(result, SoftMismatch) and "is not on this host" in result.reason


def test_host_support_lists_the_dma_heaps_the_probe_found():
    assert DMABUF.host_support(HostFacts(dma_heaps=("system",))) == (
        True,
        "exporters pass dma-buf fds; dma-heaps here: system",
    )
    supported, reason = DMABUF.host_support(HostFacts())
    assert supported and "no dma-heaps here" in reason
