"""`bufbroker bench --quick` as a smoke test: it runs every group and the JSON is complete.

Benchmarks are not timed tests: this checks the shape of the report (every
result name from issue 7, each with value, unit, baseline, baseline_value and
ratio, machine info), never the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.runner import REQUIRED, RESULT_KEYS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_bench_quick_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    started = time.monotonic()
    script = Path(sys.executable).parent / "bufbroker"  # the installed console script, as users run it
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bufbroker_broker"]
    # This checkout's bench/ first, so an editable install made before bench/
    # became a package (pyproject) still runs it.
    path = os.environ.get("PYTHONPATH", "")
    run = subprocess.run(
        [*command, "bench", "--quick", "--json", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")},
        capture_output=True,
        text=True,
        timeout=110,
    )
    elapsed = time.monotonic() - started
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"
    assert elapsed < 60, f"bench --quick took {elapsed:.1f} s; keep the smoke run under 60 s"

    report = json.loads(out.read_text())
    assert report["quick"] is True
    machine = report["machine"]
    for key in ("kernel", "python", "cpus", "cpus_usable", "timestamp_utc"):
        assert key in machine, f"machine info lacks {key}: {machine}"

    by_name = {entry["name"]: entry for entry in report["results"]}
    assert len(by_name) == len(report["results"]), "result names repeat"
    for group, names in REQUIRED.items():
        for name in names:
            assert name in by_name, f"{group}: {name} missing from the report"
            entry = by_name[name]
            for key in RESULT_KEYS:
                assert key in entry, f"{name} lacks {key}: {entry}"
            assert "error" not in entry, f"{name} failed: {entry['error']}"
            assert entry["value"] is not None or entry.get("note"), f"{name} has no value and no reason: {entry}"
            assert entry["baseline"], f"{name} names no baseline"
            assert entry["group"] == group
    # the targets the issue sets carry them, with a verdict
    for name in [n for names in REQUIRED.values() for n in names]:
        assert "target" in by_name[name] and "met" in by_name[name], f"{name} carries no target/verdict"
    # the table went to stdout
    for name in REQUIRED["control_plane"]:
        assert name in run.stdout
