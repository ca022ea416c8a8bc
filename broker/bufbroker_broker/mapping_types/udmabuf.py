"""udmabuf: a real kernel dma-buf the broker builds from memfd extents.

What drivers (DRM, V4L2, VA-API, Vulkan) import is a dma-buf; /dev/udmabuf
turns pages of a memfd into one, without copying. The broker builds one
udmabuf per buffer (and per extent list) on the first map, keeps it for
later maps, and closes it when the buffer is revoked or moved (``release``).
Importers keep the copies of the fd they were sent, as with any fd.

The kernel's rules (drivers/dma-buf/udmabuf.c): each memfd must be sealed
with F_SEAL_SHRINK (the broker seals every memfd) and not with F_SEAL_WRITE
or F_SEAL_FUTURE_WRITE; offsets and sizes are whole pages; the total is at
most the module's ``size_limit_mb`` and the list at most ``list_limit``
extents. A udmabuf fd is always O_RDWR, so the type is offered only where
the exporter allows writes; a ``read`` importer is told (handle access) to
map it read-only, which the kernel cannot enforce for it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Any, Sequence

from bufbroker.v1 import mapping_types_pb2 as pb

from bufbroker_broker.core.errors import FailedPrecondition
from bufbroker_broker.core.mapping_type import Matched, MapResult, MatchContext, MatchResult, SoftMismatch
from bufbroker_broker.mapping_types import _access
from bufbroker_broker.mapping_types._extents import normalise_extents

PAGE = mmap.PAGESIZE
DEVICE = "/dev/udmabuf"

# include/uapi/linux/udmabuf.h
UDMABUF_FLAGS_CLOEXEC = 0x01
_CREATE = struct.Struct("=IIQQ")        # struct udmabuf_create {memfd, flags, offset, size}
_CREATE_ITEM = struct.Struct("=IIQQ")   # struct udmabuf_create_item {memfd, __pad, offset, size}
_CREATE_LIST = struct.Struct("=II")     # struct udmabuf_create_list {flags, count, list[]}


def _iow(kind: str, number: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (ord(kind) << 8) | number


UDMABUF_CREATE = _iow("u", 0x42, _CREATE.size)
UDMABUF_CREATE_LIST = _iow("u", 0x43, _CREATE_LIST.size)

# Kernel defaults of the udmabuf module parameters.
DEFAULT_SIZE_LIMIT_MB = 64
DEFAULT_LIST_LIMIT = 1024

F_SEAL_FUTURE_WRITE = 0x0010   # not in Python's fcntl module
WRITE_SEALS = fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE


def round_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def module_parameter(sysfs_root: str, name: str, default: int) -> int:
    """A udmabuf module parameter from SYSFS/module/udmabuf/parameters, or the kernel default."""
    try:
        with open(os.path.join(sysfs_root, "module", "udmabuf", "parameters", name)) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return default


def udmabuf_create(device: str, items: Sequence[tuple[int, int, int]]) -> int:
    """Build a udmabuf of ``items`` (memfd, offset, size); return its fd (O_CLOEXEC).

    One item uses UDMABUF_CREATE, several UDMABUF_CREATE_LIST. The caller
    owns the returned fd. Raises OSError from open or the ioctl.
    """
    device_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    try:
        if len(items) == 1:
            memfd, offset, size = items[0]
            request, arg = UDMABUF_CREATE, _CREATE.pack(memfd, UDMABUF_FLAGS_CLOEXEC, offset, size)
        else:
            request = UDMABUF_CREATE_LIST
            arg = _CREATE_LIST.pack(UDMABUF_FLAGS_CLOEXEC, len(items)) + b"".join(
                _CREATE_ITEM.pack(memfd, 0, offset, size) for memfd, offset, size in items
            )
        # With a mutable buffer, ioctl() returns the call's result: the new fd.
        return fcntl.ioctl(device_fd, request, bytearray(arg), True)
    finally:
        os.close(device_fd)


class UdmabufType:
    name = "udmabuf"
    description = "a kernel dma-buf the broker builds from memfd extents with /dev/udmabuf (zero-copy)"
    offer_message = pb.UdmabufOffer
    match_message = pb.UdmabufMatch
    handle_message = pb.UdmabufHandle
    fd_kind = "memfd"

    def __init__(self, device: str = DEVICE) -> None:
        self.device = device

    def host_support(self) -> tuple[bool, str]:
        """Can this broker open /dev/udmabuf? (False, why) if not."""
        if not os.path.exists(self.device):
            return False, f"{self.device} does not exist (the kernel needs CONFIG_UDMABUF)"
        try:
            fd = os.open(self.device, os.O_RDWR | os.O_CLOEXEC)
        except OSError as error:
            return False, f"cannot open {self.device} as uid {os.geteuid()} ({error.strerror})"
        os.close(fd)
        return True, f"{self.device} is usable"

    def check_offer(self, offer: pb.UdmabufOffer, fd_sizes: Sequence[int], size: int) -> pb.UdmabufOffer:
        _access.check_access_value(offer.max_access, "udmabuf offer")
        normalised = pb.UdmabufOffer(max_access=offer.max_access)
        normalised.extents.extend(normalise_extents(offer.extents, fd_sizes, size, "udmabuf"))
        return normalised

    def check_match(self, match: pb.UdmabufMatch) -> pb.UdmabufMatch:
        _access.check_access_value(match.access, "udmabuf match")
        return match

    def match(self, offer: pb.UdmabufOffer, match: pb.UdmabufMatch, ctx: MatchContext) -> MatchResult:
        supported, why = self.host_support()
        if not supported:
            return SoftMismatch(f"udmabuf unavailable: {why}")
        if offer.max_access == _access.READ:
            return SoftMismatch("access: a udmabuf is always mappable writable, and the offer allows read only")
        used = sorted({e.fd_index for e in offer.extents})
        if not all(ctx.fd_writable[i] for i in used if i < len(ctx.fd_writable)):
            return SoftMismatch("access: the exporter's memfd is read-only, and a udmabuf is always mappable writable")
        if ctx.buffer_size == 0:
            return Matched()   # a dry run with no buffer behind it: nothing below can be checked
        for i in used:
            seals = ctx.fd_seals[i] if i < len(ctx.fd_seals) else 0
            if seals & WRITE_SEALS:
                return SoftMismatch(f"udmabuf: fd {i} is sealed against writes, and the kernel builds udmabufs only of writable memfds")
        last = len(offer.extents) - 1
        for n, extent in enumerate(offer.extents):
            if extent.offset % PAGE:
                return SoftMismatch(f"udmabuf: extent {n} starts at byte {extent.offset}, not at a page boundary ({PAGE} bytes)")
            if n < last and extent.length % PAGE:
                return SoftMismatch(
                    f"udmabuf: extent {n} is {extent.length} bytes; every extent but the last must be whole pages ({PAGE} bytes)"
                )
            if n == last and extent.offset + round_up(extent.length) > ctx.fd_sizes[extent.fd_index]:
                return SoftMismatch(
                    f"udmabuf: extent {n} ends inside a page that runs past the end of fd {extent.fd_index} "
                    f"({ctx.fd_sizes[extent.fd_index]} bytes); make the memfd a multiple of {PAGE} bytes"
                )
        limit_mb = module_parameter(ctx.sysfs_root, "size_limit_mb", DEFAULT_SIZE_LIMIT_MB)
        total = sum(round_up(e.length) for e in offer.extents)
        if total > limit_mb << 20:
            return SoftMismatch(f"udmabuf: the buffer is {total} bytes, over the kernel's udmabuf size_limit_mb ({limit_mb} MiB)")
        list_limit = module_parameter(ctx.sysfs_root, "list_limit", DEFAULT_LIST_LIMIT)
        if len(offer.extents) > list_limit:
            return SoftMismatch(f"udmabuf: {len(offer.extents)} extents, over the kernel's udmabuf list_limit ({list_limit})")
        return Matched()

    def finish(self, offer: pb.UdmabufOffer, match: pb.UdmabufMatch, ctx: MatchContext) -> Any:
        extents = tuple((e.fd_index, e.offset, e.length) for e in offer.extents)
        return (_access.requested(match.access), extents)

    def map(self, buffer: Any, attachment: Any) -> MapResult:
        """The buffer's udmabuf for these extents, built on the first map."""
        access, extents = attachment.map_params
        built = buffer.type_state.setdefault(self, {})
        fd = built.get(extents)
        retained = []
        if fd is None:
            fd = self._build(buffer, extents)
            built[extents] = fd
            retained = [fd]
        handle = pb.UdmabufHandle(size=sum(length for _, _, length in extents), access=access)
        return MapResult(handle, [fd], retained=retained)

    def _build(self, buffer: Any, extents: tuple[tuple[int, int, int], ...]) -> int:
        items = []
        for n, (fd_index, offset, length) in enumerate(extents):
            # The last extent may end inside a page (match checked the memfd has it).
            size = round_up(length) if n == len(extents) - 1 else length
            items.append((buffer.fds[fd_index].fd, offset, size))
        label = f"buffer {buffer.id}{' (' + buffer.name + ')' if buffer.name else ''}"
        try:
            return udmabuf_create(self.device, items)
        except OSError as error:
            raise FailedPrecondition(
                f"udmabuf: the kernel refused to build a dma-buf of {label} from {len(items)} extent(s) "
                f"({error.strerror}): its memfds must be sealed F_SEAL_SHRINK and not F_SEAL_WRITE, its "
                "extents whole pages, its size within the module's size_limit_mb; attach accepting another "
                "type (e.g. memfd) to share it without udmabuf"
            ) from None

    def unmap(self, buffer: Any, attachment: Any) -> None:
        """Nothing to release: the udmabuf stays for later maps until release()."""

    def release(self, buffer: Any) -> list[int]:
        """The udmabufs kept for ``buffer`` (the registry closes them)."""
        return list(buffer.type_state.get(self, {}).values())

    def describe(self) -> str:
        return self.description


UDMABUF = UdmabufType()
