"""Load and soak: 200 concurrent clients doing mixed operations for a bounded time.

CI runs 30 s; ``--soak MINUTES`` runs longer. Broker RSS and fd count are
sampled every second: after warm-up they must not grow beyond noise, and the
run must end with zero errors, zero bytes lost and zero fds leaked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT

CATEGORY = "load and soak"
CLIENTS = 200
PROCESSES = 4
CI_SECONDS = 30.0
RSS_NOISE_KB = 32 * 1024


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_200_concurrent_clients_lose_nothing_and_the_broker_does_not_grow(broker, reliability, request):
    soak = request.config.getoption("--soak")
    seconds = CI_SECONDS if soak is None else soak * 60
    before = broker.settled_fd_count()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.adversarial.load_worker",
                str(broker.socket_dir),
                str(CLIENTS // PROCESSES),
                str(seconds),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    broker.clients.extend(workers)
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    while any(w.poll() is None for w in workers) and time.monotonic() - started < seconds + 120:
        samples.append((time.monotonic() - started, _rss_kb(broker.pid), broker.fd_count()))
        time.sleep(1.0)
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, f"load worker exited {worker.returncode}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    ops = sum(r["ops"] for r in results)
    errors = sum(r["errors"] for r in results)
    lost = sum(r["lost"] for r in results)
    hung = sum(r["hung"] for r in results)
    leaked = max(0, broker.wait_for_fds(before, timeout=5) - before)
    # Growth after warm-up: compare the last third's peak with the second third's peak.
    third = max(1, len(samples) // 3)
    warm = max(s[1] for s in samples[third : 2 * third] or samples)
    late = max(s[1] for s in samples[2 * third :] or samples)
    peak_fds = max(s[2] for s in samples)
    samples_text = [r["samples"] for r in results if r["samples"]]
    assert errors == 0 and hung == 0, f"{errors} errors, {hung} clients hung: {samples_text}"
    assert lost == 0 and leaked == 0
    assert late - warm <= RSS_NOISE_KB, f"broker RSS grew from {warm} kB to {late} kB after warm-up"
    reliability.record(
        CATEGORY,
        cases=ops,
        fds_leaked=leaked,
        bytes_lost=lost,
        note=f"{CLIENTS} clients for {seconds:.0f} s: {ops} operations, {errors} errors; broker RSS {samples[0][1] // 1024} → "
        f"{warm // 1024} (warm) → {late // 1024} MiB (late), fds peak {peak_fds}, back to baseline {before}",
    )
