"""Kernel dma-bufs from Python: allocate from a dma-heap, bracket CPU access.

A dma-buf may live in memory a device writes without the CPU's caches
knowing; the kernel's contract is that CPU access is bracketed by
``DMA_BUF_IOCTL_SYNC`` START and END, so the exporter can flush or
invalidate around it. ``cpu_access(fd)`` does that::

    fd = bufbroker.dmabuf.heap_alloc(1 << 20)          # /dev/dma_heap/system
    exported = session.export(fd=fd, offers=["dmabuf"])
    os.close(fd)                                         # the SDK sent a copy
    with exported.cpu_access(write=True) as view:
        view[:5] = b"hello"

Importers get the same bracketing from ``Mapping.cpu_access()``.
Standard library only (``fcntl.ioctl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from collections.abc import Iterator

HEAP_DIR = "/dev/dma_heap"


def _ioc(direction: int, kind: str, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | number


_WRITE, _READ = 1, 2

# include/uapi/linux/dma-buf.h
_SYNC = struct.Struct("=Q")  # struct dma_buf_sync {__u64 flags}
DMA_BUF_SYNC_READ = 1 << 0
DMA_BUF_SYNC_WRITE = 2 << 0
DMA_BUF_SYNC_RW = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE
DMA_BUF_SYNC_START = 0 << 2
DMA_BUF_SYNC_END = 1 << 2
DMA_BUF_IOCTL_SYNC = _ioc(_WRITE, "b", 0, _SYNC.size)

# include/uapi/linux/dma-heap.h
_HEAP_ALLOC = struct.Struct("=QIIQ")  # struct dma_heap_allocation_data {len, fd, fd_flags, heap_flags}
DMA_HEAP_IOCTL_ALLOC = _ioc(_READ | _WRITE, "H", 0, _HEAP_ALLOC.size)


def fdinfo(fd: int) -> dict[str, str]:
    """The ``key: value`` lines of /proc/self/fdinfo/FD (a dma-buf has exp_name and size)."""
    info: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}") as file:
        for line in file:
            key, sep, value = line.partition(":")
            if sep:
                info[key.strip()] = value.strip()
    return info


def is_dmabuf(fd: int) -> bool:
    """True when ``fd`` is a kernel dma-buf (its fdinfo names an exporter)."""
    try:
        return "exp_name" in fdinfo(fd)
    except OSError:
        return False


def fd_size(fd: int) -> int:
    """The size of a memfd or a dma-buf, without moving its file position."""
    if is_dmabuf(fd):
        return int(fdinfo(fd)["size"])
    return os.fstat(fd).st_size


def heap_names() -> list[str]:
    """The dma-heaps this kernel offers (``system``, ...); empty if none."""
    try:
        return sorted(os.listdir(HEAP_DIR))
    except OSError:
        return []


def heap_alloc(size: int, heap: str = "system") -> int:
    """Allocate ``size`` bytes from /dev/dma_heap/HEAP; return the dma-buf fd (O_RDWR, O_CLOEXEC).

    The caller owns the fd. Raises FileNotFoundError naming the heaps that
    exist when HEAP does not, OSError from the kernel otherwise.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, not {size}")
    path = os.path.join(HEAP_DIR, heap)
    try:
        heap_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        have = ", ".join(heap_names()) or "none: the kernel needs CONFIG_DMABUF_HEAPS_SYSTEM"
        raise FileNotFoundError(f"no dma-heap {path} (heaps here: {have})") from None
    try:
        # The kernel wants whole pages.
        length = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        data = bytearray(_HEAP_ALLOC.pack(length, 0, os.O_RDWR | os.O_CLOEXEC, 0))
        fcntl.ioctl(heap_fd, DMA_HEAP_IOCTL_ALLOC, data, True)
        fd: int = _HEAP_ALLOC.unpack(data)[1]
        return fd
    finally:
        os.close(heap_fd)


def sync(fd: int, flags: int) -> None:
    """One DMA_BUF_IOCTL_SYNC with ``flags`` (START or END, READ and/or WRITE)."""
    fcntl.ioctl(fd, DMA_BUF_IOCTL_SYNC, _SYNC.pack(flags))


@contextlib.contextmanager
def bracket(fd: int, write: bool = False) -> Iterator[None]:
    """SYNC START before the block and SYNC END after it (READ, or READ|WRITE)."""
    direction = DMA_BUF_SYNC_RW if write else DMA_BUF_SYNC_READ
    sync(fd, DMA_BUF_SYNC_START | direction)
    try:
        yield
    finally:
        sync(fd, DMA_BUF_SYNC_END | direction)


@contextlib.contextmanager
def cpu_access(fd: int, size: int | None = None, write: bool = False) -> Iterator[memoryview]:
    """Map a dma-buf and yield a view of it between SYNC START and END.

    The view is read-only unless ``write``; it is released (and the
    mapping closed) when the block ends, so do not keep it.
    """
    size = fd_size(fd) if size is None else size
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if write else 0)
    region = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
    view = memoryview(region) if write else memoryview(region).toreadonly()
    try:
        with bracket(fd, write):
            yield view
    finally:
        view.release()
        # If the caller kept a slice of the view, the pages stay mapped until it goes.
        with contextlib.suppress(BufferError):
            region.close()
