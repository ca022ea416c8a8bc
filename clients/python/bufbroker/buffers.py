"""ExportedBuffer: the exporter's handle on a buffer it registered."""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Any, Mapping

from bufbroker import fdwire
from bufbroker.v1 import broker_pb2 as pb

if TYPE_CHECKING:
    from bufbroker.session import Session


def make_memfd(name: str, size: int) -> int:
    """A sealable memfd of ``size`` bytes (the broker seals shrink and grow)."""
    fd = os.memfd_create(name[:200], os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o644)   # only the owner may reopen it writable
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def layout_to_wire(layout: Mapping[str, Any]) -> pb.Layout:
    """A Layout from a dict: fourcc, width, height, modifier, planes=[{offset, stride}]."""
    known = {"fourcc", "width", "height", "modifier", "planes"}
    unknown = set(layout) - known
    if unknown:
        raise ValueError(f"unknown layout keys {sorted(unknown)}; use {sorted(known)}")
    wire = pb.Layout(
        fourcc=layout.get("fourcc", ""),
        width=layout.get("width", 0),
        height=layout.get("height", 0),
        modifier=layout.get("modifier", 0),
    )
    for plane in layout.get("planes", ()):
        wire.planes.add(offset=plane.get("offset", 0), stride=plane.get("stride", 0))
    return wire


class ExportedBuffer:
    """A buffer this session registered.

    The exporter keeps its own memfd(s) and writes through ``memoryview()``.
    ``revoke()`` withdraws it from importers; ``unregister()`` also forgets it
    (its name becomes free). Closing the session does both.
    """

    def __init__(self, session: "Session", info: pb.BufferInfo, fds: list[int]) -> None:
        self.session = session
        self.info = info
        self.id = info.id
        self.name = info.name
        self.size = info.size
        self.fds = fds
        self._mmap: mmap.mmap | None = None
        self._closed = False

    @property
    def fd(self) -> int:
        return self.fds[0]

    def memoryview(self) -> memoryview:
        """The exporter's writable view of the buffer (fd 0, ``size`` bytes)."""
        if self._closed:
            raise ValueError(f"buffer {self.id} was unregistered; its memory is no longer mapped here")
        if self._mmap is None:
            self._mmap = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        return memoryview(self._mmap)

    def revoke(self, reason: str = "") -> None:
        """Withdraw the buffer: importers get Revoked; attach and map fail."""
        self.session.call("RevokeBuffer", pb.RevokeBufferRequest(buffer_id=self.id, reason=reason))

    def unregister(self) -> None:
        """Revoke and forget the buffer, then release the exporter's fds."""
        self.session.call("UnregisterBuffer", pb.UnregisterBufferRequest(buffer_id=self.id))
        self.close()

    def close(self) -> None:
        """Release this process's mapping and fds (the broker keeps its own)."""
        if self._closed:
            return
        self._closed = True
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # a memoryview is still alive; the mapping goes with it
        fdwire.close_fds(self.fds)

    def __repr__(self) -> str:
        return f"<ExportedBuffer id={self.id} name={self.name!r} size={self.size}>"
