"""vgem from Python for the kernel lane: a real dma-buf carrying a real, unsignalled dma_fence.

vgem (drivers/gpu/drm/vgem) is DRM's virtual GEM driver: no display, no
GPU, but its buffers are shmem-backed GEM objects that export as dma-bufs
(PRIME), and DRM_IOCTL_VGEM_FENCE_ATTACH puts a fence on a buffer's
reservation object that only DRM_IOCTL_VGEM_FENCE_SIGNAL (or the driver's
timeout) signals. Exporting that buffer's implicit fence as a sync_file
(bufbroker.dmabuf.export_sync_file) gives a pollable fd that is not
readable until the test says so.

The driver signals every fence by itself 10 s after it was attached
(VGEM_FENCE_TIMEOUT in vgem_fence.c), and then FENCE_SIGNAL fails with
ETIMEDOUT: keep every wait on a pending fence well under that (the tests
use <= 5 s and signal within ~1 s).

    with Vgem.open() as card:
        buf = card.dumb_buffer(4096)        # a GEM handle and its dma-buf fd
        fence = card.attach_fence(buf.handle, write=True)
        ...                                 # export_sync_file(buf.fd, write=False) polls not readable
        card.signal(fence)

Standard library only (fcntl.ioctl); numbers from include/uapi/drm/drm.h,
drm_mode.h and vgem_drm.h (x86_64 layout; checked against the headers by
a C program including them, and by the lane itself).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import os
import struct
from dataclasses import dataclass


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("d") << 8) | number  # DRM_IOCTL_BASE 'd'


_WRITE, _READ = 1, 2
DRM_COMMAND_BASE = 0x40

# struct drm_version {int major, minor, patchlevel; size_t name_len; char *name;
#                     size_t date_len; char *date; size_t desc_len; char *desc}
_VERSION = struct.Struct("=iii4xQQQQQQ")
DRM_IOCTL_VERSION = _ioc(_READ | _WRITE, 0x00, _VERSION.size)  # 0xc0406400
# struct drm_gem_close {__u32 handle; __u32 pad}
_GEM_CLOSE = struct.Struct("=II")
DRM_IOCTL_GEM_CLOSE = _ioc(_WRITE, 0x09, _GEM_CLOSE.size)  # 0x40086409
# struct drm_prime_handle {__u32 handle; __u32 flags; __s32 fd}
_PRIME = struct.Struct("=IIi")
DRM_IOCTL_PRIME_HANDLE_TO_FD = _ioc(_READ | _WRITE, 0x2D, _PRIME.size)  # 0xc00c642d
DRM_IOCTL_PRIME_FD_TO_HANDLE = _ioc(_READ | _WRITE, 0x2E, _PRIME.size)  # 0xc00c642e
DRM_CLOEXEC = os.O_CLOEXEC
DRM_RDWR = os.O_RDWR
# struct drm_mode_create_dumb {__u32 height, width, bpp, flags, handle, pitch; __u64 size}
_CREATE_DUMB = struct.Struct("=IIIIIIQ")
DRM_IOCTL_MODE_CREATE_DUMB = _ioc(_READ | _WRITE, 0xB2, _CREATE_DUMB.size)  # 0xc02064b2
# struct drm_vgem_fence_attach {__u32 handle, flags, out_fence, pad}
_FENCE_ATTACH = struct.Struct("=IIII")
DRM_IOCTL_VGEM_FENCE_ATTACH = _ioc(_READ | _WRITE, DRM_COMMAND_BASE + 0x1, _FENCE_ATTACH.size)  # 0xc0106441
VGEM_FENCE_WRITE = 0x1
# struct drm_vgem_fence_signal {__u32 fence, flags}
_FENCE_SIGNAL = struct.Struct("=II")
DRM_IOCTL_VGEM_FENCE_SIGNAL = _ioc(_WRITE, DRM_COMMAND_BASE + 0x2, _FENCE_SIGNAL.size)  # 0x40086442
VGEM_FENCE_TIMEOUT = 10.0  # seconds: the driver signals any fence itself after this


def driver_name(fd: int) -> str:
    """The DRM driver behind ``fd`` (DRM_IOCTL_VERSION's name: "vgem", "i915", ...)."""
    # The kernel copies at most name_len bytes to the name pointer (date and desc: length 0, skipped).
    name = ctypes.create_string_buffer(64)
    request = bytearray(_VERSION.pack(0, 0, 0, len(name), ctypes.addressof(name), 0, 0, 0, 0))
    fcntl.ioctl(fd, DRM_IOCTL_VERSION, request, True)
    length = min(_VERSION.unpack(request)[3], len(name))
    return name.raw[:length].decode(errors="replace")


def find_vgem() -> str | None:
    """The /dev/dri/card* node whose driver is vgem, or None."""
    for path in sorted(glob.glob("/dev/dri/card*")):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if driver_name(fd) == "vgem":
                return path
        except OSError:
            pass
        finally:
            os.close(fd)
    return None


@dataclass
class DumbBuffer:
    handle: int  # the GEM handle on the card's fd
    fd: int  # its dma-buf (O_RDWR | O_CLOEXEC); closed by Vgem.close() unless taken
    size: int
    pitch: int


class Vgem:
    """An open vgem card: dumb buffers as dma-bufs, fences attached and signalled on demand."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self._buffers: list[DumbBuffer] = []

    @classmethod
    def open(cls, path: str | None = None) -> Vgem:
        path = path or find_vgem()
        if path is None:
            raise FileNotFoundError(
                "no vgem DRM device: no /dev/dri/card* reports driver 'vgem' (load vgem.ko: CONFIG_DRM_VGEM)"
            )
        return cls(os.open(path, os.O_RDWR | os.O_CLOEXEC), path)

    def dumb_buffer(self, size: int) -> DumbBuffer:
        """A dumb buffer of at least ``size`` bytes (width x 1 rows of 8-bit pixels), exported as a dma-buf."""
        request = bytearray(_CREATE_DUMB.pack(1, size, 8, 0, 0, 0, 0))
        fcntl.ioctl(self.fd, DRM_IOCTL_MODE_CREATE_DUMB, request, True)
        _, _, _, _, handle, pitch, real_size = _CREATE_DUMB.unpack(request)
        prime = bytearray(_PRIME.pack(handle, DRM_CLOEXEC | DRM_RDWR, -1))
        try:
            fcntl.ioctl(self.fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, prime, True)
        except OSError:
            self._gem_close(handle)
            raise
        buffer = DumbBuffer(handle=handle, fd=_PRIME.unpack(prime)[2], size=real_size, pitch=pitch)
        self._buffers.append(buffer)
        return buffer

    def import_dmabuf(self, fd: int) -> int:
        """The GEM handle of a vgem dma-buf another process exported (PRIME import), e.g. to attach_fence() on it."""
        request = bytearray(_PRIME.pack(0, 0, fd))
        fcntl.ioctl(self.fd, DRM_IOCTL_PRIME_FD_TO_HANDLE, request, True)
        handle: int = _PRIME.unpack(request)[0]
        return handle

    def attach_fence(self, handle: int, write: bool = True) -> int:
        """Attach a new unsignalled fence to the buffer; return its id for signal().

        It signals by itself VGEM_FENCE_TIMEOUT (10) s later. EBUSY when a
        conflicting fence is pending (any fence, for a write fence).
        """
        request = bytearray(_FENCE_ATTACH.pack(handle, VGEM_FENCE_WRITE if write else 0, 0, 0))
        fcntl.ioctl(self.fd, DRM_IOCTL_VGEM_FENCE_ATTACH, request, True)
        fence: int = _FENCE_ATTACH.unpack(request)[2]
        return fence

    def signal(self, fence: int) -> None:
        """Signal a fence from attach_fence(). TimeoutError if the driver's 10 s timeout signalled it first."""
        try:
            fcntl.ioctl(self.fd, DRM_IOCTL_VGEM_FENCE_SIGNAL, _FENCE_SIGNAL.pack(fence, 0))
        except OSError as error:
            if error.errno == errno.ETIMEDOUT:
                raise TimeoutError(
                    f"vgem fence {fence} had already expired: the driver signals fences "
                    f"{VGEM_FENCE_TIMEOUT:.0f} s after attach"
                ) from None
            raise

    def _gem_close(self, handle: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.fd, DRM_IOCTL_GEM_CLOSE, _GEM_CLOSE.pack(handle, 0))

    def close(self) -> None:
        """Close the dma-bufs, the GEM handles and the card (pending fences are signalled by the driver)."""
        for buffer in self._buffers:
            with contextlib.suppress(OSError):
                os.close(buffer.fd)
            self._gem_close(buffer.handle)
        self._buffers.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Vgem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
