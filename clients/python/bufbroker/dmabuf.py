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

A dma-buf also carries implicit fences (pending device reads and writes).
``export_sync_file(fd, write)`` returns them as a sync_file, a pollable fd
(readable once signalled) that can travel as a stream frame's fence;
``import_sync_file(fd, sync_file, write)`` adds a sync_file's fence to the
buffer, so drivers that sync implicitly wait for it (Linux 6.0+).
Standard library only (``fcntl.ioctl``).
"""

from __future__ import annotations

import contextlib
import errno
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

# Implicit fences as sync_files (Linux 6.0; CONFIG_SYNC_FILE). Both structs are
# {__u32 flags; __s32 fd}: struct dma_buf_export_sync_file (fd is returned) and
# struct dma_buf_import_sync_file (fd is given).
_SYNC_FILE = struct.Struct("=Ii")
DMA_BUF_IOCTL_EXPORT_SYNC_FILE = _ioc(_READ | _WRITE, "b", 2, _SYNC_FILE.size)  # 0xc0086202
DMA_BUF_IOCTL_IMPORT_SYNC_FILE = _ioc(_WRITE, "b", 3, _SYNC_FILE.size)  # 0x40086203
SYNC_FILE_KERNEL = (6, 0)  # merged for 5.20, released as 6.0

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


def is_sync_file(fd: int) -> bool:
    """True when ``fd`` is a sync_file (what export_sync_file returns and import_sync_file takes)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:sync_file"
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


class SyncFileUnsupported(OSError):
    """This kernel cannot export or import a dma-buf's implicit fences (ENOTTY)."""


def _kernel_release() -> str:
    return os.uname().release


def _sync_file_error(error: OSError, fd: int, verb: str, ioctl: str) -> OSError:
    """A clear error for a failed EXPORT/IMPORT_SYNC_FILE on ``fd`` (keeps the errno)."""
    code = error.errno
    if code == errno.EBADF:
        return OSError(code, f"cannot {verb} a sync_file: fd {fd} is not open")
    if code == errno.ENOTTY:
        if not is_dmabuf(fd):
            return OSError(code, f"cannot {verb} a sync_file: fd {fd} is not a dma-buf (no exp_name in its fdinfo)")
        major, minor = SYNC_FILE_KERNEL
        return SyncFileUnsupported(
            code,
            f"cannot {verb} a sync_file: {ioctl} needs Linux {major}.{minor} or newer (first numbered 5.20) "
            f"built with CONFIG_SYNC_FILE; this kernel is {_kernel_release()}",
        )
    if code == errno.EINVAL and verb == "import":
        return OSError(code, f"cannot import a sync_file into dma-buf fd {fd}: the fence fd is not a sync_file")
    return OSError(code, f"cannot {verb} a sync_file ({ioctl} on fd {fd}): {os.strerror(code or 0)}")


def export_sync_file(dmabuf_fd: int, write: bool) -> int:
    """The dma-buf's implicit fences as a new sync_file fd (O_CLOEXEC; the caller owns it).

    ``write=False``: the fences a reader must wait for (the buffer's pending
    writes). ``write=True``: those a writer must wait for (all pending reads
    and writes). The sync_file polls readable once they have signalled; with
    no pending fence it is readable at once. Raises SyncFileUnsupported
    (ENOTTY) on kernels before 6.0 or without CONFIG_SYNC_FILE, OSError
    (ENOTTY) when ``dmabuf_fd`` is not a dma-buf, OSError (EBADF) when it is
    not open.
    """
    flags = DMA_BUF_SYNC_WRITE if write else DMA_BUF_SYNC_READ
    data = bytearray(_SYNC_FILE.pack(flags, -1))
    try:
        fcntl.ioctl(dmabuf_fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, data, True)
    except OSError as error:
        raise _sync_file_error(error, dmabuf_fd, "export", "DMA_BUF_IOCTL_EXPORT_SYNC_FILE") from None
    fd: int = _SYNC_FILE.unpack(data)[1]
    return fd


def import_sync_file(dmabuf_fd: int, sync_file_fd: int, write: bool) -> None:
    """Add the fences of ``sync_file_fd`` to the dma-buf's implicit fences (the caller keeps the fd).

    ``write=True`` adds them as write fences (readers and writers then wait
    for them), ``write=False`` as read fences (only writers wait). Errors as
    export_sync_file's, plus OSError (EINVAL) when ``sync_file_fd`` is not a
    sync_file.
    """
    flags = DMA_BUF_SYNC_WRITE if write else DMA_BUF_SYNC_READ
    try:
        fcntl.ioctl(dmabuf_fd, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, _SYNC_FILE.pack(flags, sync_file_fd))
    except OSError as error:
        raise _sync_file_error(error, dmabuf_fd, "import", "DMA_BUF_IOCTL_IMPORT_SYNC_FILE") from None
