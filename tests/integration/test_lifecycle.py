"""Lifecycle with real processes: move, revoke, exporter and importer death."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest

import bufbroker
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mt
from tests.conftest import follower_read, json_line
from tests.raw_client import RawClient


def test_move_notifies_importers_who_unmap_remap_and_read_the_new_backing(broker):
    with broker.connect() as exp:
        buffer = exp.export(4096, name="moving", offers=["segments", "memfd"])
        buffer.memoryview()[:8] = b"backing1"
        follower = broker.spawn("follower", "moving")
        assert json_line(follower)["map_type"] == "segments"
        assert follower_read(follower) == {"head": "backing1" + "\x00" * 8, "size": 4096, "moves": 0}
        non_compliant = buffer.move(
            8192, layout={"fourcc": "NV12", "width": 64, "height": 64}, reason="resolution change"
        )
        assert non_compliant == []
        assert buffer.size == 8192
        buffer.memoryview()[:8] = b"backing2"
        assert json_line(follower)["moved"] == "resolution change"
        assert follower_read(follower) == {"head": "backing2" + "\x00" * 8, "size": 8192, "moves": 1}
        info = exp.buffers(name="moving")[0]
        assert info.generation == 2 and info.layout.width == 64
        follower.stdin.close()
        assert follower.wait(10) == 0


def test_move_is_refused_while_a_compat_importer_pins_the_buffer(broker):
    with broker.connect() as exp, broker.connect() as compat:
        buffer = exp.export(4096, offers=["memfd"])
        attachment = compat.attach(buffer.id)  # empty accept list: compat, pins
        with pytest.raises(
            bufbroker.FailedPrecondition,
            match=rf"pinned by a compat attachment of session {compat.id} \(pid {os.getpid()}\)",
        ):
            buffer.move(8192)
        attachment.detach()
        assert buffer.move(8192) == []


def test_importer_that_ignores_move_notify_is_marked_non_compliant_and_its_mapping_invalidated(broker_factory):
    broker = broker_factory("--move-timeout", "0.3")
    with broker.connect() as exp, RawClient(broker.socket_dir) as stubborn:
        buffer = exp.export(4096, offers=["memfd"])
        events = stubborn.stub.Events(pb.EventsRequest(), metadata=stubborn.metadata)
        assert next(events).HasField("ready")  # open, then never read again
        attached = stubborn.call(
            "Attach", pb.AttachRequest(buffer_id=buffer.id, accept=[mt.Match(memfd=mt.MemfdMatch())], map=True)
        )
        started = time.monotonic()
        assert buffer.move(4096) == [attached.attachment_id]
        assert 0.3 <= time.monotonic() - started < 3
        sessions = {s.id: s for s in exp.call("ListSessions", pb.ListSessionsRequest()).sessions}
        assert sessions[stubborn.hello.session_id].non_compliant
        (info,) = exp.call("ListAttachments", pb.ListAttachmentsRequest(buffer_id=buffer.id)).attachments
        assert info.non_compliant and info.mappings == 0
        assert next(events).move_notify.attachment_id == attached.attachment_id
        assert next(events).attachment_invalidated.attachment_id == attached.attachment_id
        events.cancel()


def test_revoke_tells_importers_and_their_mappings_stay_readable(broker):
    with broker.connect() as exp:
        buffer = exp.export(4096, name="withdrawn", offers=["memfd"])
        buffer.memoryview()[:9] = b"bufbroker"
        holder = broker.spawn("holder", "withdrawn")
        assert json_line(holder) == {"ready": True}
        buffer.revoke("camera unplugged")
        assert json_line(holder) == {"revoked": "camera unplugged", "head": "bufbroker"}
        assert holder.wait(10) == 0
        assert exp.buffers()[0].fd_count == 0


def test_exporter_killed_with_revoke_policy_revokes_its_buffers(broker):
    exporter, info = broker.exporter("--name", "doomed", "--offers", "memfd")
    holder = broker.spawn("holder", "doomed")
    assert json_line(holder) == {"ready": True}
    exporter.send_signal(signal.SIGKILL)
    exporter.wait()
    assert json_line(holder) == {"revoked": "exporter session ended", "head": "bufbroker"}
    assert holder.wait(10) == 0
    with broker.connect() as session:
        assert session.buffers() == []


def test_exporter_killed_with_keep_policy_leaves_the_buffer_until_its_last_importer_detaches(broker):
    exporter, info = broker.exporter(
        "--name", "kept", "--offers", "segments,memfd", "--on-exit", "keep", "--fill", "last-words|"
    )
    follower = broker.spawn("follower", "kept")
    assert json_line(follower)["ready"]
    exporter.send_signal(signal.SIGKILL)
    exporter.wait()
    time.sleep(0.2)
    assert follower_read(follower)["head"] == "last-words|last-"
    # Still registered: another importer can attach and read it too.
    result = broker.run("importer", "kept", "--accept", "memfd")
    assert result["head"].startswith("last-words|")
    with broker.connect() as session:
        (kept,) = session.buffers()
        assert kept.exporter_gone and kept.fd_count == 1
    follower.stdin.close()  # the last importer detaches
    assert follower.wait(10) == 0
    deadline = time.monotonic() + 2
    with broker.connect() as session:
        while session.buffers() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert session.buffers() == []


@pytest.mark.parametrize("step", ["attached", "fds-sent-not-read", "mapped"])
def test_importer_killed_at_any_step_releases_everything_within_a_second(broker, step):
    with broker.connect() as exp, broker.connect() as bystander:
        exp.export(4096, name="shared", offers=["memfd"])
        watched = bystander.attach("shared", accept=["memfd"], map=True)
        script = {
            "attached": "s.attach('shared', accept=['memfd'])",
            # A raw client maps but never reads its fd channel: the fds are in
            # flight, sent by the broker, received by nobody.
            "fds-sent-not-read": "from tests.raw_client import RawClient; from bufbroker.v1 import broker_pb2 as pb; "
            "r = RawClient(__import__('pathlib').Path(sys.argv[1])); a = r.call('Attach', pb.AttachRequest(buffer_name='shared')); "
            "r.call('Map', pb.MapRequest(attachment_id=a.attachment_id))",
            "mapped": "a = s.attach('shared', accept=['memfd'], map=True); v = a.mapping.memoryview()",
        }[step]
        before = broker.settled_fd_count()
        victim = broker.spawn_code(
            f"import bufbroker, sys\ns = bufbroker.connect(sys.argv[1])\n{script}\nprint('ready', flush=True)\nsys.stdin.read()"
        )
        assert victim.stdout.readline().strip() == "ready"
        assert exp.stats().attachments == 2
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        started = time.monotonic()
        while exp.stats().attachments != 1 and time.monotonic() - started < 1:
            time.sleep(0.01)
        assert exp.stats().attachments == 1
        assert broker.wait_for_fds(before, timeout=1) == before
        # The bystander saw nothing: it still reads, maps again and detaches.
        assert bytes(watched.mapping.memoryview()[:4]) == b"\x00" * 4
        watched.map().close()
        watched.detach()


def test_a_client_that_stops_reading_its_fd_channel_is_ended_and_others_stay_responsive(broker_factory):
    broker = broker_factory("--fd-send-timeout", "1", "--max-send-queue", "8")
    with broker.connect() as exp, broker.connect() as other, RawClient(broker.socket_dir) as stuck:
        buffer = exp.export(4096, offers=["memfd"])
        attached = stuck.call("Attach", pb.AttachRequest(buffer_id=buffer.id))
        ended = None
        for n in range(5000):  # never reads the fds the broker sends back
            try:
                stuck.call("Map", pb.MapRequest(attachment_id=attached.attachment_id))
            except grpc.RpcError as error:
                ended = (n, error.code())
                break
            started = time.monotonic()
            other.stats()
            assert time.monotonic() - started < 0.5, "a stuck client slowed another session down"
        assert ended is not None and ended[1] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
        assert "stopped reading its fd channel" in broker.log() or "accepted nothing" in broker.log()
        assert other.stats().sessions == 2  # exp and other; stuck was ended


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")


@ROOT_ONLY
def test_attach_from_another_uid_is_denied_unless_allowed(open_base, broker_factory):
    broker = broker_factory(base=open_base)
    broker.exporter("--name", "private", "--offers", "memfd")
    denied = broker.run("importer", "private", "--accept", "memfd", "--as-uid", "65534")
    # A buffer another uid may not see is as missing as one never registered: no allow list, no owner.
    missing = broker.run("importer", "never-registered", "--accept", "memfd", "--as-uid", "65534")
    assert denied["error"] == missing["error"] == "NotFound"
    assert denied["message"] == missing["message"].replace("never-registered", "private")
    assert "same-uid" not in denied["message"] and "uid:65534" not in denied["message"]
    broker.exporter("--name", "shared-with-nobody", "--offers", "memfd", "--allow", "uid:65534")
    allowed = broker.run("importer", "shared-with-nobody", "--accept", "memfd", "--as-uid", "65534")
    assert allowed["map_type"] == "memfd" and allowed["head"].startswith("bufbroker")
    assert allowed["writable_mmap_refused"] == [True]


@ROOT_ONLY
def test_restricted_offer_falls_through_for_everyone_else(open_base, broker_factory):
    broker = broker_factory(base=open_base)
    with broker.connect() as exp:
        exp.export(
            4096, name="locked", offers=[bufbroker.Memfd(restricted_to=["uid:65534"]), "segments"], allow=["any"]
        )
        mine = broker.run("importer", "locked", "--accept", "memfd,segments")
        assert mine["map_type"] == "segments"
        assert mine["trace"][0]["verdict"] == "soft-mismatch" and mine["trace"][0]["reason"].startswith("restricted")
        theirs = broker.run("importer", "locked", "--accept", "memfd,segments", "--as-uid", "65534")
        assert theirs["map_type"] == "memfd"


def test_mappings_carry_the_generation_and_layout_they_show_across_a_move(broker):
    small = {"fourcc": "GREY", "width": 64, "height": 32, "planes": [{"offset": 0, "stride": 64}]}
    large = {"fourcc": "GREY", "width": 128, "height": 64, "planes": [{"offset": 0, "stride": 128}]}
    with broker.connect() as exp, broker.connect() as imp:
        buffer = exp.export(4096, name="frames", offers=["memfd"], layout=small)
        exp.export(4096, name="plain", offers=["memfd"])
        attachment = imp.attach("frames", accept=["memfd"], map=True)
        assert (attachment.mapping.generation, attachment.mapping.layout) == (1, small)
        buffer.move(8192, layout=large, reason="resolution change")
        deadline = time.monotonic() + 5
        while attachment.moves < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        mapping = attachment.wait_mapped(5)
        assert (mapping.generation, mapping.layout, mapping.size) == (2, large, 8192)
        assert imp.attach("plain", accept=["memfd"], map=True).mapping.layout is None
