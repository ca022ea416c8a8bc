"""Converters: hand an offer out as a type the exporter did not name.

negotiate() tries them only after every direct (offer, match) pair failed,
zero-copy ones before the copy, and the trace names the one it used
(``converter``). Each is a :class:`bufbroker_broker.core.mapping_type.Converter`:

- ``memfd->udmabuf``, ``segments->udmabuf``: the same pages as a kernel
  dma-buf (zero-copy; the udmabuf type's rules and its one dma-buf per
  buffer apply).
- ``segments->memfd``: zero-copy when the offer is one extent covering a
  whole memfd; the importer gets that memfd.
- ``segments->memfd-copy``: otherwise, for ``read`` importers that pass
  ``allow_copy``: at each map the broker copies the extents into a new
  memfd sealed against every change (a snapshot) and sends it read-only.
  The copy is O(size), so the broker runs this converter's map in a worker
  thread, never on its event loop (server/operations.py).
"""

from __future__ import annotations

import fcntl
import os
from typing import NamedTuple

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing
from bufbroker_broker.core.errors import ResourceExhausted
from bufbroker_broker.core.mapping_type import AnyMappingType, MapResult, MatchContext, MatchResult, SoftMismatch
from bufbroker_broker.host.fds import reopen_read_only
from bufbroker_broker.mapping_types import _access
from bufbroker_broker.mapping_types.memfd import MEMFD
from bufbroker_broker.mapping_types.segments import SEGMENTS
from bufbroker_broker.mapping_types.udmabuf import UDMABUF, Extents, UdmabufParams, round_up

COPY_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
# The most one map may copy (setting max_copy_bytes). The copy runs in a worker thread, a few at
# once (setting copy_workers), not on the event loop; the cap bounds each copy's time and memory.
DEFAULT_MAX_COPY_BYTES = 64 << 20


class ToUdmabuf:
    """memfd or segments -> udmabuf: the offer's extents as a udmabuf offer.

    Its maps are udmabuf's: the kept dma-buf is the udmabuf type's, shared
    with direct udmabuf attachments of the same extents.
    """

    target = UDMABUF
    copies = False

    def __init__(self, source: AnyMappingType) -> None:
        self.source = source
        self.name = f"{source.name}->udmabuf"

    def _as_udmabuf(self, offer: pb.MemfdOffer | pb.SegmentsOffer, ctx: MatchContext) -> pb.UdmabufOffer:
        converted = pb.UdmabufOffer(max_access=offer.max_access)
        if isinstance(offer, pb.SegmentsOffer):
            converted.extents.extend(offer.extents)
        else:  # the memfd type is fd 0, the buffer's size
            converted.extents.add(fd_index=0, offset=0, length=ctx.buffer_size)
        return converted

    def match(self, offer: pb.MemfdOffer | pb.SegmentsOffer, match: pb.UdmabufMatch, ctx: MatchContext) -> MatchResult:
        return UDMABUF.match_offered_as(self.source.name, self._as_udmabuf(offer, ctx), match, ctx)

    def finish(
        self, offer: pb.MemfdOffer | pb.SegmentsOffer, match: pb.UdmabufMatch, ctx: MatchContext
    ) -> UdmabufParams:
        return UDMABUF.finish(self._as_udmabuf(offer, ctx), match, ctx)

    def map(self, backing: Backing, params: UdmabufParams) -> MapResult:
        return UDMABUF.map(backing, params)

    def unmap(self, backing: Backing, params: UdmabufParams) -> None:
        UDMABUF.unmap(backing, params)


class WholeMemfdParams(NamedTuple):
    """segments->memfd: the access the importer gets, the memfd and the length it shows."""

    access: pb.Access
    fd_index: int
    length: int


class SegmentsToMemfd:
    """segments -> memfd without a copy: one extent that is a whole memfd.

    "Whole" allows the tail of the extent's last page: an mmap of the
    extent shows the importer that page anyway.
    """

    name = "segments->memfd"
    source = SEGMENTS
    target = MEMFD
    copies = False

    def match(self, offer: pb.SegmentsOffer, match: pb.MemfdMatch, ctx: MatchContext) -> MatchResult:
        if len(offer.extents) != 1:
            return SoftMismatch(
                f"{len(offer.extents)} extents are not one whole memfd, so a memfd of them needs a copy"
            )
        extent = offer.extents[0]
        fd_size = ctx.fd_sizes[extent.fd_index] if extent.fd_index < len(ctx.fd_sizes) else 0
        if not ctx.dry_run and (extent.offset != 0 or round_up(extent.length) < fd_size):
            return SoftMismatch(
                f"the extent is bytes {extent.offset}..{extent.offset + extent.length} of fd {extent.fd_index}, "
                f"not all of its {fd_size} bytes, so a memfd of it needs a copy"
            )
        writable = ctx.fd_writable[extent.fd_index] if extent.fd_index < len(ctx.fd_writable) else False
        return _access.match_access(SEGMENTS.name, offer.max_access, match.access, writable)

    def finish(self, offer: pb.SegmentsOffer, match: pb.MemfdMatch, ctx: MatchContext) -> WholeMemfdParams:
        extent = offer.extents[0]
        return WholeMemfdParams(_access.requested(match.access), extent.fd_index, extent.length)

    def map(self, backing: Backing, params: WholeMemfdParams) -> MapResult:
        fd = backing.fds[params.fd_index].fd
        handle = pb.MemfdHandle(size=params.length, access=params.access)
        reopened = _access.fd_for_access(fd, params.access)
        if reopened is None:
            return MapResult(handle, [fd])
        return MapResult(handle, [reopened], temporary=[reopened])

    def unmap(self, backing: Backing, params: WholeMemfdParams) -> None:
        """Nothing to release: the importer owns the fd it received."""


