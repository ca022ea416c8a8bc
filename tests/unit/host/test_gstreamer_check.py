"""bufbroker doctor's GStreamer check, with the real gst-inspect-1.0 and the real element files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bufbroker_broker.host.gstreamer_check import ELEMENTS, PLUGIN_DIR, gstreamer_checks

needs_gst = pytest.mark.skipif(
    shutil.which("gst-inspect-1.0") is None
    or not Path("/usr/lib/x86_64-linux-gnu/gstreamer-1.0/libgstpython.so").exists(),
    reason="GStreamer with its Python plugin loader is not installed (tests/gstreamer installs it)",
)


@needs_gst
def test_elements_of_the_checkout_load():
    checks = gstreamer_checks()
    assert [check.name for check in checks] == list(ELEMENTS)
    assert all(check.ok for check in checks), checks
    assert all(str(PLUGIN_DIR) in check.detail for check in checks)


@needs_gst
def test_elements_outside_a_checkout_fail_with_the_sdk_import_error_and_its_fix(tmp_path):
    shutil.copytree(PLUGIN_DIR / "python", tmp_path / "python", ignore=shutil.ignore_patterns("__pycache__"))
    checks = gstreamer_checks(tmp_path)
    assert not any(check.ok for check in checks)
    for check in checks:
        assert "cannot import the bufbroker SDK" in check.detail, check.detail
        assert "BUFBROKER_PYTHONPATH" in check.fix


def test_missing_gstreamer_says_which_packages_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    (check,) = gstreamer_checks()
    assert not check.ok and "gst-inspect-1.0 is not installed" in check.detail
    assert "gstreamer1.0-python3-plugin-loader" in check.fix
