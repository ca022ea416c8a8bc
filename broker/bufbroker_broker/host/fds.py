"""New fds of an fd the broker holds, through /proc/self/fd."""

from __future__ import annotations

import os


def reopen_read_only(fd: int) -> int:
    """A new O_RDONLY (O_CLOEXEC) fd of the file behind ``fd``; the caller owns it.

    Reopening through /proc gives a new open file description that cannot
    be mapped writable. With the memfd made writable by its owner only
    (host/fd_inspect.py), an importer of another uid cannot reopen it O_RDWR
    either; within the exporter's uid nothing can stop that. Raises OSError.
    """
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def open_fd_count() -> int:
    """How many fds this process has open (the entries of /proc/self/fd)."""
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
