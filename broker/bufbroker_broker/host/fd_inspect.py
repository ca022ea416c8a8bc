"""Check that an fd a client sent is one the broker can share safely.

A buffer's fds are memfds (anonymous shared memory with sealing), at least
as large as declared; the broker then seals them against shrinking and
growing, so no importer can get SIGBUS from an exporter that truncates the
file under its mmap. A buffer offered as ``dmabuf`` is instead one kernel
dma-buf fd, recognised by its /proc/self/fdinfo (``exp_name``, ``size``);
a dma-buf's size is fixed for its life, so there is nothing to seal.
Which kind a registration needs follows from its offers
(:func:`bufbroker_broker.mapping_types.offers_fd_kind`).
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Sequence

from bufbroker_broker.core.backing import BufferFd
from bufbroker_broker.core.errors import InvalidArgument

MEMFD_HINT = "create it with os.memfd_create(name, os.MFD_ALLOW_SEALING) (the SDK's export(size=...) does)"
DMABUF_HINT = (
    "a dmabuf offer needs a dma-buf fd, from a dma-heap (bufbroker.dmabuf.heap_alloc()) or a device "
    "driver; offer memfd, segments or udmabuf to share a memfd"
)


def _kind(mode: int, fd: int) -> str:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if target.startswith("anon_inode:"):
        return f"an anonymous inode ({target.removeprefix('anon_inode:')})"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return f"a character device ({target or '?'})"
    if stat.S_ISBLK(mode):
        return "a block device"
    if not stat.S_ISREG(mode):
        return f"not a file ({target or '?'})"
    return "a regular file"


def inspect_memfd(fd: int, index: int, min_size: int = 0) -> BufferFd:
    """Validate fd number ``index`` of a registration and seal it.

    Returns its size and whether it is open for writing. Raises
    InvalidArgument naming the problem and the fix; the caller still owns
    (and must close) the fd either way.
    """
    where = f"fd {index} of the buffer"
    st = os.fstat(fd)
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if not stat.S_ISREG(st.st_mode) or not target.startswith("/memfd:"):
        raise InvalidArgument(f"{where} is {_kind(st.st_mode, fd)}, not a memfd; {MEMFD_HINT}")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as error:
        raise InvalidArgument(f"{where} does not support sealing ({error.strerror}); {MEMFD_HINT}") from None
    wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    if seals & wanted != wanted and seals & fcntl.F_SEAL_SEAL:
        raise InvalidArgument(
            f"{where} is a memfd without sealing support (created without "
            f"MFD_ALLOW_SEALING, or already sealed with F_SEAL_SEAL); {MEMFD_HINT}"
        )
    if st.st_size < min_size:
        raise InvalidArgument(
            f"{where} is a memfd of {st.st_size} bytes, smaller than the declared size "
            f"{min_size}; ftruncate it to the size you register"
        )
    writable = (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) == os.O_RDWR
    _drop_foreign_write_permission(fd, st.st_mode, where)  # before any seal: a refusal leaves the memfd as it came
    if seals & wanted != wanted:
        if not writable:
            # The kernel only adds seals through a writable fd.
            raise InvalidArgument(
                f"{where} is a read-only fd of a memfd that is not sealed against shrink and "
                "grow, so the broker cannot seal it; seal it yourself first "
                "(fcntl F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) or pass a read-write fd"
            )
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, wanted)
        except OSError as error:
            raise InvalidArgument(
                f"{where}: the broker could not seal it against shrink and grow ({error.strerror}); {MEMFD_HINT}"
            ) from None
        # Re-read the size: a racing exporter may have resized before sealing.
        st = os.fstat(fd)
        if st.st_size < min_size:
            raise InvalidArgument(
                f"{where} shrank to {st.st_size} bytes while it was being sealed; do not resize a buffer you register"
            )
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    if writable and not seals & fcntl.F_SEAL_SEAL:
        # No importer (read_write, or a same-uid one reopening it) can add a
        # seal after this, such as F_SEAL_FUTURE_WRITE locking the exporter
        # out of its own memory. The exporter's write access is untouched
        # (no write seal), so udmabuf (F_SEAL_SHRINK, no F_SEAL_WRITE) works.
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL)
        except OSError as error:
            raise InvalidArgument(
                f"{where}: the broker could not seal it (F_SEAL_SEAL: {error.strerror}); {MEMFD_HINT}"
            ) from None
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)  # udmabuf needs to know about F_SEAL_WRITE
    return BufferFd(fd=fd, size=st.st_size, writable=writable, seals=seals, file_id=(st.st_dev, st.st_ino))


def read_fdinfo(fd: int) -> dict[str, str]:
    """The ``key: value`` lines of /proc/self/fdinfo/FD (empty if unreadable)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as file:
            lines = file.read().splitlines()
    except OSError:
        return {}
    info = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def inspect_dmabuf(fd: int, index: int, min_size: int = 0) -> BufferFd:
    """Validate fd number ``index`` of a registration as a kernel dma-buf.

    The kernel's fdinfo of a dma-buf names its exporter (``exp_name``, e.g.
    ``system`` for the system dma-heap, ``udmabuf``) and its ``size``.
    Raises InvalidArgument naming the problem; the caller still owns the fd.
    """
    where = f"fd {index} of the buffer"
    st = os.fstat(fd)
    info = read_fdinfo(fd)
    if "exp_name" not in info or not info.get("size", "").isdigit():
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        kind = "a memfd" if target.startswith("/memfd:") else _kind(st.st_mode, fd)
        raise InvalidArgument(f"{where} is {kind}, not a dma-buf; {DMABUF_HINT}")
    size = int(info["size"])
    if size < min_size:
        raise InvalidArgument(f"{where} is a dma-buf of {size} bytes, smaller than the declared size {min_size}")
    writable = (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) == os.O_RDWR
    return BufferFd(
        fd=fd, size=size, writable=writable, kind="dmabuf", exp_name=info["exp_name"], file_id=(st.st_dev, st.st_ino)
    )


