"""Copies off the event loop: a segments->memfd-copy map must not freeze the broker.

A map through the copying converter copies up to max_copy_bytes (64 MiB by
default). Copy importers in other processes attach and map a buffer of that
size in a loop, over call channels and over gRPC, while an honest client
(its own process) attaches and maps another buffer beside them. No honest
attach+map may wait 250 ms or more, every copy must hold the bytes of the
extents in order, the broker's fd count stays under half its limit and its
log small, and fds and RSS come back to their baseline once the copiers are
gone.
"""

from __future__ import annotations

import json
import os
import time

import bufbroker
from tests.adversarial.honest import HONEST_IMPORTER
from tests.adversarial.test_bounded_requests import HONEST_LIMIT
from tests.conftest import BrokerProcess

CATEGORY = "slow and stuck clients"
MAX_COPY_BYTES = 64 << 20  # the broker's default max_copy_bytes
QUARTER = MAX_COPY_BYTES // 4
# The buffer's extents, out of order: the copy holds them in this order.
EXTENTS = [(3 * QUARTER, QUARTER), (0, QUARTER), (2 * QUARTER, QUARTER), (QUARTER, QUARTER)]
ATTACK_SECONDS = 3.0
COPIERS = ("calls", "grpc") * 3  # one session (process) each
THREADS = 4  # per copier session: each has at most one map in flight, within max_copies_per_session
MAX_LOG_BYTES = 1 << 20
RSS_SLACK = 32 << 20  # less than one copy: the broker kept no copy in its memory


def head(n: int) -> bytes:
    return f"extent {n} starts here".encode()


def tail(n: int) -> bytes:
    return f"extent {n} ends here".encode()


# Given NAME, THREADS, VIA, QUARTER and MARKS (each extent's head and tail) first: copies in THREADS
# threads until stdin closes, each attaching with map and mapping 3 more times, on call channels
# (VIA "calls"; gRPC when all are busy) or gRPC (VIA "grpc"); checks every copy, closes it and
# detaches (which drops its mappings); prints {"copies", "bad", "errors"}.
COPIER = r"""
import json, mmap, os, sys, threading
import bufbroker
from bufbroker.v1 import broker_pb2 as pb

stop = threading.Event()
lock = threading.Lock()
out = {"copies": 0, "bad": [], "errors": []}


def check(fd, size):
    if size != 4 * QUARTER:
        return f"size {size}"
    with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as region:
        for n, (first, last) in enumerate(MARKS):
            first, last = first.encode(), last.encode()
            start, end = n * QUARTER, (n + 1) * QUARTER
            if region[start : start + len(first)] != first or region[end - len(last) : end] != last:
                return f"extent {n}: {region[start : start + len(first)]!r} ... {region[end - len(last) : end]!r}"
    return ""


def copier(session):
    transport = session._transport
    match = bufbroker.Memfd(allow_copy=True).match("read")

    def call(method, request):
        if VIA == "calls":
            return transport.fast_call(method, request)
        response, link = transport._call(method, request)
        mapped = response.mapping if method == "Attach" else response
        return response, link.take_fds(mapped.fd_ticket, mapped.fd_count)

    while not stop.is_set():
        try:
            attached, fds = call("Attach", pb.AttachRequest(buffer_name=NAME, accept=[match], map=True))
            mapped = [(attached.mapping, fds)]
            for _ in range(3):
                mapped.append(call("Map", pb.MapRequest(attachment_id=attached.attachment_id)))
            for response, fds in mapped:
                problem = check(fds[0], response.size)
                for fd in fds:
                    os.close(fd)
                with lock:
                    out["copies"] += 1
                    if problem and len(out["bad"]) < 5:
                        out["bad"].append(problem)
            transport.fast_call("Detach", pb.DetachRequest(attachment_id=attached.attachment_id))
        except bufbroker.BrokerError as error:
            with lock:
                if len(out["errors"]) < 5:
                    out["errors"].append(f"{type(error).__name__}: {error}")


with bufbroker.connect(sys.argv[1]) as session:
    threads = [threading.Thread(target=copier, args=(session,)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    for thread in threads:
        thread.join()
print(json.dumps(out), flush=True)
"""


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no Max open files line")


