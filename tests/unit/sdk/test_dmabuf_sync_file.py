"""bufbroker.dmabuf's sync_file ioctls on a host with no dma-buf: numbers, packing, errors.

The real round trips (a pending vgem fence exported and imported) run in
the kernel lane: tests/kernel/test_vgem_fences.py. Here: the ioctl numbers
match include/uapi/linux/dma-buf.h (_IOWR('b', 2, 8) and _IOW('b', 3, 8)),
the struct is {__u32 flags; __s32 fd}, and each failure says what is wrong
(fd not open, not a dma-buf, kernel too old) keeping the kernel's errno.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

import pytest

from bufbroker import dmabuf
from bufbroker.buffers import make_memfd
from tests.kernel import vgem


def test_ioctl_numbers_and_struct_layout_match_the_kernel_headers():
    assert dmabuf.DMA_BUF_IOCTL_EXPORT_SYNC_FILE == 0xC0086202
    assert dmabuf.DMA_BUF_IOCTL_IMPORT_SYNC_FILE == 0x40086203
    assert dmabuf.DMA_BUF_IOCTL_SYNC == 0x40086200  # unchanged, same _ioc
    assert dmabuf._SYNC_FILE.size == 8
    assert dmabuf._SYNC_FILE.pack(dmabuf.DMA_BUF_SYNC_WRITE, -1) == struct.pack("<Ii", 2, -1)
    assert dmabuf._SYNC_FILE.unpack(struct.pack("<Ii", 1, 17)) == (1, 17)


def test_vgem_helper_numbers_match_the_drm_headers():
    # Checked against drm.h, drm_mode.h (libdrm 2.4.114) and vgem_drm.h with a C program (x86_64).
    assert vgem.DRM_IOCTL_VERSION == 0xC0406400 and vgem._VERSION.size == 64
    assert vgem.DRM_IOCTL_GEM_CLOSE == 0x40086409
    assert vgem.DRM_IOCTL_PRIME_HANDLE_TO_FD == 0xC00C642D and vgem._PRIME.size == 12
    assert vgem.DRM_IOCTL_MODE_CREATE_DUMB == 0xC02064B2 and vgem._CREATE_DUMB.size == 32
    assert vgem.DRM_IOCTL_VGEM_FENCE_ATTACH == 0xC0106441
    assert vgem.DRM_IOCTL_VGEM_FENCE_SIGNAL == 0x40086442
    assert (vgem.DRM_CLOEXEC, vgem.DRM_RDWR) == (0o2000000, 2)


@pytest.mark.parametrize("call", ["export", "import"])
def test_a_closed_fd_is_ebadf_saying_so(call):
    fd = make_memfd("closed", 4096)
    os.close(fd)
    with pytest.raises(OSError, match=f"fd {fd} is not open") as raised:
        if call == "export":
            dmabuf.export_sync_file(fd, write=False)
        else:
            dmabuf.import_sync_file(fd, 0, write=True)
    assert raised.value.errno == errno.EBADF


@pytest.mark.parametrize("call", ["export", "import"])
def test_a_memfd_is_not_a_dma_buf(call):
    fd = make_memfd("plain", 4096)
    try:
        with pytest.raises(OSError, match="is not a dma-buf") as raised:
            if call == "export":
                dmabuf.export_sync_file(fd, write=True)
            else:
                dmabuf.import_sync_file(fd, fd, write=False)
        assert raised.value.errno == errno.ENOTTY
        assert not isinstance(raised.value, dmabuf.SyncFileUnsupported)
    finally:
        os.close(fd)


@pytest.mark.parametrize("call", ["export", "import"])
def test_enotty_on_a_dma_buf_names_the_kernel_needed(call, monkeypatch):
    # A real ENOTTY from the kernel (a memfd has no such ioctl), taken for a dma-buf's: an old kernel's answer.
    monkeypatch.setattr(dmabuf, "is_dmabuf", lambda fd: True)
    monkeypatch.setattr(dmabuf, "_kernel_release", lambda: "5.15.0-old")
    fd = make_memfd("old-kernel", 4096)
    try:
        with pytest.raises(dmabuf.SyncFileUnsupported) as raised:
            if call == "export":
                dmabuf.export_sync_file(fd, write=False)
            else:
                dmabuf.import_sync_file(fd, fd, write=True)
    finally:
        os.close(fd)
    message = str(raised.value)
    assert raised.value.errno == errno.ENOTTY
    assert "needs Linux 6.0 or newer" in message and "5.20" in message and "CONFIG_SYNC_FILE" in message
    assert "this kernel is 5.15.0-old" in message
    assert f"DMA_BUF_IOCTL_{call.upper()}_SYNC_FILE" in message


def test_the_flags_sent_are_read_or_write(monkeypatch):
    sent: list[tuple[int, int, int]] = []

    def fake_ioctl(fd: int, request: int, arg: bytes | bytearray, mutate: bool = False) -> int:
        flags, fence = dmabuf._SYNC_FILE.unpack(bytes(arg))
        sent.append((request, flags, fence))
        if isinstance(arg, bytearray):
            arg[:] = dmabuf._SYNC_FILE.pack(flags, 42)
        return 0

    monkeypatch.setattr(fcntl, "ioctl", fake_ioctl)
    assert dmabuf.export_sync_file(5, write=False) == 42
    assert dmabuf.export_sync_file(5, write=True) == 42
    dmabuf.import_sync_file(5, 9, write=True)
    dmabuf.import_sync_file(5, 9, write=False)
    export, imp = dmabuf.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, dmabuf.DMA_BUF_IOCTL_IMPORT_SYNC_FILE
    assert sent == [(export, 1, -1), (export, 2, -1), (imp, 2, 9), (imp, 1, 9)]


def test_is_sync_file_is_false_for_other_fds():
    fd = make_memfd("plain", 4096)
    try:
        assert not dmabuf.is_sync_file(fd)
    finally:
        os.close(fd)
    assert not dmabuf.is_sync_file(fd)  # closed
    read_end, write_end = os.pipe()
    assert not dmabuf.is_sync_file(read_end)
    os.close(read_end)
    os.close(write_end)


def test_no_vgem_card_here_is_none_not_an_error():
    if os.path.isdir("/dev/dri"):
        pytest.skip("this host has /dev/dri")
    assert vgem.find_vgem() is None
    with pytest.raises(FileNotFoundError, match="no vgem DRM device"):
        vgem.Vgem.open()


def test_the_lane_loads_vgem_after_its_dependencies(tmp_path: Path):
    from tests.kernel import run_lane

    release = tmp_path / "6.12.0-test"
    modules = {
        "kernel/drivers/gpu/drm/drm.ko": b"",
        "kernel/drivers/gpu/drm/drm_kms_helper.ko": b"drm",
        "kernel/drivers/gpu/drm/drm_shmem_helper.ko": b"drm",
        "kernel/drivers/gpu/drm/vgem/vgem.ko": b"drm_shmem_helper,drm_kms_helper,drm",
        "kernel/fs/9p/9p.ko": b"9pnet,netfs",
        "kernel/net/9p/9pnet.ko": b"",
        "kernel/net/9p/9pnet_virtio.ko": b"9pnet",
        "kernel/fs/netfs/netfs.ko": b"",
    }
    for path, depends in modules.items():
        (release / path).parent.mkdir(parents=True, exist_ok=True)
        (release / path).write_bytes(b"\x7fELF...\0license=GPL\0depends=" + depends + b"\0name=x\0")
    tree = run_lane.ModuleTree(tmp_path)
    order = tree.load_order(run_lane.MODULES)
    assert order == ["netfs", "9pnet", "9pnet_virtio", "9p"]
    assert tree.load_order(run_lane.EXTRA_MODULES) == ["drm", "drm_shmem_helper", "drm_kms_helper", "vgem"]
    with pytest.raises(run_lane.LaneUnavailable, match="no module nope"):
        tree.load_order(("nope",))
