"""GStreamer for the element tests: installed with apt when missing (as tests/kernel installs qemu).

The tests skip, saying why, only where apt cannot run (not root, no
apt-get, the packages cannot be fetched).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.apt import apt_install, missing

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO_ROOT / "clients" / "gstreamer"
PACKAGES = (
    "gstreamer1.0-tools",
    "python3-gst-1.0",
    "gstreamer1.0-python3-plugin-loader",
    "gir1.2-gst-plugins-base-1.0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",  # shmsink/shmsrc, the baseline test_throughput measures beside the elements
)
PYTHON_LOADER = Path("/usr/lib/x86_64-linux-gnu/gstreamer-1.0/libgstpython.so")


@pytest.fixture(scope="session")
def gst_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment that finds the elements: GST_PLUGIN_PATH at the checkout, a registry of our own."""
    needed = missing(PACKAGES)
    if needed:
        apt_install(needed)
    env = {
        **os.environ,
        "GST_PLUGIN_PATH": str(PLUGIN_DIR),
        # A fresh registry: the user's cache may hold an older scan of the elements.
        "GST_REGISTRY": str(tmp_path_factory.mktemp("gst") / "registry.bin"),
    }
    for tool in ("gst-launch-1.0", "gst-inspect-1.0"):
        assert shutil.which(tool), f"{tool} is not on PATH although {PACKAGES[0]} is installed"
    return env
