"""Debian packages for the tests that drive real tools (Chromium, Prometheus, GStreamer, podman).

Installed with apt when missing, as CI starts from a machine with only
what the repo installs; a test run that cannot install them (not root, no
apt-get) skips saying "NOT TESTED" and what is missing. An apt that runs
and fails fails the test: a broken install is not a reason to pretend.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence

import pytest

APT_TIMEOUT = 900  # seconds per apt-get command: a cold install of podman or Chromium takes minutes
_updated: list[bool] = []  # `apt-get update` runs once per test run


def missing(packages: Sequence[str]) -> list[str]:
    """Those of ``packages`` dpkg does not have installed."""
    if shutil.which("dpkg-query") is None:
        return list(packages)
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\n", *packages], capture_output=True, text=True
    )
    installed = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" installed")}
    return [name for name in packages if name not in installed]


def apt_install(packages: Sequence[str], progress: Callable[[str], None] = lambda line: None) -> None:
    """Install ``packages`` (after one `apt-get update` per run); skip loudly when this run cannot."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"NOT TESTED: needs Debian packages {', '.join(packages)}, which are missing, and this test run "
            "cannot install them (it is not root, or there is no apt-get)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = [] if _updated else [["apt-get", "update"]]
    commands.append(["apt-get", "install", "-y", "--no-install-recommends", *packages])
    for command in commands:
        progress(f"$ {shlex.join(command)}")
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT)
        if result.returncode != 0:
            pytest.fail(f"$ {shlex.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        if command[1] == "update":
            _updated.append(True)