def inspect_fd(fd: int, index: int, kind: str, min_size: int = 0) -> BufferFd:
    """Validate a registration's fd as ``kind`` ("memfd" or "dmabuf")."""
    if kind == "dmabuf":
        return inspect_dmabuf(fd, index, min_size)
    return inspect_memfd(fd, index, min_size)


def check_distinct_files(fds: Sequence[int]) -> None:
    """Refuse a registration that sends one file more than once (by st_dev, st_ino).

    Each copy would cost the broker an fd for nothing (253 copies of one
    memfd per message filled a broker's fd table), so copies are refused
    with the indexes that are the same file; the caller still owns the fds.
    """
    seen: dict[tuple[int, int], list[int]] = {}
    for index, fd in enumerate(fds):
        st = os.fstat(fd)
        seen.setdefault((st.st_dev, st.st_ino), []).append(index)
    same = [indexes for indexes in seen.values() if len(indexes) > 1]
    if same:
        groups = "; ".join("fds " + ", ".join(map(str, indexes)) for indexes in same[:4])
        more = f" (and {len(same) - 4} more groups)" if len(same) > 4 else ""
        raise InvalidArgument(
            f"{groups}{more} of the buffer are the same file: send each file once "
            "(segments extents may all name one fd index)"
        )


def _drop_foreign_write_permission(fd: int, mode: int, where: str) -> None:
    """Make the memfd writable by its owner only (a memfd starts as 0777), or refuse it.

    A ``read`` importer gets an O_RDONLY fd; with group or other write bits
    left, a process of another uid could reopen it O_RDWR through /proc,
    write the exporter's data and seal it. A broker that is neither root
    nor the memfd's owner cannot fchmod it (``User=bufbroker``), so such a
    memfd is refused, saying what to do. Within the owner's uid (and for
    root) the kernel still allows the reopen, as for any file the uid owns:
    read-only is enforced across uids.
    """
    if not mode & 0o022:
        return
    try:
        os.fchmod(fd, stat.S_IMODE(mode) & ~0o022)
    except OSError as error:
        raise InvalidArgument(
            f"{where} is a memfd of mode {stat.S_IMODE(mode):04o} that other users could reopen writable, "
            f"and the broker (uid {os.geteuid()}) cannot clear its group/other write bits ({error.strerror}): "
            "fchmod(fd, 0o644) it before exporting (the SDK's export(size=...) makes its memfds so), "
            "or run the broker as the exporter's uid or as root"
        ) from None