class SegmentsToMemfdCopy:
    """segments -> memfd by copying, for read importers that allow it, of at most ``max_bytes``.

    ``copies`` is True, so the broker never calls ``map`` on its event loop:
    Operations runs it in a worker thread (a few at once) with a backing of
    duplicated fds, and the registry records the result on the loop. Its
    size is capped all the same: a larger buffer is refused at attach (and
    at map) with ResourceExhausted naming the setting, before anything is
    copied.
    """

    name = "segments->memfd-copy"
    source = SEGMENTS
    target = MEMFD
    copies = True

    def __init__(self, max_bytes: int = DEFAULT_MAX_COPY_BYTES) -> None:
        self.max_bytes = max_bytes

    def _check_size(self, total: int) -> None:
        if total > self.max_bytes:
            raise ResourceExhausted(
                f"{self.name}: a copy of {total} bytes; at most {self.max_bytes} (setting max_copy_bytes): "
                "accept segments (or udmabuf) to share without a copy, or ask the operator to raise max_copy_bytes"
            )

    def match(self, offer: pb.SegmentsOffer, match: pb.MemfdMatch, ctx: MatchContext) -> MatchResult:
        if _access.requested(match.access) == _access.READ_WRITE:
            return SoftMismatch(
                "a copy is only for read importers: the importer wants read_write, and its writes "
                "would not reach the exporter"
            )
        if not match.allow_copy:
            return SoftMismatch(
                "a memfd of these extents needs a copy at each map, and the importer did not allow one "
                "(bufbroker.Memfd(allow_copy=True))"
            )
        if not ctx.dry_run:  # a dry run's sizes are made up
            self._check_size(sum(e.length for e in offer.extents))
        return _access.match_access(SEGMENTS.name, offer.max_access, match.access, True)

    def finish(self, offer: pb.SegmentsOffer, match: pb.MemfdMatch, ctx: MatchContext) -> Extents:
        return tuple((e.fd_index, e.offset, e.length) for e in offer.extents)

    def map(self, backing: Backing, params: Extents) -> MapResult:
        """Copy the extents into a new sealed memfd; send it read-only.

        O(size) and blocking: the broker calls it in a worker thread. It
        reads only ``backing.fds`` and ``params`` and touches no broker state.
        """
        extents = params
        total = sum(length for _, _, length in extents)
        self._check_size(total)  # before any work
        try:
            copy = os.memfd_create(f"bufbroker-copy-{backing.buffer_id}", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
            try:
                os.ftruncate(copy, total)
                position = 0
                for fd_index, offset, length in extents:
                    _copy_range(backing.fds[fd_index].fd, offset, copy, position, length)
                    position += length
                fcntl.fcntl(copy, fcntl.F_ADD_SEALS, COPY_SEALS)
                readonly = reopen_read_only(copy)
            finally:
                os.close(copy)
        except OSError as error:
            raise ResourceExhausted(
                f"{self.name}: the broker could not copy the {total} bytes of buffer {backing.buffer_id} "
                f"({error.strerror or error}); map again later, or accept segments to share without a copy"
            ) from None
        return MapResult(pb.MemfdHandle(size=total, access=_access.READ), [readonly], temporary=[readonly])

    def unmap(self, backing: Backing, params: Extents) -> None:
        """Nothing to release: the copy went to the importer and is closed here."""


def _copy_range(source: int, offset: int, target: int, position: int, length: int) -> None:
    """Copy in the kernel (copy_file_range), falling back to pread/pwrite."""
    done = 0
    try:
        while done < length:
            copied = os.copy_file_range(source, target, length - done, offset + done, position + done)
            if copied == 0:
                break
            done += copied
    except OSError:
        pass  # e.g. EXDEV on old kernels: finish with plain reads and writes
    while done < length:
        chunk = os.pread(source, min(length - done, 1 << 20), offset + done)
        if not chunk:
            raise OSError(f"fd ended {length - done} bytes early while copying")
        os.pwrite(target, chunk, position + done)
        done += len(chunk)


MEMFD_TO_UDMABUF = ToUdmabuf(MEMFD)
SEGMENTS_TO_UDMABUF = ToUdmabuf(SEGMENTS)
SEGMENTS_TO_MEMFD = SegmentsToMemfd()
SEGMENTS_TO_MEMFD_COPY = SegmentsToMemfdCopy()

CONVERTERS = (MEMFD_TO_UDMABUF, SEGMENTS_TO_UDMABUF, SEGMENTS_TO_MEMFD, SEGMENTS_TO_MEMFD_COPY)
