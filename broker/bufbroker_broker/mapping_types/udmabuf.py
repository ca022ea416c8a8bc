"""udmabuf: a real kernel dma-buf the broker builds from memfd extents.

What drivers (DRM, V4L2, VA-API, Vulkan) import is a dma-buf; /dev/udmabuf
turns pages of a memfd into one, without copying. The broker builds one
udmabuf per buffer (and per extent list) on the first map, keeps it for
later maps (``Backing.kept``), and the registry closes it when the buffer is
revoked or moved. Importers keep the copies of the fd they were sent, as
with any fd.

The kernel's rules (drivers/dma-buf/udmabuf.c): each memfd must be sealed
with F_SEAL_SHRINK (the broker seals every memfd) and not with F_SEAL_WRITE
or F_SEAL_FUTURE_WRITE; offsets and sizes are whole pages; the total is at
most the module's ``size_limit_mb`` and the list at most ``list_limit``
extents. A udmabuf fd is always O_RDWR, so the type is offered only where
the exporter allows writes explicitly (``ACCESS_READ_WRITE``: the default
offer is read-only, _access.py); a ``read`` importer is told (handle
access) to map it read-only, which the kernel cannot enforce for it.

``match`` reads the device's availability and limits from ``ctx.host``
(probed once, host/probe.py); only ``map`` touches the device
(host/udmabuf.py), to build the dma-buf.
"""

from __future__ import annotations

import fcntl
import mmap
from collections.abc import Sequence
from typing import NamedTuple

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing
from bufbroker_broker.core.errors import FailedPrecondition
from bufbroker_broker.core.host_facts import HostFacts
from bufbroker_broker.core.mapping_type import MapResult, MatchContext, Matched, MatchResult, SoftMismatch
from bufbroker_broker.host.udmabuf import udmabuf_create
from bufbroker_broker.mapping_types import _access
from bufbroker_broker.mapping_types._extents import normalise_extents

PAGE = mmap.PAGESIZE

F_SEAL_FUTURE_WRITE = 0x0010  # not in Python's fcntl module
WRITE_SEALS = fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE

# (fd index, offset, length) of each extent, in order.
Extents = tuple[tuple[int, int, int], ...]


class UdmabufParams(NamedTuple):
    """The access the importer is told to map with, the extents, and the device match found usable."""

    access: pb.Access
    extents: Extents
    device: str


def round_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


