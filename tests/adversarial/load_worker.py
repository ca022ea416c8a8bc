"""One load-test process: N threads, each a session doing mixed operations.

    python -m tests.adversarial.load_worker DIR CLIENTS SECONDS

Each thread loops until the time is up: export a buffer and fill it, attach
it from a second session of the same thread (alternating memfd and
segments), map, check every byte, unmap, detach, unregister; every fifth
round also lists buffers and explains. Prints one JSON line: ops, errors,
bytes lost, a few error messages.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import bufbroker

SIZE = 16 * 1024


def run_client(socket_dir: str, index: int, stop_at: float, totals: dict, lock: threading.Lock) -> None:
    ops = errors = lost = 0
    samples: list[str] = []
    pattern = bytes([index % 251]) * SIZE
    try:
        with (
            bufbroker.connect(socket_dir, reconnect=False) as exporter,
            bufbroker.connect(socket_dir, reconnect=False) as importer,
        ):
            round_ = 0
            while time.monotonic() < stop_at and round_ < 100000:
                round_ += 1
                try:
                    kind = ["memfd", "segments"][round_ % 2]
                    buffer = exporter.export(SIZE, offers=["segments", "memfd"])
                    buffer.memoryview()[:] = pattern
                    attachment = importer.attach(buffer.id, accept=[kind], map=True)
                    seen = bytes(attachment.mapping.memoryview()[:SIZE])
                    lost += sum(1 for a, b in zip(seen, pattern) if a != b) + SIZE - len(seen)
                    attachment.mapping.close()
                    attachment.detach()
                    if round_ % 5 == 0:
                        importer.buffers()
                        importer.explain(buffer.id, accept=["memfd"])
                        ops += 2
                    buffer.unregister()
                    ops += 6
                except bufbroker.BrokerError as error:
                    errors += 1
                    if len(samples) < 3:
                        samples.append(f"{type(error).__name__}: {error}")
    except Exception as error:  # connect failed: counts as an error, the run reports it
        errors += 1
        samples.append(f"{type(error).__name__}: {error}")
    with lock:
        totals["ops"] += ops
        totals["errors"] += errors
        totals["lost"] += lost
        totals["samples"].extend(samples[: max(0, 5 - len(totals["samples"]))])


def main() -> None:
    socket_dir, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    totals = {"ops": 0, "errors": 0, "lost": 0, "samples": []}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    threads = [threading.Thread(target=run_client, args=(socket_dir, n, stop_at, totals, lock)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    totals["hung"] = sum(1 for thread in threads if thread.is_alive())
    print(json.dumps(totals), flush=True)


if __name__ == "__main__":
    main()