def _copy_buffer(exporter: bufbroker.Session, name: str) -> int:
    """A sparse memfd of max_copy_bytes, offered as 4 extents out of order, each marked at both ends."""
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, MAX_COPY_BYTES)
    for n, (offset, length) in enumerate(EXTENTS):
        os.pwrite(fd, head(n), offset)
        os.pwrite(fd, tail(n), offset + length - len(tail(n)))
    extents = [bufbroker.Extent(offset, length) for offset, length in EXTENTS]
    exporter.export(fd=fd, name=name, offers=[bufbroker.Segments(extents=extents)])
    return fd


def test_copy_maps_run_off_the_event_loop_beside_an_honest_client(broker: BrokerProcess, reliability):
    limit = _nofile(broker.pid)
    marks = [[head(n).decode(), tail(n).decode()] for n in range(len(EXTENTS))]
    with broker.connect() as exporter:
        fd = _copy_buffer(exporter, "big")
        rss_before = _rss(broker.pid)
        honest = broker.spawn_code(HONEST_IMPORTER)
        assert honest.stdout.readline().strip() == "ready"
        copiers = [
            broker.spawn_code(
                f"NAME, THREADS, VIA, QUARTER, MARKS = 'big', {THREADS}, {via!r}, {QUARTER}, {marks!r}\n" + COPIER
            )
            for via in COPIERS
        ]
        for copier in copiers:
            assert copier.stdout.readline().strip() == "ready"
        peak_fds, peak_rss = broker.fd_count(), _rss(broker.pid)
        deadline = time.monotonic() + ATTACK_SECONDS
        while time.monotonic() < deadline:
            peak_fds, peak_rss = max(peak_fds, broker.fd_count()), max(peak_rss, _rss(broker.pid))
            time.sleep(0.01)
        results = []
        for copier in copiers:
            out, _ = copier.communicate("stop", timeout=60)
            assert copier.returncode == 0, out
            results.append(json.loads(out.strip().splitlines()[-1]))
        out, _ = honest.communicate("stop", timeout=30)
        assert honest.returncode == 0, out
        waits = json.loads(out.strip().splitlines()[-1])
    os.close(fd)

    copies = sum(r["copies"] for r in results)
    for result in results:
        assert not result["bad"], f"a copy did not hold the extents' bytes in order: {result['bad']}"
        assert not result["errors"], f"a copy map was refused: {result['errors']}"
        assert result["copies"] >= 4, f"a copier got too few copies done: {results}"
    assert waits["count"] > 10, f"the honest client got too few attach+maps done: {waits}"
    assert waits["longest"] < HONEST_LIMIT, (
        f"an honest attach+map waited {waits['longest'] * 1000:.0f} ms beside {copies} copies of {MAX_COPY_BYTES} bytes"
    )
    assert peak_fds < limit // 2, f"the broker held {peak_fds} fds, its limit is {limit}"
    size = broker.log_path.stat().st_size
    assert size < MAX_LOG_BYTES, f"the broker logged {size} bytes"
    count = broker.wait_for_fds(broker.baseline_fds, timeout=5)
    assert count == broker.baseline_fds, f"broker fds {count}, baseline {broker.baseline_fds}"
    assert broker.stats().fds_held == 0
    rss_after = _rss(broker.pid)
    assert rss_after < rss_before + RSS_SLACK, f"broker RSS {rss_before >> 20} MiB before, {rss_after >> 20} MiB after"
    reliability.record(
        CATEGORY,
        cases=copies,
        faults=len(COPIERS),
        note=(
            f"{copies} copies of {MAX_COPY_BYTES >> 20} MiB (segments->memfd-copy; {len(COPIERS) * THREADS} threads "
            f"in {len(COPIERS)} sessions, call channels and gRPC) beside an honest client: its longest attach+map "
            f"{waits['longest'] * 1000:.0f} ms, "
            f"broker fds at most {peak_fds} (limit {limit}), RSS {rss_before >> 20} -> {peak_rss >> 20} -> "
            f"{rss_after >> 20} MiB"
        ),
    )
    print(
        f"copies {copies}, honest longest {waits['longest'] * 1000:.1f} ms, p99 {waits['p99'] * 1000:.1f} ms, "
        f"median {waits['median'] * 1000:.1f} ms over {waits['count']}, "
        f"peak fds {peak_fds}/{limit}, rss {rss_before >> 20}/{peak_rss >> 20}/{rss_after >> 20} MiB"
    )
