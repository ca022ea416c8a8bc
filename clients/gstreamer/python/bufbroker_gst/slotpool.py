"""The buffer pool through which bufbrokersrc learns that downstream freed a frame's buffer.

Python cannot give a GstMemory its own free function, and a Python
wrapper's lifetime says nothing about the C buffer's (GStreamer holds
refs Python never sees). What Python *can* do is subclass GstBufferPool:
a buffer acquired from a pool carries the pool, and when its last ref is
dropped, in whatever thread that happens, GStreamer hands it to the
pool's ``release_buffer`` instead of freeing it. That call is the moment
the frame may go back to the producer, so ``do_release_buffer`` calls the
``on_release`` callback given for that buffer (and then drops the
buffer: GStreamer frees it and its memory, which unmaps the slot).

The buffer itself is built by the caller (``wrap``), so acquire hands out
exactly the buffer it is given: the pool allocates nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

log = logging.getLogger("bufbroker.gstreamer")


class SlotBufferPool(Gst.BufferPool):  # type: ignore[misc]
    """Hands out the buffers given to ``wrap``; calls each one's ``on_release`` when its last ref goes."""

    def __init__(self) -> None:
        super().__init__()
        config = self.get_config()
        Gst.BufferPool.config_set_params(config, None, 0, 0, 0)
        self.set_config(config)
        self._lock = threading.Lock()
        self._given: Gst.Buffer | None = None
        # The buffer's address (PyGObject hashes a boxed wrapper by the C pointer it wraps: every
        # wrapper of one GstBuffer has the same hash) -> what to call when that buffer is freed.
        self._on_release: dict[int, Callable[[], None]] = {}
        self.set_active(True)

    def wrap(self, buffer: Gst.Buffer, on_release: Callable[[], None]) -> Gst.Buffer:
        """``buffer``, now owned by this pool: ``on_release()`` runs once, when downstream frees it.

        Only one thread (the source's streaming thread) calls wrap.
        """
        key = hash(buffer)
        with self._lock:
            self._on_release[key] = on_release
        self._given = buffer
        try:
            flow, pooled = self.acquire_buffer(None)
        finally:
            self._given = None
        if flow != Gst.FlowReturn.OK or pooled is None:
            with self._lock:
                self._on_release.pop(key, None)
            raise RuntimeError(f"the slot buffer pool refused a buffer: {flow}")
        return pooled

    def outstanding(self) -> int:
        """Buffers handed out and not freed yet."""
        with self._lock:
            return len(self._on_release)

    def do_acquire_buffer(self, params: object) -> tuple[Gst.FlowReturn, Gst.Buffer | None]:
        buffer = self._given
        if buffer is None:
            return Gst.FlowReturn.ERROR, None
        return Gst.FlowReturn.OK, buffer

    def do_reset_buffer(self, buffer: Gst.Buffer) -> None:
        pass  # nothing to reset: the buffer is dropped, not reused

    def do_release_buffer(self, buffer: Gst.Buffer) -> None:
        with self._lock:
            on_release = self._on_release.pop(hash(buffer), None)
        if on_release is None:
            log.warning("bufbrokersrc: a buffer came back that this pool does not know (%r)", buffer)
            return
        try:
            on_release()
        except Exception:
            log.exception("bufbrokersrc: releasing a frame failed")
