"""GStreamer for the element tests: installed with apt when missing (as tests/kernel installs qemu).

The tests skip, saying why, only where apt cannot run (not root, no
apt-get, the packages cannot be fetched).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


def _missing() -> list[str]:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}\n", *PACKAGES], capture_output=True, text=True)
    installed = [line.endswith(" installed") for line in result.stdout.splitlines()]
    if len(installed) != len(PACKAGES):
        return list(PACKAGES)
    return [name for name, ok in zip(PACKAGES, installed) if not ok]


def _apt_install(packages: list[str]) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-query") is None:
        pytest.skip(f"GStreamer is missing ({', '.join(packages)}) and this host has no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip(f"GStreamer is missing and installing it needs root: apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=900)
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"GStreamer cannot be installed here (apt-get: {tail})")


@pytest.fixture(scope="session")
def gst_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment that finds the elements: GST_PLUGIN_PATH at the checkout, a registry of our own."""
    missing = _missing() if shutil.which("dpkg-query") else list(PACKAGES)
    if missing:
        _apt_install(missing)
    env = {
        **os.environ,
        "GST_PLUGIN_PATH": str(PLUGIN_DIR),
        # A fresh registry: the user's cache may hold an older scan of the elements.
        "GST_REGISTRY": str(tmp_path_factory.mktemp("gst") / "registry.bin"),
    }
    for tool in ("gst-launch-1.0", "gst-inspect-1.0"):
        assert shutil.which(tool), f"{tool} is not on PATH although {PACKAGES[0]} is installed"
    return env
