"""dmabuf: a dma-buf fd the exporter made (a dma-heap, a GPU or camera driver).

The exporter registers the dma-buf fd itself (host/fd_inspect.py checks
it is one, through /proc/self/fdinfo: ``exp_name``, ``size``); importers
receive that same dma-buf. A dma-buf cannot be reopened read-only, so the
fd's own mode is what every importer gets: an offer limited to ``read``
(explicitly, or by default: write is granted only by ``ACCESS_READ_WRITE``)
needs an O_RDONLY fd.

An offer may name the PCI device whose memory backs the buffer and require
peer-to-peer DMA (device memory that only a peer device can reach, like
the kernel RFC's p2p check on SGT). Then a match must name its own device,
accept p2p, and be reachable over the PCIe topology the broker probed at
start (``ctx.host.pci``, core/host_facts.py); otherwise the pair is a soft
mismatch saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing
from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.host_facts import HostFacts, check_pci_address
from bufbroker_broker.core.mapping_type import MapResult, MatchContext, MatchResult, SoftMismatch
from bufbroker_broker.mapping_types import _access


class DmabufParams(NamedTuple):
    """The access the importer gets, the exporter's device (or empty) and whether it is p2p."""

    access: pb.Access
    device: str
    p2p: bool


def _device(address: str, what: str) -> str:
    if not address:
        return ""
    try:
        return check_pci_address(address)
    except ValueError as error:
        raise InvalidArgument(f"{what}: {error}") from None


class DmabufType:
    name = "dmabuf"
    description = "a dma-buf fd from the exporter (dma-heap or device memory), optionally p2p-only"
    offer_message = pb.DmabufOffer
    match_message = pb.DmabufMatch
    handle_message = pb.DmabufHandle
    fd_kind = "dmabuf"

    def host_support(self, host: HostFacts) -> tuple[bool, str]:
        """Always usable (exporters bring their dma-bufs); says which dma-heaps exist."""
        heaps = host.dma_heaps
        where = (
            f"dma-heaps here: {', '.join(heaps)}" if heaps else "no dma-heaps here (exporters need a driver's dma-bufs)"
        )
        return True, f"exporters pass dma-buf fds; {where}"

    def check_offer(self, offer: pb.DmabufOffer, fd_sizes: Sequence[int], size: int) -> pb.DmabufOffer:
        _access.check_access_value(offer.max_access, "dmabuf offer")
        if len(fd_sizes) != 1:
            raise InvalidArgument(f"a dmabuf buffer is one dma-buf fd; {len(fd_sizes)} fds were sent with it")
        device = _device(offer.device, "dmabuf offer device")
        if offer.requires_p2p and not device:
            raise InvalidArgument(
                "dmabuf offer requires p2p but names no device: set device to the PCI address whose "
                "memory backs the buffer (e.g. 0000:03:00.0)"
            )
        return pb.DmabufOffer(max_access=offer.max_access, device=device, requires_p2p=offer.requires_p2p)

    def check_match(self, match: pb.DmabufMatch) -> pb.DmabufMatch:
        _access.check_access_value(match.access, "dmabuf match")
        return pb.DmabufMatch(
            access=match.access, device=_device(match.device, "dmabuf match device"), accepts_p2p=match.accepts_p2p
        )

    def match(self, offer: pb.DmabufOffer, match: pb.DmabufMatch, ctx: MatchContext) -> MatchResult:
        writable = ctx.fd_writable[0]
        result = _access.match_access(self.name, offer.max_access, match.access, writable)
        if isinstance(result, SoftMismatch):
            return result
        if _access.offered(offer.max_access) == _access.READ and writable:
            limited = "the offer allows read only" if offer.max_access == _access.READ else "the default is read only"
            return SoftMismatch(
                f"access: {limited}, but the exporter's dma-buf fd is read-write and a dma-buf cannot be reopened "
                "read-only; export an O_RDONLY dma-buf fd for read-only sharing, or let importers write with "
                "allow_write=True or Dmabuf(access='read_write')"
            )
        if not offer.requires_p2p:
            return result
        where = f"the buffer is memory of device {offer.device}, reachable only by p2p DMA"
        if not match.device:
            return SoftMismatch(f"p2p: {where}; the importer names no device")
        if not match.accepts_p2p:
            return SoftMismatch(f"p2p: {where}; the importer's device {match.device} does not accept p2p")
        verdict = ctx.host.pci.p2p_reach(offer.device, match.device)
        if not verdict.reachable:
            return SoftMismatch(f"p2p: {verdict.reason}")
        return result

    def finish(self, offer: pb.DmabufOffer, match: pb.DmabufMatch, ctx: MatchContext) -> DmabufParams:
        return DmabufParams(_access.requested(match.access), offer.device, offer.requires_p2p)

    def map(self, backing: Backing, params: DmabufParams) -> MapResult:
        """The exporter's dma-buf itself (it cannot be reopened read-only)."""
        fd = backing.fds[0]
        handle = pb.DmabufHandle(
            size=backing.size,
            access=params.access,
            exp_name=fd.exp_name,
            exporter_device=params.device,
            p2p=params.p2p,
        )
        return MapResult(handle, [fd.fd])

    def unmap(self, backing: Backing, params: DmabufParams) -> None:
        """Nothing to release: the importer owns the fd it received."""

    def describe(self) -> str:
        return self.description


DMABUF = DmabufType()