class UdmabufType:
    name = "udmabuf"
    description = "a kernel dma-buf the broker builds from memfd extents with /dev/udmabuf (zero-copy)"
    offer_message = pb.UdmabufOffer
    match_message = pb.UdmabufMatch
    handle_message = pb.UdmabufHandle
    fd_kind = "memfd"

    def host_support(self, host: HostFacts) -> tuple[bool, str]:
        """Can this broker open /dev/udmabuf? (False, why) if not."""
        return host.udmabuf.available, host.udmabuf.reason

    def check_offer(self, offer: pb.UdmabufOffer, fd_sizes: Sequence[int], size: int) -> pb.UdmabufOffer:
        _access.check_access_value(offer.max_access, "udmabuf offer")
        normalised = pb.UdmabufOffer(max_access=offer.max_access)
        normalised.extents.extend(normalise_extents(offer.extents, fd_sizes, size, "udmabuf"))
        return normalised

    def check_match(self, match: pb.UdmabufMatch) -> pb.UdmabufMatch:
        _access.check_access_value(match.access, "udmabuf match")
        return match

    def match(self, offer: pb.UdmabufOffer, match: pb.UdmabufMatch, ctx: MatchContext) -> MatchResult:
        return self.match_offered_as(self.name, offer, match, ctx)

    def match_offered_as(
        self, offered_as: str, offer: pb.UdmabufOffer, match: pb.UdmabufMatch, ctx: MatchContext
    ) -> MatchResult:
        """:meth:`match` for an offer the exporter made as type ``offered_as`` (a converter's source)."""
        udmabuf = ctx.host.udmabuf
        if not udmabuf.available:
            return SoftMismatch(f"udmabuf unavailable: {udmabuf.reason}")
        used = sorted({e.fd_index for e in offer.extents})
        if not all(ctx.fd_writable[i] for i in used if i < len(ctx.fd_writable)):
            return SoftMismatch("access: the exporter's memfd is read-only, and a udmabuf is always mappable writable")
        if _access.offered(offer.max_access) == _access.READ:
            return SoftMismatch(
                "access: a udmabuf is always mappable writable (the kernel cannot make it read-only for an "
                f"importer), and {_access.read_only_offer(offered_as, offer.max_access, 'share it as udmabuf')}"
            )
        if ctx.dry_run:
            return Matched()  # no buffer behind it: nothing below can be checked
        for i in used:
            seals = ctx.fd_seals[i] if i < len(ctx.fd_seals) else 0
            if seals & WRITE_SEALS:
                return SoftMismatch(
                    f"udmabuf: fd {i} is sealed against writes, and the kernel builds udmabufs only of writable memfds"
                )
        last = len(offer.extents) - 1
        for n, extent in enumerate(offer.extents):
            if extent.offset % PAGE:
                return SoftMismatch(
                    f"udmabuf: extent {n} starts at byte {extent.offset}, not at a page boundary ({PAGE} bytes)"
                )
            if n < last and extent.length % PAGE:
                return SoftMismatch(
                    f"udmabuf: extent {n} is {extent.length} bytes; every extent but the last must be whole pages "
                    f"({PAGE} bytes)"
                )
            if n == last and extent.offset + round_up(extent.length) > ctx.fd_sizes[extent.fd_index]:
                return SoftMismatch(
                    f"udmabuf: extent {n} ends inside a page that runs past the end of fd {extent.fd_index} "
                    f"({ctx.fd_sizes[extent.fd_index]} bytes); make the memfd a multiple of {PAGE} bytes"
                )
        limit_mb = udmabuf.size_limit_mb
        total = sum(round_up(e.length) for e in offer.extents)
        if total > limit_mb << 20:
            return SoftMismatch(
                f"udmabuf: the buffer is {total} bytes, over the kernel's udmabuf size_limit_mb ({limit_mb} MiB)"
            )
        if len(offer.extents) > udmabuf.list_limit:
            return SoftMismatch(
                f"udmabuf: {len(offer.extents)} extents, over the kernel's udmabuf list_limit ({udmabuf.list_limit})"
            )
        return Matched()

    def finish(self, offer: pb.UdmabufOffer, match: pb.UdmabufMatch, ctx: MatchContext) -> UdmabufParams:
        extents = tuple((e.fd_index, e.offset, e.length) for e in offer.extents)
        return UdmabufParams(_access.requested(match.access), extents, ctx.host.udmabuf.device)

    def map(self, backing: Backing, params: UdmabufParams) -> MapResult:
        """The buffer's udmabuf for these extents, built on the first map and kept for later ones."""
        fd = backing.kept.get(params.extents)
        retained = []
        if fd is None:
            fd = backing.kept[params.extents] = self._build(backing, params)
            retained = [fd]
        handle = pb.UdmabufHandle(size=sum(length for _, _, length in params.extents), access=params.access)
        return MapResult(handle, [fd], retained=retained)

    def _build(self, backing: Backing, params: UdmabufParams) -> int:
        items = []
        extents = params.extents
        for n, (fd_index, offset, length) in enumerate(extents):
            # The last extent may end inside a page (match checked the memfd has it).
            size = round_up(length) if n == len(extents) - 1 else length
            items.append((backing.fds[fd_index].fd, offset, size))
        try:
            return udmabuf_create(params.device, items)
        except OSError as error:
            raise FailedPrecondition(
                f"udmabuf: the kernel refused to build a dma-buf of {backing.label} from {len(items)} extent(s) "
                f"({error.strerror}): its memfds must be sealed F_SEAL_SHRINK and not F_SEAL_WRITE, its "
                "extents whole pages, its size within the module's size_limit_mb; attach accepting another "
                "type (e.g. memfd) to share it without udmabuf"
            ) from None

    def unmap(self, backing: Backing, params: UdmabufParams) -> None:
        """Nothing to release: the udmabuf stays for later maps until the backing goes away."""

    def describe(self) -> str:
        return self.description


UDMABUF = UdmabufType()
