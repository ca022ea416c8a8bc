"""Attachment and Mapping: the importer's side."""

from __future__ import annotations

import builtins
import contextlib
import logging
import mmap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bufbroker import dmabuf, errors, fdwire, formats
from bufbroker.errors import BrokerError, FailedPrecondition, NotFound, Unavailable
from bufbroker.planes import layout_from_wire
from bufbroker.rpc import BrokerRpc
from bufbroker.trace import TraceStep, trace_from_wire
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mt

PAGE = mmap.PAGESIZE
log = logging.getLogger("bufbroker")
DMABUF_TYPES = ("udmabuf", "dmabuf")  # handles whose one fd is a kernel dma-buf


@dataclass(frozen=True)
class MappedExtent:
    """One extent of a segments mapping: ``length`` bytes at ``offset`` of ``fd``."""

    fd: int
    offset: int
    length: int


class Attachment:
    """An importer's negotiated link to a buffer.

    ``map_type`` is the negotiated mapping type's name, fixed for the
    attachment's life; ``trace`` is every (offer, match) pair the broker
    examined. ``detach()`` unmaps and ends it.
    """

    def __init__(
        self,
        rpc: BrokerRpc,
        response: pb.AttachResponse,
        request: pb.AttachRequest | None = None,
        fds: list[int] | None = None,
    ) -> None:
        self._rpc = rpc
        self.request = request or pb.AttachRequest()  # replayed after a broker restart
        self.id = response.attachment_id
        self.buffer_id = response.buffer_id
        self.map_type: str = response.map_type
        self.trace: list[TraceStep] = trace_from_wire(response.trace)
        # The (format, modifier) pair negotiated, as FORMAT:MODIFIER, when both sides listed pairs
        # (after a move, the pair of the backing the newest mapping shows).
        self.format: str | None = (
            formats.pair_text(response.format.format, response.format.modifier) if response.HasField("format") else None
        )
        self.pinned = response.pinned
        self.detached = False
        self.revoked = ""  # the reason, once the exporter or broker withdrew the buffer
        self.exporter_gone = False
        self.moves = 0  # moves handled so far
        self.move_error: BaseException | None = None  # why the last re-map (or re-attach) failed
        self._revoke_callbacks: list[Callable[[Attachment, str], None]] = []
        self._move_callbacks: list[Callable[[Attachment, str], None]] = []
        # The one record of what is mapped: this process's live mappings, the
        # current one (``mapping``) first. ``_changed`` wakes wait_mapped().
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._mappings: list[Mapping] = []
        if response.HasField("mapping"):
            self._mappings.append(Mapping._from_response(self, response.mapping, fds or []))

    @property
    def mapping(self) -> Mapping | None:
        """The current mapping: after a move, the new one the SDK made; None when nothing is mapped."""
        with self._lock:
            return self._mappings[0] if self._mappings else None

    def on_revoke(self, callback: Callable[[Attachment, str], None]) -> None:
        """Call ``callback(attachment, reason)`` when the buffer is revoked.

        It runs on the session's events thread. Afterwards the SDK detaches
        (which acknowledges the revocation to the broker); views already
        taken stay readable, as the kernel keeps the pages.
        """
        self._revoke_callbacks.append(callback)

    def on_move(self, callback: Callable[[Attachment, str], None]) -> None:
        """Call ``callback(attachment, reason)`` after the SDK handled a move.

        When the exporter moves the buffer, the SDK by itself closes this
        attachment's mappings (views taken from them are released), tells
        the broker, maps again and puts the new Mapping in
        ``attachment.mapping``; then it calls these callbacks. Read through
        ``attachment.mapping`` (or ``wait_mapped()``) to follow moves.
        """
        self._move_callbacks.append(callback)

    def wait_mapped(self, timeout: float | None = None) -> Mapping:
        """The current mapping, waiting while a move re-maps it.

        Raises FailedPrecondition when there is none and will be none (the
        re-map failed, the buffer was revoked, the attachment detached), and
        TimeoutError when none came within ``timeout`` seconds.
        """
        with self._lock:
            settled = self._changed.wait_for(lambda: self._mappings or self._unmappable_because(), timeout)
            if self._mappings:
                return self._mappings[0]
        if not settled:
            raise TimeoutError(f"attachment {self.id} was not re-mapped within {timeout} s")
        raise FailedPrecondition(f"attachment {self.id} has no mapping: {self._unmappable_because()}")

    def wait_remapped(self, old: Mapping | None, timeout: float | None = None) -> Mapping:
        """The current mapping once ``old`` (if given) is closed: after a move, the one of the new backing.

        A move drops every mapping here before the broker swaps the backing,
        and the SDK's new map waits for the swap, so a mapping present once
        ``old`` is closed shows the moved backing. Raises as ``wait_mapped``.
        """

        def ready() -> bool:
            return bool(self._mappings) and (old is None or old.closed)

        with self._lock:
            settled = self._changed.wait_for(lambda: ready() or self._unmappable_because(), timeout)
            if ready():
                return self._mappings[0]
        if not settled:
            raise TimeoutError(f"attachment {self.id} was not mapped again within {timeout} s")
        raise FailedPrecondition(f"attachment {self.id} has no mapping: {self._unmappable_because()}")

    def _unmappable_because(self) -> str:
        """Why no mapping will come by itself ("" while one may: mapped, re-mapping, or not yet mapped)."""
        if self.move_error is not None:
            return str(self.move_error)
        if self.revoked:
            return f"buffer revoked: {self.revoked}"
        if self.detached:
            return "the attachment is detached; attach again"
        return ""

    def map(self) -> Mapping:
        """Map the buffer: the handle and fds for it. Close the Mapping (or use ``with``)."""
        if self.revoked:
            raise FailedPrecondition(f"buffer revoked: {self.revoked}; attach to a live buffer")
        if self.detached:
            raise ValueError(f"attachment {self.id} is detached; attach again")
        try:
            response, fds = self._rpc.fast_call("Map", pb.MapRequest(attachment_id=self.id))
        except NotFound:
            if self.revoked:  # the SDK acknowledged a revocation while we asked
                raise FailedPrecondition(f"buffer revoked: {self.revoked}; attach to a live buffer") from None
            raise
        mapping = Mapping._from_response(self, response, fds)
        self._add_mapping(mapping)
        return mapping

    def detach(self) -> None:
        """End the attachment; the broker drops its mappings."""
        if self.detached:
            return
        self._set_detached()
        self._drop_mappings(tell_broker=False)  # Detach drops them at the broker
        with contextlib.suppress(NotFound):  # the broker already dropped it (its buffer was unregistered)
            self._rpc.fast_call("Detach", pb.DetachRequest(attachment_id=self.id))

    # --- the mappings list ------------------------------------------------------------

    def _add_mapping(self, mapping: Mapping, current: bool = False) -> None:
        with self._lock:
            if current:
                self._mappings.insert(0, mapping)
            else:
                self._mappings.append(mapping)
            self._changed.notify_all()

    def _forget_mapping(self, mapping: Mapping) -> None:
        with self._lock:
            if mapping in self._mappings:
                self._mappings.remove(mapping)

    def _drop_mappings(self, tell_broker: bool) -> bool:
        """Release every mapping here (and unmap each at the broker if ``tell_broker``); True if there were any."""
        with self._lock:
            mappings, self._mappings = self._mappings, []
        for mapping in mappings:
            mapping._release()
            if tell_broker and not self._rpc.closed:
                with contextlib.suppress(BrokerError):  # already dropped at the broker
                    self._rpc.fast_call("Unmap", pb.UnmapRequest(mapping_id=mapping.id))
        return bool(mappings)

    def _set_detached(self) -> None:
        with self._lock:
            self.detached = True
            self._changed.notify_all()

    # --- what the session's events and restarts do -----------------------------------

    def _on_move_notify(self, reason: str) -> None:
        """Unmap now (the broker waits for it), re-map once the swap is done."""
        self._start_remap(reason, tell_broker=True)

    def _on_invalidated(self, reason: str) -> None:
        """The broker dropped our mappings; map again if we can."""
        self._start_remap(reason, tell_broker=False)

    def _on_exporter_gone(self) -> None:
        self.exporter_gone = True

    def _on_revoked(self, reason: str) -> None:
        with self._lock:
            self.revoked = reason
            self._changed.notify_all()
        for callback in list(self._revoke_callbacks):
            try:
                callback(self, reason)
            except Exception:
                log.exception("bufbroker: an on_revoke callback failed")
        if not self.detached:
            self._set_detached()
            with contextlib.suppress(BrokerError):  # already gone at the broker: the acknowledgement is moot
                self._rpc.fast_call("Detach", pb.DetachRequest(attachment_id=self.id))

    def _start_remap(self, reason: str, tell_broker: bool) -> None:
        with self._lock:
            self.move_error = None  # a new move: an old failure says nothing about it
        if self._drop_mappings(tell_broker):
            threading.Thread(target=self._remap, args=(reason,), name="bufbroker-remap", daemon=True).start()

    def _remap(self, reason: str) -> None:
        try:
            self.map()
            self.moves += 1
        except BaseException as error:  # reported through wait_mapped()/move_error
            with self._lock:
                self.move_error = error
                self._changed.notify_all()
            log.warning("bufbroker: attachment %d could not map again after a move: %s", self.id, error)
        for callback in list(self._move_callbacks):
            try:
                callback(self, reason)
            except Exception:
                log.exception("bufbroker: an on_move callback failed")

    def _attach_again(self, deadline: float) -> bool:
        """After a broker restart: attach again by name (or labels) and map if we had a mapping; True if attached.

        Mappings already held stay valid (same pages); the new mapping makes
        the new broker count us, so moves reach us again. An attachment made
        by buffer id cannot be found again: ids do not survive a restart.
        The caller (the session) files the attachment under its new ``id``.
        """
        if self.detached or self.revoked:
            return False
        if self.request.WhichOneof("buffer") != "buffer_name" and not self.request.labels:
            self.move_error = errors.Unavailable(
                "the broker restarted and this attachment was made by id; attach again by name or labels"
            )
            log.warning("bufbroker: attachment %d was made by buffer id and is lost with the broker restart", self.id)
            return False
        request = pb.AttachRequest()
        request.CopyFrom(self.request)
        request.map = self.mapping is not None
        while True:
            try:
                response, fds = self._rpc.fast_call("Attach", request)
                break
            except errors.NotFound:
                # The exporter has not registered it again yet.
                if time.monotonic() > deadline:
                    which = self.request.buffer_name or dict(self.request.labels)
                    self.move_error = errors.Unavailable(f"buffer {which!r} did not come back after the broker restart")
                    log.error("bufbroker: %s", self.move_error)
                    return False
                time.sleep(0.02)
            except errors.BrokerError as error:
                self.move_error = error
                log.error("bufbroker: could not attach %r again: %s", self.request.buffer_name, error)
                return False
        self.id, self.buffer_id = response.attachment_id, response.buffer_id
        if response.HasField("mapping"):
            self._add_mapping(Mapping._from_response(self, response.mapping, fds), current=True)
        return True

    def _close_locally(self) -> None:
        """The session ended: release this process's mappings and tell the broker nothing."""
        self._set_detached()
        self._drop_mappings(tell_broker=False)

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._rpc.closed:
            self.detach()

    def __repr__(self) -> str:
        return f"<Attachment id={self.id} buffer={self.buffer_id} map_type={self.map_type!r}>"


