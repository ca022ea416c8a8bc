"""A concurrency worker process: THREADS importer clients, each its own session.

Prints {"ready": ...} once every client is connected, then for each stdin
line `go MODE SECONDS [RATE]` (RATE: cycles/s per thread, paced) runs every thread for SECONDS and prints the cycle
count, the per-cycle latencies (ms) and the error count.
MODE `bufbroker`: attach(map=True) -> mmap -> unmap -> detach.
MODE `echo`: one bare gRPC echo per cycle on the thread's own channel.
"""

from __future__ import annotations

import sys
import threading
import time

import grpc

import bufbroker
from bench.common import ECHO_METHOD, emit, now


def main(socket_dir: str, echo_socket: str, threads: int, name: str) -> None:
    sessions = [bufbroker.connect(socket_dir) for _ in range(threads)]
    channels = [grpc.insecure_channel(f"unix:{echo_socket}") for _ in range(threads)]
    echoes = [channel.unary_unary(ECHO_METHOD) for channel in channels]
    for echo in echoes:
        echo(b"")
    emit({"ready": threads})
    try:
        for line in sys.stdin:
            words = line.split()
            if len(words) not in (3, 4) or words[0] != "go":
                continue
            mode, seconds = words[1], float(words[2])
            # optional: each thread paced at RATE cycles/s (open loop; latency counted
            # from the scheduled start, so falling behind shows up in it)
            interval = 1.0 / float(words[3]) if len(words) == 4 and float(words[3]) > 0 else 0.0
            counts = [0] * threads
            errors = [0] * threads
            latencies: list[list[float]] = [[] for _ in range(threads)]
            first_error: list[str] = []
            start = threading.Barrier(threads + 1)

            def run(i: int) -> None:
                session, echo = sessions[i], echoes[i]
                start.wait()
                end = time.monotonic() + seconds
                own = latencies[i]
                scheduled = now() + (interval * i / threads if interval else 0.0)
                while time.monotonic() < end:
                    if interval:
                        wait = scheduled - now()
                        if wait > 0:
                            time.sleep(wait)
                        t0 = scheduled
                        scheduled += interval
                    else:
                        t0 = now()
                    try:
                        if mode == "echo":
                            echo(b"")
                        else:
                            attachment = session.attach(name, accept=["memfd"], map=True)
                            mapping = attachment.mapping
                            mapping.memoryview()
                            mapping.close()
                            attachment.detach()
                    except Exception as error:
                        errors[i] += 1
                        if not first_error:
                            first_error.append(f"{type(error).__name__}: {error}")
                        continue
                    own.append((now() - t0) * 1000.0)
                    counts[i] += 1

            workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
            for worker in workers:
                worker.start()
            start.wait()
            t_start = now()
            for worker in workers:
                worker.join(seconds + 30)
            elapsed = now() - t_start
            emit(
                {
                    "cycles": sum(counts),
                    "errors": sum(errors),
                    "elapsed": elapsed,
                    "latencies_ms": [round(x, 4) for xs in latencies for x in xs],
                    "first_error": first_error[0] if first_error else "",
                }
            )
    finally:
        for channel in channels:
            channel.close()
        for session in sessions:
            session.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
