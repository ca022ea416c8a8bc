"""/dev/udmabuf: probing it, and building a dma-buf of memfd pages with it.

The udmabuf mapping type (mapping_types/udmabuf.py) holds the rules; this
module holds the device: whether it opens, the module's limits from sysfs,
and the UDMABUF_CREATE / UDMABUF_CREATE_LIST ioctls
(include/uapi/linux/udmabuf.h, drivers/dma-buf/udmabuf.c).
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Sequence

from bufbroker_broker.core.host_facts import UDMABUF_LIST_LIMIT, UDMABUF_SIZE_LIMIT_MB, UdmabufFacts

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_SIZE_LIMIT_MB",
    "UDMABUF_CREATE",
    "UDMABUF_CREATE_LIST",
    "module_parameter",
    "probe_udmabuf",
    "udmabuf_create",
]

UDMABUF_FLAGS_CLOEXEC = 0x01
_CREATE = struct.Struct("=IIQQ")  # struct udmabuf_create {memfd, flags, offset, size}
_CREATE_ITEM = struct.Struct("=IIQQ")  # struct udmabuf_create_item {memfd, __pad, offset, size}
_CREATE_LIST = struct.Struct("=II")  # struct udmabuf_create_list {flags, count, list[]}


def _iow(kind: str, number: int, size: int) -> int:
    return (1 << 30) | (size << 16) | (ord(kind) << 8) | number


UDMABUF_CREATE = _iow("u", 0x42, _CREATE.size)
UDMABUF_CREATE_LIST = _iow("u", 0x43, _CREATE_LIST.size)

DEFAULT_SIZE_LIMIT_MB = UDMABUF_SIZE_LIMIT_MB
DEFAULT_LIST_LIMIT = UDMABUF_LIST_LIMIT


def module_parameter(sysfs_root: str, name: str, default: int) -> int:
    """A udmabuf module parameter from SYSFS/module/udmabuf/parameters, or the kernel default."""
    try:
        with open(os.path.join(sysfs_root, "module", "udmabuf", "parameters", name)) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return default


def probe_udmabuf(dev_root: str = "/dev", sysfs_root: str = "/sys") -> UdmabufFacts:
    """Can this process open DEV/udmabuf, and with which limits? (Opens and closes it once.)"""
    device = os.path.join(dev_root, "udmabuf")
    size_limit_mb = module_parameter(sysfs_root, "size_limit_mb", DEFAULT_SIZE_LIMIT_MB)
    list_limit = module_parameter(sysfs_root, "list_limit", DEFAULT_LIST_LIMIT)

    def facts(available: bool, reason: str) -> UdmabufFacts:
        return UdmabufFacts(available, reason, device, size_limit_mb, list_limit)

    if not os.path.exists(device):
        return facts(False, f"{device} does not exist (the kernel needs CONFIG_UDMABUF)")
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return facts(False, f"cannot open {device} as uid {os.geteuid()} ({error.strerror})")
    os.close(fd)
    return facts(True, f"{device} is usable")


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
        fd: int = fcntl.ioctl(device_fd, request, bytearray(arg), True)
        return fd
    finally:
        os.close(device_fd)