class Mapping:
    """One map of an attachment: the type's handle, the fds, and views.

    ``fds`` are this process's; ``close()`` unmaps at the broker, closes them
    and releases the views it handed out (a numpy array made from a view
    keeps its pages mapped until the array is dropped).

    ``generation`` says which backing it shows (1, then one more per move)
    and ``layout`` the exporter's layout at that generation (a dict as
    ``export(layout=...)`` takes, or None): after a resolution change the
    new mapping carries the new layout, with no extra call.

    For ``udmabuf`` and ``dmabuf`` the one fd is a kernel dma-buf: hand it
    to a driver (DRM, V4L2, VA-API, Vulkan), or read it on the CPU inside
    ``cpu_access()``, which brackets the access with DMA_BUF_IOCTL_SYNC.
    """

    def __init__(
        self,
        attachment: Attachment,
        mapping_id: int,
        handle: mt.Handle,
        fds: list[int],
        size: int,
        generation: int = 0,
        layout: dict[str, Any] | None = None,
    ) -> None:
        self.attachment = attachment
        self.id = mapping_id
        self.handle = handle
        self.fds = fds
        self.size = size
        self.generation = generation  # the buffer's backing it shows: 1, then +1 per move
        self.layout = layout  # the exporter's layout at that generation, or None
        self.type = handle.WhichOneof("kind") or ""
        self._mmaps: list[mmap.mmap] = []
        self._views: list[memoryview] | None = None
        self.closed = False

    @classmethod
    def _from_response(cls, attachment: Attachment, response: pb.MapResponse, fds: list[int]) -> Mapping:
        """A Mapping from a MapResponse and the fds that came with it (BrokerRpc.fast_call)."""
        if len(fds) != response.fd_count:
            fdwire.close_fds(fds)
            raise Unavailable(f"mapping {response.mapping_id}: expected {response.fd_count} fds, got {len(fds)}")
        layout = layout_from_wire(response.layout) if response.HasField("layout") else None
        if response.HasField("format"):  # negotiated again by a move: the attachment shows the newest
            attachment.format = formats.pair_text(response.format.format, response.format.modifier)
        return cls(attachment, response.mapping_id, response.handle, fds, response.size, response.generation, layout)

    @property
    def writable(self) -> bool:
        inner = getattr(self.handle, self.type, None)
        return getattr(inner, "access", mt.ACCESS_READ) == mt.ACCESS_READ_WRITE

    @property
    def is_dmabuf(self) -> bool:
        """True when the mapping's fd is a kernel dma-buf (udmabuf, dmabuf)."""
        return self.type in DMABUF_TYPES

    @property
    def extents(self) -> list[MappedExtent]:
        """The extents (segments), or one extent for the whole memfd or dma-buf."""
        if self.type == "segments":
            return [MappedExtent(self.fds[e.fd_index], e.offset, e.length) for e in self.handle.segments.extents]
        if self.type in ("memfd", *DMABUF_TYPES):
            return [MappedExtent(self.fds[0], 0, getattr(self.handle, self.type).size)]
        raise ValueError(f"mapping type {self.type!r} has no CPU extents")

    def views(self) -> list[memoryview]:
        """One memoryview per extent, writable only for read_write access."""
        if self.closed:
            raise ValueError("this mapping is closed; map again")
        if self._views is None:
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if self.writable else 0)
            views = []
            for extent in self.extents:
                # mmap offsets must be page-aligned: map from the page start.
                start = extent.offset - extent.offset % PAGE
                skip = extent.offset - start
                region = mmap.mmap(extent.fd, skip + extent.length, mmap.MAP_SHARED, prot, offset=start)
                self._mmaps.append(region)
                view = memoryview(region)[skip : skip + extent.length]
                views.append(view if self.writable else view.toreadonly())
            self._views = views
        return list(self._views)

    def memoryview(self) -> memoryview:
        """The buffer as one memoryview (memfd, or segments with one extent)."""
        views = self.views()
        if len(views) != 1:
            raise ValueError(f"this {self.type} mapping has {len(views)} extents; use views() or extents")
        return views[0]

    def planes(self) -> list[Any]:
        """One numpy view per plane of the mapping's ``layout`` (bufbroker.formats.plane_views), no copy.

        Writable only for read_write access. For a dma-buf, read inside
        ``cpu_access()``. ValueError when the buffer has no layout,
        LayoutError for a tiled modifier (opaque to the CPU).
        """
        if self.layout is None:
            raise ValueError("planes() needs a layout: the exporter registered this buffer without one")
        return formats.plane_views(self.memoryview(), self.layout)

    @contextlib.contextmanager
    def cpu_access(self, write: bool = False) -> Iterator[builtins.memoryview]:
        """The buffer as one memoryview, for CPU reads (and writes if ``write``).

        For a dma-buf (udmabuf, dmabuf) the block runs between
        DMA_BUF_IOCTL_SYNC START and END, as the kernel requires for CPU
        access; for memfd and segments there is nothing to synchronise.
        Use it for every CPU access to a dma-buf; ``memoryview()`` alone
        skips the synchronisation.
        """
        if write and not self.writable:
            raise ValueError(f"this {self.type} mapping is read-only (attach with access='read_write' to write)")
        view = self.memoryview()
        if not self.is_dmabuf:
            yield view
            return
        with dmabuf.bracket(self.fds[0], write):
            yield view

    def numpy(self, dtype: Any = "uint8", shape: Any = None, extent: int = 0) -> Any:
        """A numpy array over one extent, without copying (needs numpy)."""
        try:
            import numpy
        except ImportError:
            raise ImportError("Mapping.numpy() needs numpy: pip install 'bufbroker[numpy]'") from None
        array = numpy.frombuffer(self.views()[extent], dtype=dtype)
        return array.reshape(shape) if shape is not None else array

    def _release(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._views is not None:
            for view in self._views:
                with contextlib.suppress(BufferError):  # a numpy array still uses it; the pages stay until it goes
                    view.release()
        for region in self._mmaps:
            with contextlib.suppress(BufferError):  # a view the user still holds keeps the pages mapped
                region.close()
        fdwire.close_fds(self.fds)

    def close(self) -> None:
        """Unmap at the broker and release this process's fds and views."""
        if self.closed:
            return
        self._release()
        attachment = self.attachment
        attachment._forget_mapping(self)
        if not attachment.detached and not attachment._rpc.closed:
            # The broker may have dropped it already (move, revoke, restart) or be gone.
            with contextlib.suppress(NotFound, Unavailable):
                attachment._rpc.fast_call("Unmap", pb.UnmapRequest(mapping_id=self.id))

    def __enter__(self) -> Mapping:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Mapping id={self.id} type={self.type!r} size={self.size} fds={len(self.fds)}>"
