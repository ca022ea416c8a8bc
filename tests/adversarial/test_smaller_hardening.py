"""Issue 14, point 7 (the smaller items): refused nonces, supplementary groups, undecodable bodies.

- Refused fd nonces are remembered per connection only up to a bound: a
  session refused a great many times does not grow the broker, and a
  RegisterBuffer naming a forgotten one still gets a clear error.
- ``gid:N`` matches an importer's supplementary groups, not only its primary gid.
- Undecodable pre-auth gRPC bodies do not flood the log: one summary line per period.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest

from bufbroker_broker.server.fdchannel.server import MAX_REMEMBERED_REFUSALS
from tests.raw_client import RawClient

NOBODY = 65534
GROUP = 4242  # a supplementary group of the importer, not its primary gid
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
REFUSALS = 20_000
NONCE = "n" * 100 + "-%07d"  # long nonces: what a hostile client would send to grow the broker fastest


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_refused_nonces_are_remembered_up_to_a_bound(broker_factory, reliability):
    broker = broker_factory()
    with RawClient(broker.socket_dir) as raw:
        before = _rss_kib(broker.pid)
        batch = 100
        for start in range(0, REFUSALS, batch):
            for n in range(start, start + batch):
                raw.send_fds(NONCE % n, [])  # no fds: refused, and the refusal remembered for RegisterBuffer
            for _ in range(batch):
                notice = raw.receive().message
                assert notice is not None and notice.HasField("notice"), notice
        grown = _rss_kib(broker.pid) - before
        # The oldest refusal is forgotten, but RegisterBuffer for it still explains.
        with pytest.raises(grpc.RpcError) as forgotten:
            raw.register(NONCE % 0, 4096)
        assert forgotten.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "refused and the refusal forgotten" in forgotten.value.details(), forgotten.value.details()
        # The newest are remembered with their reason.
        with pytest.raises(grpc.RpcError) as remembered:
            raw.register(NONCE % (REFUSALS - 1), 4096)
        assert "carried no fds" in remembered.value.details(), remembered.value.details()
    assert grown < 8 * 1024, f"the broker grew {grown} KiB for {REFUSALS} refused nonces"
    reliability.record(
        "hostile fds",
        cases=REFUSALS,
        faults=REFUSALS,
        note=f"{REFUSALS} refused nonces: broker RSS +{grown} KiB (the last {MAX_REMEMBERED_REFUSALS} remembered)",
    )


IMPORTER = """
import json, os, sys
import bufbroker, bufbroker.attachment, bufbroker.buffers, encodings.idna   # before the uid drop
os.setgroups([%(group)d]); os.setgid(%(gid)d); os.setuid(%(uid)d)
with bufbroker.connect(sys.argv[1], reconnect=False) as s:
    try:
        a = s.attach('by-group', accept=['memfd'], map=True)
        out = bytes(a.mapping.memoryview()[:5]).decode()
    except bufbroker.BrokerError as error:
        out = type(error).__name__ + ': ' + str(error)
print(json.dumps(out), flush=True)
"""


@ROOT_ONLY
def test_a_gid_principal_matches_a_supplementary_group(open_base, broker_factory, reliability):
    broker = broker_factory(base=open_base)
    with broker.connect() as exporter:
        shared = exporter.export(4096, name="by-group", offers=["memfd"], allow=[f"gid:{GROUP}"])
        shared.memoryview()[:5] = b"group"
        child = broker.spawn_code(IMPORTER % {"group": GROUP, "gid": 0, "uid": NOBODY})
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0, out
        result = json.loads(out.strip().splitlines()[-1])
        assert result == "group", result
        # Without the group, the same uid and gid (0: the socket dir's group) are refused: the buffer is invisible.
        child = broker.spawn_code(
            IMPORTER.replace("os.setgroups([%(group)d])", "os.setgroups([])")
            % {
                "gid": 0,
                "uid": NOBODY,
            }
        )
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0, out
        refused = json.loads(out.strip().splitlines()[-1])
        assert refused.startswith("NotFound"), refused
    reliability.record(
        "privilege separation",
        cases=2,
        note=f"gid:{GROUP} as a supplementary group of uid {NOBODY}: attached; without it: NotFound",
    )


GARBAGE = """
import sys, grpc
channel = grpc.insecure_channel(f"unix:{sys.argv[1]}/grpc.sock")
call = channel.unary_unary("/bufbroker.v1.Broker/ListBuffers", request_serializer=bytes, response_deserializer=bytes)
codes = set()
for _ in range(int(sys.argv[2])):
    try:
        call(b"\\xff\\xff\\xff\\xff\\x0f undecodable", timeout=5)
    except grpc.RpcError as error:
        codes.add(error.code().name)
print(sorted(codes))
"""
BODIES = 1000


def test_undecodable_bodies_log_one_line_per_period(broker_factory, reliability):
    broker = broker_factory("--log-level", "info")
    before = broker.log_path.stat().st_size
    done = subprocess.run(
        [sys.executable, "-c", GARBAGE, str(broker.socket_dir), str(BODIES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "UNKNOWN" in done.stdout, done.stdout
    with broker.connect() as honest:  # the broker still answers
        honest.stats()
    logged = broker.log()[before:]
    size = len(logged.encode())
    assert size < 4096, f"{BODIES} undecodable bodies logged {size} bytes:\n{logged[:2000]}"
    assert "Traceback" not in logged
    lines = [line for line in logged.splitlines() if "undecodable gRPC request body" in line]
    assert len(lines) == 1, lines
    reliability.record(
        "protocol fuzzing",
        cases=BODIES,
        faults=BODIES,
        note=f"{BODIES} undecodable gRPC bodies: {size} bytes of log, one line",
    )


def test_the_summary_counts_what_it_left_out():
    """The filter itself: the line after the period says how many were suppressed."""
    import logging

    from google.protobuf.message import DecodeError

    from bufbroker_broker.server.grpc.undecodable import UndecodableRequests

    now = [0.0]
    undecodable = UndecodableRequests(period=10, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        try:
            raise DecodeError("Wire format was corrupt")
        except DecodeError:
            return logging.LogRecord(
                "grpc._cython.cygrpc",
                logging.ERROR,
                "x",
                1,
                "Unexpected [%s] raised by servicer method [%s]",
                ("DecodeError", "/m"),
                sys.exc_info(),
            )

    passed = [undecodable.filter(record()) for _ in range(50)]
    assert passed.count(True) == 1
    now[0] = 11.0
    summary = record()
    assert undecodable.filter(summary)
    assert "49 more" in summary.getMessage() and summary.exc_info is None
    other = logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "x", 1, "something else", (), None)
    assert undecodable.filter(other) and other.levelno == logging.ERROR
