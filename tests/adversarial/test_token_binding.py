"""Issue 14, class 6: a session token is bound to the process holding its fd channel.

Over a Unix socket gRPC tells the broker nothing about who sent a call, so a
token alone used to act as its session for anyone who learned it. Now each
gRPC call with a token needs a proof the session's own fd channel vouched
for just before (server/fdchannel/vouches.py). The attack: another process
(another uid when the test runs as root) holds the owner's token and tries
every call that acted as the owner — with no proof, a made-up proof, and a
proof its own fd channel vouched for — while an honest importer attaches and
maps beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack

import grpc
import pytest

from bufbroker.v1 import broker_pb2 as pb
from tests.adversarial.test_fd_exhaustion import MAX_LOG_BYTES, Watch
from tests.conftest import REPO_ROOT
from tests.raw_client import RawClient

CATEGORY = "stolen tokens"
NOBODY = 65534
ROUNDS = 6  # a refused made-up proof waits nonce_wait (2 s) for a vouch that never comes

# Runs in its own process: argv = socket dir, the owner's token, the owner's buffer id.
THIEF = """
import json, os, secrets, sys
import grpc
from bufbroker import protocol
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mpb
from tests.raw_client import RawClient
if %(uid)d != os.getuid():
    os.setgroups([]); os.setgid(0); os.setuid(%(uid)d)  # gid 0: the socket dir's group, as in test_privilege_separation
socket_dir, token, buffer_id, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), %(rounds)d
calls = [
    ("ListBuffers", pb.ListBuffersRequest()),
    ("Attach", pb.AttachRequest(buffer_id=buffer_id, access=mpb.ACCESS_READ_WRITE)),
    ("RevokeBuffer", pb.RevokeBufferRequest(buffer_id=buffer_id, reason="stolen")),
    ("UnregisterBuffer", pb.UnregisterBufferRequest(buffer_id=buffer_id)),
    ("OpenCallChannel", pb.OpenCallChannelRequest()),
    ("GetStats", pb.GetStatsRequest()),
]
codes, details, tried = {}, set(), 0
with RawClient(__import__('pathlib').Path(socket_dir)) as thief:
    for _ in range(rounds):
        futures = []
        for method, request in calls:
            for proof in (None, secrets.token_hex(16), thief.vouch()):
                metadata = ((protocol.SESSION_METADATA_KEY, token),)
                if proof is not None:
                    metadata += ((protocol.PROOF_METADATA_KEY, proof),)
                futures.append(getattr(thief.stub, method).future(request, metadata=metadata, timeout=10))
        events = thief.stub.Events(pb.EventsRequest(), metadata=((protocol.SESSION_METADATA_KEY, token),), timeout=5)
        futures.append(events)
        for future in futures:
            tried += 1
            try:
                future.result() if hasattr(future, "result") else next(future)
                codes["OK"] = codes.get("OK", 0) + 1
            except grpc.RpcError as error:
                codes[error.code().name] = codes.get(error.code().name, 0) + 1
                details.add(error.details())
print(json.dumps({"codes": codes, "tried": tried, "details": sorted(details)[:5]}), flush=True)
"""


def _run_thief(broker, token: str, buffer_id: int, uid: int) -> dict:
    code = THIEF % {"uid": uid, "rounds": ROUNDS}
    child = subprocess.run(
        [sys.executable, "-c", code, str(broker.socket_dir), token, str(buffer_id)],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=180,
    )
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    return json.loads(child.stdout.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("other_uid", [False, True], ids=["same-uid", "other-uid"])
def test_a_stolen_token_acts_as_nobody(other_uid, open_base, broker_factory, reliability):
    if other_uid and os.geteuid() != 0:
        pytest.skip("needs root to run the thief as another uid")
    broker = broker_factory(base=open_base) if other_uid else broker_factory()
    with ExitStack() as stack:
        watch = Watch(broker, stack)
        owner = stack.enter_context(broker.connect())
        allow = [f"uid:{os.getuid()}", f"uid:{NOBODY}"] if other_uid else []
        owned = owner.export(4096, name="owned", offers=["memfd"], allow=allow, allow_write=True)
        owned.memoryview()[:5] = b"owner"
        tickets_before = len(owner._transport.link.tickets._deliveries)
        started = time.monotonic()
        result = _run_thief(broker, owner.token, owned.id, NOBODY if other_uid else os.getuid())
        took = time.monotonic() - started
        watch.check()
        # Every call the thief made was refused as unauthenticated, naming what a token needs.
        assert set(result["codes"]) == {"UNAUTHENTICATED"}, result
        assert any("no proof from that session's fd channel" in d for d in result["details"]), result["details"]
        # The owner's buffer is untouched and still its own; its SDK holds no fds it never asked for.
        assert "owned" in [b.name for b in owner.buffers()]
        assert bytes(owned.memoryview()[:5]) == b"owner"
        attachment = owner.attach("owned", accept=["memfd"], map=True)
        assert bytes(attachment.mapping.memoryview()[:5]) == b"owner"
        attachment.detach()
        tickets_after = len(owner._transport.link.tickets._deliveries)
        assert tickets_after == tickets_before, "a call with the stolen token delivered fds to the owner"
    log_bytes = broker.log_path.stat().st_size
    assert log_bytes < MAX_LOG_BYTES, f"the broker logged {log_bytes} bytes"
    reliability.record(
        CATEGORY,
        cases=result["tried"],
        faults=result["codes"]["UNAUTHENTICATED"],
        note=f"{'another uid' if other_uid else 'another process'} with the owner's token: "
        f"{result['tried']} calls (List, Attach read_write, Revoke, Unregister, OpenCallChannel, GetStats, Events; "
        f"no proof, a made-up proof, its own session's proof) all UNAUTHENTICATED in {took:.1f} s; "
        f"honest attach+map max {max(watch.waits) * 1e3:.0f} ms, broker fds peak {watch.peak_fds}",
    )


def test_a_proof_works_once_and_only_for_its_own_session(broker_factory, reliability):
    broker = broker_factory()
    with RawClient(broker.socket_dir) as owner, RawClient(broker.socket_dir) as other:
        proof = owner.vouch()
        owner.call("GetStats", pb.GetStatsRequest(), token=owner.token, proof=proof)  # vouched: accepted
        refused = []
        for token, proof_of_call in ((owner.token, proof), (owner.token, other.vouch())):  # replayed; another's
            with pytest.raises(grpc.RpcError) as raised:
                owner.call("GetStats", pb.GetStatsRequest(), token=token, proof=proof_of_call)
            refused.append(raised.value.code())
        assert refused == [grpc.StatusCode.UNAUTHENTICATED] * 2
        # A vouch without a valid proof is refused on the fd channel with the rule.
        owner.vouch("short")
        notice = owner.receive().message
        assert notice is not None and notice.HasField("notice"), notice
        assert "16 to 128 characters" in notice.notice.message
    reliability.record(CATEGORY, cases=4, faults=3, note="a proof is accepted once, only from its own fd channel")
