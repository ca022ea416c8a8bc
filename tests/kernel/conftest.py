"""The kernel lane's fixtures: the devices a test needs, or a loud skip.

Tests marked ``kernel`` need a kernel with /dev/udmabuf or /dev/dma_heap, or
the vgem DRM driver (the fence tests).
On a host without them they are skipped, naming what is missing and where
they run instead (tests/kernel/test_lane.py boots a VM that has both). In
that VM (BUFBROKER_KERNEL_LANE=1, set by run_lane.py) a missing device is
a failure, not a skip: the lane exists to run these tests.
"""

from __future__ import annotations

import os

import pytest

IN_LANE = bool(os.environ.get("BUFBROKER_KERNEL_LANE"))


def require_device(path: str, what: str) -> None:
    if os.path.exists(path):
        return
    if IN_LANE:
        pytest.fail(f"the kernel lane's guest has no {path} ({what}); is the kernel built with it?")
    pytest.skip(
        f"needs {path} ({what}), which this host's kernel lacks; tests/kernel/test_lane.py runs this "
        "test in a qemu VM whose kernel has it"
    )


@pytest.fixture
def udmabuf() -> str:
    """/dev/udmabuf, or a skip (a failure in the lane)."""
    require_device("/dev/udmabuf", "CONFIG_UDMABUF")
    return "/dev/udmabuf"


@pytest.fixture
def system_heap() -> str:
    """The system dma-heap's name, or a skip (a failure in the lane)."""
    require_device("/dev/dma_heap/system", "CONFIG_DMABUF_HEAPS_SYSTEM")
    return "system"


@pytest.fixture
def vgem_card():
    """An open vgem DRM device (tests/kernel/vgem.py), or a skip (a failure in the lane)."""
    from tests.kernel.vgem import Vgem, find_vgem

    path = find_vgem()
    if path is None:
        have = ", ".join(sorted(os.listdir("/dev/dri"))) if os.path.isdir("/dev/dri") else "no /dev/dri"
        what = f"a vgem DRM device: no /dev/dri/card* reports driver 'vgem' ({have}); load vgem.ko (CONFIG_DRM_VGEM)"
        if IN_LANE:
            pytest.fail(f"the kernel lane's guest has {what}; did the init script's insmod of vgem fail?")
        pytest.skip(f"needs {what}; tests/kernel/test_lane.py runs this test in a qemu VM that loads vgem")
    card = Vgem.open(path)
    yield card
    card.close()
