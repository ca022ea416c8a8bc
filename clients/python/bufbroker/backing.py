"""The memory behind an export: memfds the SDK makes, or the caller's fds, and their size."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence

from bufbroker import dmabuf


def make_memfd(name: str, size: int) -> int:
    """A sealable memfd for a buffer of ``size`` bytes (the broker seals shrink and grow).

    The memfd is rounded up to whole pages (an mmap shows whole pages
    anyway), so the broker can also hand it out as a udmabuf. The caller
    owns the fd.
    """
    fd = os.memfd_create(name[:200], os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o644)  # only the owner may reopen it writable
        os.ftruncate(fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def backing_fds(size: int | None, fd: int | Sequence[int] | None, name: str) -> tuple[list[int], int]:
    """The fds to send for a buffer and its size: a new memfd, or dups of the caller's.

    Give exactly one of ``size`` (a memfd of that size is made) or ``fd`` (one
    fd or one per plane; they are duplicated, the caller keeps its own). The
    caller owns the returned fds. Raises ValueError for a bad combination.
    """
    if (size is None) == (fd is None):
        raise ValueError("give exactly one of size= (the SDK makes a memfd) or fd= (your memfd)")
    if size is not None:
        if size <= 0:
            raise ValueError(f"size must be positive, not {size}")
        return [make_memfd(name, size)], size
    given = [fd] if isinstance(fd, int) else list(fd or ())
    if not given:
        raise ValueError("fd= needs at least one memfd")
    fds = [os.dup(f) for f in given]
    return fds, dmabuf.fd_size(fds[0])  # a memfd's size, or a dma-buf's
