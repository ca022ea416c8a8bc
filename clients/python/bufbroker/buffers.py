"""ExportedBuffer: the exporter's handle on a buffer it registered."""

from __future__ import annotations

import builtins
import contextlib
import mmap
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from bufbroker import dmabuf, fdwire, specs
from bufbroker.backing import backing_fds
from bufbroker.backing import make_memfd as make_memfd  # its old home: tests/kernel imports it from here
from bufbroker.planes import layout_to_wire
from bufbroker.rpc import BrokerRpc
from bufbroker.v1 import broker_pb2 as pb

EXIT_POLICIES = {"revoke": pb.EXPORTER_EXIT_POLICY_REVOKE, "keep": pb.EXPORTER_EXIT_POLICY_KEEP}


class ExportedBuffer:
    """A buffer this session registered.

    The exporter keeps its own memfd(s) and writes through ``memoryview()``.
    ``revoke()`` withdraws it from importers; ``unregister()`` also forgets it
    (its name becomes free). Closing the session does both.
    """

    def __init__(
        self,
        rpc: BrokerRpc,
        info: pb.BufferInfo,
        fds: list[int],
        request: pb.RegisterBufferRequest,
        on_close: Callable[[ExportedBuffer], None] = lambda exported: None,
        allow_write: bool = False,
    ) -> None:
        """``on_close(self)`` runs once when the handle closes, so its session stops keeping it.

        ``allow_write`` is the export's: new offers given to :meth:`move` get it too.
        """
        self._rpc = rpc
        self.allow_write = allow_write
        self._on_close = on_close
        self.request = request  # how it was registered: replayed after a broker restart
        self.info = info
        self.id = info.id
        self.name = info.name
        self.size = info.size
        self.fds = fds
        self._mmap: mmap.mmap | None = None
        self._is_dmabuf: bool | None = None
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
        return builtins.memoryview(self._mmap)

    @contextlib.contextmanager
    def cpu_access(self, write: bool = True) -> Iterator[builtins.memoryview]:
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
        offers: Sequence[specs.Spec] | None = None,
        layout: Mapping[str, Any] | None = None,
        size: int | None = None,
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
        if isinstance(new_memfd_or_size, int):
            fds, new_size = backing_fds(new_memfd_or_size, None, self.name or "bufbroker")
        else:
            fds, new_size = backing_fds(None, new_memfd_or_size, self.name or "bufbroker")
        new_size = size or new_size
        try:
            request = pb.MoveBufferRequest(
                buffer_id=self.id,
                size=new_size,
                reason=reason,
                offers=specs.offers_to_wire(offers, self.allow_write) if offers else [],
            )
            if layout is not None:
                request.layout.CopyFrom(layout_to_wire(layout))
            request.nonce = self._rpc.send_fds(fds)
            response = self._rpc.call("MoveBuffer", request)
        except BaseException:
            fdwire.close_fds(fds)
            raise
        self._release_mapping()
        fdwire.close_fds(self.fds)
        self.fds, self.size, self.info = fds, response.buffer.size, response.buffer
        self._is_dmabuf = None
        self.request.size = new_size
        if offers:  # none (or empty) keeps the buffer's offers
            del self.request.offers[:]
            self.request.offers.extend(request.offers)
        if layout is not None:
            self.request.layout.CopyFrom(request.layout)
        return list(response.non_compliant_attachment_ids)

    def revoke(self, reason: str = "") -> None:
        """Withdraw the buffer: importers get Revoked; attach and map fail."""
        self._rpc.call("RevokeBuffer", pb.RevokeBufferRequest(buffer_id=self.id, reason=reason))

    def unregister(self) -> None:
        """Revoke and forget the buffer, then release the exporter's fds."""
        self._rpc.call("UnregisterBuffer", pb.UnregisterBufferRequest(buffer_id=self.id))
        self.close()

    def close(self) -> None:
        """Release this process's mapping and fds (the broker keeps its own)."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)
        self._release_mapping()
        fdwire.close_fds(self.fds)

    @property
    def closed(self) -> bool:
        """True once ``close()`` or ``unregister()`` released this process's fds."""
        return self._closed

    def _register_again(self) -> None:
        """After a broker restart: register under the same name and settings.

        The caller (the session) files the buffer under its new ``id``.
        """
        request = pb.RegisterBufferRequest()
        request.CopyFrom(self.request)
        request.nonce = self._rpc.send_fds(self.fds)  # the broker gets copies; we keep ours
        response = self._rpc.call("RegisterBuffer", request)
        self.info, self.id = response.buffer, response.buffer.id

    def _release_mapping(self) -> None:
        if self._mmap is not None:
            with contextlib.suppress(BufferError):  # a memoryview is still alive; the mapping goes with it
                self._mmap.close()
            self._mmap = None

    def __repr__(self) -> str:
        return f"<ExportedBuffer id={self.id} name={self.name!r} size={self.size}>"
