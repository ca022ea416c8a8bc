"""Backing: what a mapping type's map and unmap see of a buffer.

A type maps from the buffer's fds and the attachment's negotiated map
parameters, nothing more: not the registry's Buffer or Attachment, so the
mapping-type contract does not depend on the registry (no import circle) and
a type cannot reach into broker state.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

MEMFD = "memfd"
DMABUF = "dmabuf"


@dataclass(frozen=True)
class BufferFd:
    """One fd of a buffer as the broker checked it at registration (host/fd_inspect.py)."""

    fd: int
    size: int
    writable: bool
    kind: str = MEMFD  # or DMABUF
    seals: int = 0  # a memfd's F_GET_SEALS once the broker sealed it
    exp_name: str = ""  # a dma-buf's exporter, from its fdinfo
    file_id: tuple[int, int] = (0, 0)  # (st_dev, st_ino): the same file under two buffers; (0, 0) unknown


# What a type keeps for one buffer across maps: fds it built from the
# backing (udmabuf: one dma-buf per extent list), under keys of its choice.
KeptFds = dict[Hashable, int]


@dataclass(frozen=True)
class Backing:
    """The memory behind a buffer, for one map or unmap.

    ``fds`` are the buffer's fds, owned by the registry: a type sends them
    (or new fds it opens from them) but never closes them. ``kept`` is the
    type's own table for this buffer: an fd a map builds and keeps for later
    maps goes in it and in ``MapResult.retained``; the registry closes
    everything in it when the backing goes away (revoke, move).
    """

    buffer_id: int
    name: str
    size: int
    fds: Sequence[BufferFd]
    kept: KeptFds = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name the buffer: ``buffer 7 (cam)``."""
        return f"buffer {self.buffer_id}{' (' + self.name + ')' if self.name else ''}"

    @property
    def kind(self) -> str:
        """The kind of its fds (all of a buffer's fds are of one kind)."""
        return self.fds[0].kind if self.fds else MEMFD
