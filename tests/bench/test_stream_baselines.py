"""The `streams` bench baselines in --quick mode: each runs, gives sane numbers and leaves nothing behind.

Benchmarks are not timed tests: this checks that every baseline carries frames
between separate processes with every frame's seq checked, that its numbers are
well formed (p50 > 0, p99 >= p50, frames/s > 0), and that no child process,
temp file or shared memory segment outlives it. Never the values themselves.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench import stream_baselines as sb


def _shm_names() -> set[str]:
    """Our segments only: other tests may run beside this one and create their own."""
    return {name for name in os.listdir("/dev/shm") if name.startswith("bbs")}


def _no_children_left() -> list[int]:
    deadline = time.monotonic() + 5
    while (left := sb.children_of()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _check(entry: dict, consumers: int = 1) -> None:
    assert "error" not in entry, entry
    assert entry["frames"] > 0, entry
    assert entry["consumers"] == consumers
    assert entry["errors"] == 0, entry["notes"]
    assert entry["paced_samples"] == consumers * sb.plan(quick=True)["paced"], entry
    assert entry["p50_us"] is not None and entry["p50_us"] > 0, entry
    assert entry["p99_us"] >= entry["p50_us"], entry
    assert entry["p50_us"] < 5_000_000, entry  # a hand-off of seconds means the run measured a hang
    assert entry["fps"] is not None and entry["fps"] > 0, entry
    assert entry["unpaced_frames"] > 0
    for key in ("name", "p50_us", "p99_us", "fps", "frames", "notes"):
        assert key in entry


RUNS = {
    "floor": lambda tmp: (sb.floor(quick=True, workdir=tmp), 1),
    "floor_1to4": lambda tmp: (sb.floor(quick=True, consumers=4, workdir=tmp), 4),
    "mp_queue": lambda tmp: (sb.mp_queue(quick=True, workdir=tmp), 1),
    "grpc_bytes": lambda tmp: (sb.grpc_bytes(quick=True, workdir=tmp), 1),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("baseline", list(RUNS))
def test_baseline_quick(baseline: str, tmp_path: Path) -> None:
    shm_before = _shm_names()
    entry, consumers = RUNS[baseline](tmp_path)
    _check(entry, consumers)
    assert _no_children_left() == [], "a baseline left a child process running"
    assert list(tmp_path.iterdir()) == [], "a baseline left files in its work dir"
    assert _shm_names() - shm_before == set(), "a baseline left shared memory behind"
    if "shm_name" in entry:
        assert not os.path.exists(f"/dev/shm/{entry['shm_name']}"), "the shared_memory segment was not unlinked"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("consumers", [1, 4])
def test_iceoryx2_quick(consumers: int, tmp_path: Path) -> None:
    reason = sb.iceoryx2_importable()
    if reason:
        entry = sb.iceoryx2(quick=True, consumers=consumers, workdir=tmp_path)
        assert entry["notes"].startswith("skipped:") and entry["p50_us"] is None
        pytest.skip(f"iceoryx2 not importable: {reason}")
    shm_before = _shm_names()
    entry = sb.iceoryx2(quick=True, consumers=consumers, workdir=tmp_path)
    _check(entry, consumers)
    assert _no_children_left() == []
    assert list(tmp_path.iterdir()) == []
    assert _shm_names() - shm_before == set(), "iceoryx2 left shared memory behind"


@pytest.mark.timeout(30)
def test_a_failing_peer_is_reported_and_reaped(tmp_path: Path) -> None:
    """A peer that cannot start fails the run with its error, and nothing stays running."""
    knobs = sb.plan(quick=True) | {"timeout": 3.0}
    roles = [("consumer", sb._peer_args("floor", str(tmp_path / "nobody.sock"), knobs, 1))]
    with pytest.raises(RuntimeError, match="consumer"):
        sb._run_peers(roles, tmp_path, knobs["timeout"])
    assert _no_children_left() == []
