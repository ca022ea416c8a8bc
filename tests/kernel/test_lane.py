"""The host's view of the kernel lane: boot the VM, run tests/kernel in it, pass if they pass.

Not marked ``kernel``: this runs on the host (it is how `.ci/run` runs the
lane). tests/kernel/run_lane.py installs qemu and downloads a Debian 6.12
kernel if needed, boots it under TCG with this host's root shared
read-only, and runs ``pytest -m kernel tests/kernel`` inside against a real
broker and real client processes. The guest's console goes to
test-artifacts/kernel-lane.log and the wall time to
test-artifacts/kernel-lane.json. The test skips, with the runner's reason,
only when the lane cannot be set up here (qemu or the kernel cannot be
installed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().parent / "run_lane.py"
ARTIFACTS = REPO_ROOT / "test-artifacts"
SKIP_STATUS = 77
LANE_TIMEOUT = 1200


@pytest.mark.timeout(LANE_TIMEOUT + 120)
@pytest.mark.skipif(bool(os.environ.get("BUFBROKER_KERNEL_LANE")), reason="already inside the kernel lane's VM")
def test_kernel_lane_passes_in_a_vm_with_udmabuf_and_dma_heaps():
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, str(RUNNER), "--timeout", str(LANE_TIMEOUT)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=LANE_TIMEOUT + 60,
    )
    elapsed = time.monotonic() - started
    output = process.stdout
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "kernel-lane.log").write_text(output)
    summary = re.findall(r"^=+ (.*) in [\d.]+s(?: \(.*\))? =+$", output, re.M)
    (ARTIFACTS / "kernel-lane.json").write_text(
        json.dumps({"status": process.returncode, "wall_seconds": round(elapsed, 1), "guest_pytest": summary[-1:]})
        + "\n"
    )
    if process.returncode == SKIP_STATUS:
        reasons = [line.split("SKIP:", 1)[1].strip() for line in output.splitlines() if "[kernel-lane] SKIP:" in line]
        pytest.skip(f"KERNEL LANE NOT RUN: {reasons[-1] if reasons else 'the runner could not set it up'}")
    tail = "\n".join(output.splitlines()[-60:])
    assert process.returncode == 0, f"the kernel lane failed (status {process.returncode}); its log ends:\n{tail}"
    assert summary, f"the guest printed no pytest summary; its log ends:\n{tail}"
    result = summary[-1]
    # Only this file's tests are deselected (not marked kernel); nothing may fail or skip.
    assert re.fullmatch(r"\d+ passed(, 2 deselected)?", result), (
        f"the guest's pytest says {result!r}: every lane test must run and pass"
    )


def test_runner_skips_saying_why_when_qemu_cannot_be_installed():
    # With no PATH, neither qemu nor apt-get can be found: the runner must say so and exit 77.
    process = subprocess.run(
        [sys.executable, str(RUNNER)], env={"PATH": "/nonexistent"}, capture_output=True, text=True, timeout=60
    )
    assert process.returncode == SKIP_STATUS, process.stdout + process.stderr
    assert process.stdout.strip().splitlines()[-1].startswith("[kernel-lane] SKIP: ")
    assert "is not installed" in process.stdout or "needs root" in process.stdout
