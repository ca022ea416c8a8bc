"""gRPC that a local user cannot exhaust: connection and long-RPC floods on grpc.sock.

Anyone who can reach the socket dir can connect to ``grpc.sock``. Against a
real broker started with ``nofile 256``, attacker processes open 600 raw
connections (more than the broker's fds), three in four completing the
HTTP/2 handshake and the rest sending nothing, or park hundreds of Attach
calls that wait 60 s for a buffer nobody registers, while an honest SDK
importer attaches and maps beside them. Measured: every honest attach+map
under 250 ms, the broker's fd count below half its limit, its log under
1 MB, every attacking connection closed by the broker within its idle or
handshake timeout, and afterwards fds and RSS back at baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import ExitStack

import bufbroker
from tests.adversarial.test_fd_exhaustion import LOW_NOFILE, MAX_LOG_BYTES, NOFILE, Watch
from tests.conftest import REPO_ROOT

CATEGORY = "fd exhaustion"
CONNECTIONS = 600  # more than the broker's nofile
ATTACKERS = 2
IDLE_TIMEOUT = 2.0
HANDSHAKE_TIMEOUT = 1.5
HONEST_BUDGET_S = 0.250
RSS_SLACK = 16 << 20  # allocator high-water marks: RSS need not fall all the way back
GRPC_ARGS = ("--grpc-idle-timeout", str(IDLE_TIMEOUT), "--grpc-handshake-timeout", str(HANDSHAKE_TIMEOUT))

# One attacker process: CONNECTIONS raw sockets to grpc.sock; 3 in 4 send the HTTP/2 client preface and an
# empty SETTINGS frame, the rest nothing. Prints what the broker did with them, then on each stdin line
# how many of them the broker has closed; exits on EOF.
CONNECTION_FLOOD = r"""
import json, select, socket, sys, time
sock_path, count = sys.argv[1] + "/grpc.sock", int(sys.argv[2])
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
socks, speaking, failed = [], {}, 0
for i in range(count):
    for attempt in range(50):  # a full listen backlog refuses connect(): the broker is closing the last ones
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(sock_path)
            if i % 4:
                s.sendall(PREFACE)
            break
        except OSError:
            s.close()
            time.sleep(0.05)
    else:
        failed += 1
        continue
    s.setblocking(False)
    socks.append(s)
    speaking[s] = bool(i % 4)
closed, settings = set(), set()
def poll(wait):
    deadline = time.monotonic() + wait
    while True:
        live = [s for s in socks if s not in closed]
        ready = select.select(live, [], [], max(0.0, deadline - time.monotonic()))[0] if live else []
        for s in ready:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                closed.add(s)
            elif data[3:4] == b"\x04":
                settings.add(s)  # the broker's SETTINGS: the HTTP/2 handshake completed
        if not ready and time.monotonic() >= deadline:
            return
poll(0.5)
print(json.dumps({"opened": len(socks), "failed": failed, "handshaken": len(settings), "closed": len(closed)}), flush=True)
for line in sys.stdin:
    poll(0.05)
    print(json.dumps({"closed": len(closed), "open": len(socks) - len(closed)}), flush=True)
