"""`bufbroker doctor`: do the GStreamer elements (bufbrokersink, bufbrokersrc) load on this host?

Runs ``gst-inspect-1.0 ELEMENT`` with ``GST_PLUGIN_PATH`` at the
checkout's ``clients/gstreamer`` (and a throwaway registry, so a stale
cache cannot answer for the current files). Optional: the broker does not
need GStreamer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bufbroker_broker.host.capabilities import Check

PLUGIN_DIR = Path(__file__).resolve().parents[3] / "clients" / "gstreamer"
ELEMENTS = ("bufbrokersink", "bufbrokersrc")
PACKAGES = "gstreamer1.0-tools python3-gst-1.0 gstreamer1.0-python3-plugin-loader gir1.2-gst-plugins-base-1.0"
INSPECT_TIMEOUT = 60.0

Runner = Callable[[Sequence[str], dict[str, str]], "subprocess.CompletedProcess[str]"]


def _run(command: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=INSPECT_TIMEOUT)


def _why(result: subprocess.CompletedProcess[str]) -> str:
    """The line of gst-inspect's output that says what went wrong (the SDK import error, if there is one)."""
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    for line in reversed(lines):
        if "ImportError" in line or "cannot import" in line:
            return line
    return lines[-1] if lines else f"exit status {result.returncode}"


def gstreamer_checks(plugin_dir: Path = PLUGIN_DIR, inspect: str | None = None, run: Runner = _run) -> list[Check]:
    """One Check per element: whether ``gst-inspect-1.0 ELEMENT`` finds it with GST_PLUGIN_PATH=plugin_dir."""
    tool = inspect or shutil.which("gst-inspect-1.0")
    if tool is None:
        return [
            Check(
                "gstreamer elements",
                False,
                "gst-inspect-1.0 is not installed: GStreamer is missing",
                f"apt-get install {PACKAGES}",
            )
        ]
    if not (plugin_dir / "python" / "bufbrokersrc.py").is_file():
        return [
            Check("gstreamer elements", False, f"no elements at {plugin_dir}/python", "run from a bufbroker checkout")
        ]
    checks = []
    with tempfile.TemporaryDirectory(prefix="bufbroker-doctor-gst-") as scratch:
        for element in ELEMENTS:
            # A registry per run: the loader prints why a plugin failed only while it scans it.
            registry = Path(scratch) / f"{element}.bin"
            env = {**os.environ, "GST_PLUGIN_PATH": str(plugin_dir), "GST_REGISTRY": str(registry)}
            try:
                result = run([tool, element], env)
            except subprocess.TimeoutExpired:
                checks.append(Check(element, False, f"gst-inspect-1.0 {element} took over {INSPECT_TIMEOUT:g} s", ""))
                continue
            if result.returncode == 0 and f"{element}" in result.stdout:
                checks.append(Check(element, True, f"loads (export GST_PLUGIN_PATH={plugin_dir})"))
                continue
            why = _why(result)
            if "cannot import the bufbroker SDK" not in why:
                fix = f"apt-get install {PACKAGES} (the Python plugin loader), then export GST_PLUGIN_PATH={plugin_dir}"
            else:
                fix = (
                    "make the SDK importable by the loader's /usr/bin/python3: set BUFBROKER_PYTHONPATH to dirs "
                    "holding bufbroker, grpcio and protobuf for that Python (see clients/gstreamer/README.md)"
                )
            checks.append(Check(element, False, f"gst-inspect-1.0 {element} fails: {why}", fix))
    return checks
