"""Implicit fences of dma-buf slots, made explicit for the stream's links.

A dma-buf carries its own fences (the kernel's reservation object): a GPU
or codec that wrote a frame attached a write fence to the buffer itself.
A stream consumer that waits on the CPU (``wait_fence``) or through an
explicit-sync API (Vulkan, EGL) needs them as an fd. So for a slot that is
a dma-buf (``dmabuf``/``udmabuf`` slots) and a publish or release without
a caller's fence, the SDK exports the buffer's fences as a sync_file
(DMA_BUF_IOCTL_EXPORT_SYNC_FILE) and sends that; a producer adds the
sync_files consumers release with to the buffer
(DMA_BUF_IOCTL_IMPORT_SYNC_FILE), so its next GPU write waits for their
reads as implicit sync expects.

Nothing pending (the usual case for CPU-written frames): the exported
sync_file polls readable at once and is not sent, so a frame costs no fd.
A kernel without the ioctls (before 6.0) is said once in the log and the
stream goes on without implicit fences.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Sequence

from bufbroker import dmabuf

log = logging.getLogger("bufbroker")


class ImplicitFences:
    """One stream end's use of the sync_file ioctls; off for good once the kernel says it has none."""

    def __init__(self, stream_name: str) -> None:
        self.stream_name = stream_name
        self.supported = True

    def pending(self, dmabuf_fd: int, write: bool) -> int | None:
        """A sync_file of what a reader (``write=False``) or writer of the buffer must wait for, or None.

        None when nothing is pending (the fence is already signalled) or
        the kernel cannot export fences. The caller owns the fd returned.
        """
        if not self.supported:
            return None
        try:
            sync_file = dmabuf.export_sync_file(dmabuf_fd, write)
        except dmabuf.SyncFileUnsupported as error:
            self._unsupported(error)
            return None
        if _signalled(sync_file):
            os.close(sync_file)
            return None
        return sync_file

    def add_to_buffer(self, dmabuf_fd: int, fences: Sequence[int]) -> None:
        """Add the sync_files among ``fences`` to the buffer as read fences (its next writer waits for them)."""
        if not self.supported:
            return
        for fence in fences:
            if not dmabuf.is_sync_file(fence):
                continue  # a caller's own kind of fence (e.g. an eventfd): only polled
            try:
                dmabuf.import_sync_file(dmabuf_fd, fence, write=False)
            except dmabuf.SyncFileUnsupported as error:
                self._unsupported(error)
                return
            except OSError as error:
                log.warning(
                    "bufbroker: stream %r: a release fence was not added to its slot: %s", self.stream_name, error
                )

    def _unsupported(self, error: OSError) -> None:
        self.supported = False
        log.warning(
            "bufbroker: stream %r goes on without implicit dma-buf fences: %s (pass fence= to publish/release)",
            self.stream_name,
            error,
        )


def _signalled(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))