"""

# One attacker process: CALLS Attach calls (40 per session) over CHANNELS separate connections, each waiting
# 60 s for a buffer nobody registers. Prints how they stand after a second (refused / still waiting); exits on EOF.
LONG_RPCS = r"""
import json, sys, time
from pathlib import Path
import grpc
from bufbroker.v1 import broker_pb2 as pb, broker_pb2_grpc as pb_grpc
from tests.raw_client import RawClient
socket_dir, channels, calls = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
PER_SESSION = 40
raws = [RawClient(socket_dir) for _ in range(calls // PER_SESSION)]  # a session vouches for few calls at once
options = [("grpc.use_local_subchannel_pool", 1)]  # each channel its own connection
stubs = [pb_grpc.BrokerStub(grpc.insecure_channel(f"unix:{socket_dir}/grpc.sock", options=options)) for _ in range(channels)]
request = pb.AttachRequest(buffer_name="nobody-registers-this", wait_seconds=60)
futures = [
    stubs[i % channels].Attach.future(request, metadata=raws[i // PER_SESSION].metadata, timeout=90) for i in range(calls)
]
time.sleep(1.5)
codes = {}
for f in futures:
    key = f.code().name if f.done() else "WAITING"
    codes[key] = codes.get(key, 0) + 1
print(json.dumps(codes), flush=True)
sys.stdin.read()
"""


def _spawn(broker, code: str, *args: object) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(broker.socket_dir), *map(str, args)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    broker.clients.append(process)  # killed and reaped by broker_factory's teardown too
    return process


def _ask(process: subprocess.Popen) -> dict:
    process.stdin.write("status\n")
    process.stdin.flush()
    return _line(process)


def _line(process: subprocess.Popen) -> dict:
    line = process.stdout.readline()
    assert line, f"an attacker exited with status {process.wait()}"
    return json.loads(line)


def _rss(broker) -> int:
    with open(f"/proc/{broker.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _end(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.stdin.close()
    for process in processes:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _fresh_attach_map(broker) -> float:
    """A new honest session (a new gRPC connection) exports, attaches and maps; seconds the attach+map took."""
    with broker.connect() as exporter, broker.connect() as importer:
        buffer = exporter.export(4096, offers=["memfd"])
        started = time.perf_counter()
        attachment = importer.attach(buffer.id, accept=["memfd"])
        mapping = attachment.map()
        took = time.perf_counter() - started
        mapping.close()
        attachment.detach()
        buffer.unregister()
    return took


def test_a_connection_flood_cannot_fill_the_fd_table(broker_factory, reliability):
    broker = broker_factory(*GRPC_ARGS, prefix=LOW_NOFILE)
    rss_before = _rss(broker)
    attackers: list[subprocess.Popen] = []
    with ExitStack() as stack:
        watch = Watch(broker, stack)
        time.sleep(0.2)
        attackers = [_spawn(broker, CONNECTION_FLOOD, CONNECTIONS // ATTACKERS) for _ in range(ATTACKERS)]
        stack.callback(_end, attackers)
        flood = [_line(attacker) for attacker in attackers]
        opened = sum(f["opened"] for f in flood)
        handshaken = sum(f["handshaken"] for f in flood)
        # connect() gives up (EAGAIN) on a few at most, while the broker's listen backlog is full.
        assert opened > CONNECTIONS - 20 and opened > NOFILE, flood
        assert handshaken > 0, f"no attacking connection completed the HTTP/2 handshake: {flood}"
        # Every attacking connection is closed by the broker (at the cap at once, else after a timeout).
        started = time.monotonic()
        while True:
            open_now = sum(_ask(attacker)["open"] for attacker in attackers)
            took = time.monotonic() - started
            if not open_now or took > IDLE_TIMEOUT + HANDSHAKE_TIMEOUT + 3:
                break
            time.sleep(0.2)
        assert not open_now, f"{open_now} attacking connections still open {took:.1f} s after the flood"
        # The attackers are still there, their connections closed: a new honest session gets in.
        fresh = _fresh_attach_map(broker)
        watch.check()
    _end(attackers)
    after = broker.wait_for_fds(broker.baseline_fds, timeout=5)
    rss_after = _rss(broker)
    log_size = broker.log_path.stat().st_size
    assert after == broker.baseline_fds, f"broker fds {after} after the flood, baseline {broker.baseline_fds}"
    assert rss_after < rss_before + RSS_SLACK, f"broker RSS {rss_after >> 20} MiB after, {rss_before >> 20} MiB before"
    assert log_size < MAX_LOG_BYTES, f"the broker logged {log_size} bytes"
    assert fresh < HONEST_BUDGET_S, f"a fresh honest attach+map took {fresh * 1e3:.0f} ms"
    reliability.record(
        CATEGORY,
        cases=opened,
        faults=opened,
        note=f"{opened} raw gRPC connections from {ATTACKERS} processes ({handshaken} past the HTTP/2 handshake) "
        f"against nofile {NOFILE}: peak {watch.peak_fds} broker fds, all closed within {took:.1f} s, honest "
        f"attach+map at most {max(watch.waits) * 1e3:.1f} ms, RSS {rss_before >> 20}->{rss_after >> 20} MiB",
    )


def test_parked_long_rpcs_are_bounded(broker_factory, reliability):
    channels, calls, per_connection = 4, 2000, 64
    broker = broker_factory("--grpc-streams-per-connection", str(per_connection), *GRPC_ARGS, prefix=LOW_NOFILE)
    rss_before = _rss(broker)
    with ExitStack() as stack:
        watch = Watch(broker, stack)
        time.sleep(0.2)
        attacker = _spawn(broker, LONG_RPCS, channels, calls)
        stack.callback(_end, [attacker])
        codes = _line(attacker)
        rss_during = _rss(broker)
        # A new honest session (its event stream is one more RPC) is served beside the parked calls.
        fresh = _fresh_attach_map(broker)
        watch.check()
    _end([attacker])
    after = broker.wait_for_fds(broker.baseline_fds, timeout=5)
    log_size = broker.log_path.stat().st_size
    assert sum(codes.values()) == calls, codes
    assert after == broker.baseline_fds, f"broker fds {after} after the attack, baseline {broker.baseline_fds}"
    assert log_size < MAX_LOG_BYTES, f"the broker logged {log_size} bytes"
    assert fresh < HONEST_BUDGET_S, f"a fresh honest attach+map took {fresh * 1e3:.0f} ms beside the parked calls"
    growth = rss_during - rss_before
    reliability.record(
        CATEGORY,
        cases=calls,
        faults=calls,
        note=f"{calls} Attach calls waiting 60 s over {channels} connections, {per_connection} streams each: "
        f"{codes}; broker RSS +{growth >> 10} KiB, peak {watch.peak_fds} fds, honest attach+map at most "
        f"{max(watch.waits) * 1e3:.1f} ms",
    )
    # Without the per-connection cap all 2000 reach the broker: about 50 MiB more RSS (25 KiB a call).
    assert growth < 16 << 20, f"parked calls grew the broker's RSS by {growth >> 20} MiB"
    assert codes == {"WAITING": calls}, f"calls over the per-connection cap must wait on the caller's side: {codes}"


def test_rpcs_over_the_global_cap_are_refused_at_once(broker_factory, reliability):
    channels, calls, cap = 4, 240, 120
    broker = broker_factory("--grpc-max-concurrent-rpcs", str(cap), *GRPC_ARGS, prefix=LOW_NOFILE)
    with ExitStack() as stack:
        watch = Watch(broker, stack)  # its two sessions hold an event stream each: 2 of the cap
        time.sleep(0.2)
        attacker = _spawn(broker, LONG_RPCS, channels, calls)
        stack.callback(_end, [attacker])
        codes = _line(attacker)
        try:  # an established session's own gRPC call at the cap: refused at once, never hung
            watch.importer.stats()
            stats = "answered"
        except bufbroker.BrokerError as error:
            stats = type(error).__name__
        watch.check()
    _end([attacker])
    refused = codes.get("RESOURCE_EXHAUSTED", 0)
    assert sum(codes.values()) == calls and set(codes) <= {"WAITING", "RESOURCE_EXHAUSTED"}, codes
    assert codes.get("WAITING", 0) <= cap - 2 and refused >= calls - cap + 2, codes
    assert broker.wait_for_fds(broker.baseline_fds, timeout=5) == broker.baseline_fds
    assert _fresh_attach_map(broker) < HONEST_BUDGET_S  # the cap is free again once the attacker is gone
    reliability.record(
        CATEGORY,
        cases=calls,
        faults=refused,
        note=f"{calls} Attach calls waiting 60 s against grpc_max_concurrent_rpcs={cap}: {codes}; an established "
        f"honest session's attach+map at most {max(watch.waits) * 1e3:.1f} ms (its GetStats at the cap: {stats})",
    )
