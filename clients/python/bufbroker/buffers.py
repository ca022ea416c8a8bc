"""ExportedBuffer: the exporter's handle on a buffer it registered."""

from __future__ import annotations

import contextlib
import mmap
import os
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

from bufbroker import dmabuf, fdwire
from bufbroker.v1 import broker_pb2 as pb

if TYPE_CHECKING:
    from bufbroker.session import Session


EXIT_POLICIES = {"revoke": pb.EXPORTER_EXIT_POLICY_REVOKE, "keep": pb.EXPORTER_EXIT_POLICY_KEEP}


def make_memfd(name: str, size: int) -> int:
    """A sealable memfd for a buffer of ``size`` bytes (the broker seals shrink and grow).

    The memfd is rounded up to whole pages (an mmap shows whole pages
    anyway), so the broker can also hand it out as a udmabuf.
    """
    fd = os.memfd_create(name[:200], os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o644)   # only the owner may reopen it writable
        os.ftruncate(fd, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
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

    def __init__(self, session: "Session", info: pb.BufferInfo, fds: list[int], request: pb.RegisterBufferRequest) -> None:
        self.session = session
        self.request = request   # how it was registered: replayed after a broker restart
        self.info = info
        self.id = info.id
        self.name = info.name
        self.size = info.size
        self.fds = fds
        self._mmap: mmap.mmap | None = None
        self._is_dmabuf: Optional[bool] = None
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

    @contextlib.contextmanager
    def cpu_access(self, write: bool = True) -> Iterator[memoryview]:
        """The exporter's view of the buffer for one CPU access.

        When the buffer is a dma-buf (a ``dmabuf`` export) the block runs
        between DMA_BUF_IOCTL_SYNC START and END; for a memfd it is just
        ``memoryview()``.
        """
        view = self.memoryview()
        if self._is_dmabuf is None:
            self._is_dmabuf = dmabuf.is_dmabuf(self.fd)
        if not self._is_dmabuf:
            yield view
            return
        with dmabuf.bracket(self.fd, write):
            yield view

    def move(
        self,
        new_memfd_or_size: int | Sequence[int],
        *,
        offers: Optional[Sequence[Any]] = None,
        layout: Optional[Mapping[str, Any]] = None,
        size: Optional[int] = None,
        reason: str = "",
    ) -> list[int]:
        """Replace the backing: a new size (the SDK makes a memfd) or your memfd(s).

        ``new_memfd_or_size``: an int is a size; a list of ints are memfds
        (pass ``size=`` too if fd 0 is larger than the buffer). Importers
        holding mappings are told to unmap; the swap happens once they have
        (or at the broker's move deadline). Returns the ids of attachments
        that did not unmap in time (marked non-compliant). Re-take
        ``memoryview()`` afterwards: the old one is released.
        """
        from bufbroker import specs
        from bufbroker.session import backing_fds

        if isinstance(new_memfd_or_size, int):
            fds, new_size = backing_fds(new_memfd_or_size, None, self.name or "bufbroker")
        else:
            fds, new_size = backing_fds(None, new_memfd_or_size, self.name or "bufbroker")
        new_size = size or new_size
        try:
            request = pb.MoveBufferRequest(buffer_id=self.id, size=new_size, reason=reason, offers=specs.offers_to_wire(offers))
            if layout is not None:
                request.layout.CopyFrom(layout_to_wire(layout))
            request.nonce = self.session.send_fds(fds)
            response = self.session.call("MoveBuffer", request)
        except BaseException:
            fdwire.close_fds(fds)
            raise
        self._release_mapping()
        fdwire.close_fds(self.fds)
        self.fds, self.size, self.info = fds, response.buffer.size, response.buffer
        self._is_dmabuf = None
        self.request.size = new_size
        if offers is not None:
            del self.request.offers[:]
            self.request.offers.extend(request.offers)
        if layout is not None:
            self.request.layout.CopyFrom(request.layout)
        return list(response.non_compliant_attachment_ids)

    def _register_again(self) -> None:
        """After a broker restart: register under the same name and settings."""
        old_id = self.id
        request = pb.RegisterBufferRequest()
        request.CopyFrom(self.request)
        request.nonce = self.session.send_fds(self.fds)   # the broker gets copies; we keep ours
        response = self.session.call("RegisterBuffer", request)
        self.info, self.id = response.buffer, response.buffer.id
        exports = self.session._exports
        exports.pop(old_id, None)
        exports[self.id] = self

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
        self.session._exports.pop(self.id, None)
        self._release_mapping()
        fdwire.close_fds(self.fds)

    def _release_mapping(self) -> None:
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # a memoryview is still alive; the mapping goes with it
            self._mmap = None

    def __repr__(self) -> str:
        return f"<ExportedBuffer id={self.id} name={self.name!r} size={self.size}>"
