"""What `pip install .` puts into site-packages: our two import names, nothing generic."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_only_bufbroker_and_bufbroker_broker(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("bufbroker-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert sorted(archive.read(top_level).decode().split()) == ["bufbroker", "bufbroker_broker"]
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"bufbroker", "bufbroker_broker"}, tops
    # The daemon's dashboard, the SDK's type marker and the generated protocol code travel; bench and examples do not.
    assert "bufbroker_broker/server/http/dashboard/app.js" in names
    assert "bufbroker/py.typed" in names and "bufbroker_broker/py.typed" in names
    assert "bufbroker/v1/broker_pb2.py" in names
    assert not any(name.startswith(("bench/", "examples/")) or "/bench/" in name for name in names)
