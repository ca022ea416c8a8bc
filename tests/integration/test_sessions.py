"""Sessions: the fd channel authenticates, the token authorises every call."""

from __future__ import annotations

import os
import time

import grpc
import pytest

import bufbroker
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mt
from tests.raw_client import RawClient


def test_hello_carries_a_128_bit_token_and_the_peer_credentials(broker):
    with RawClient(broker.socket_dir) as raw:
        assert len(bytes.fromhex(raw.token)) >= 16
        assert (raw.hello.pid, raw.hello.uid, raw.hello.gid) == (os.getpid(), os.getuid(), os.getgid())
    with RawClient(broker.socket_dir) as a, RawClient(broker.socket_dir) as b:
        assert a.token != b.token


@pytest.mark.parametrize("token", ["", "0" * 32, "not-hex"])
def test_calls_without_a_valid_token_are_unauthenticated(broker, token):
    with RawClient(broker.socket_dir) as raw:
        for method, request in [
            ("GetStats", pb.GetStatsRequest()),
            ("ListBuffers", pb.ListBuffersRequest()),
            ("Attach", pb.AttachRequest(buffer_id=1)),
            ("RegisterBuffer", pb.RegisterBufferRequest(nonce="x", size=1)),
        ]:
            with pytest.raises(grpc.RpcError) as raised:
                raw.call(method, request, token=token)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "fd.sock" in raised.value.details()


def test_a_call_without_metadata_is_unauthenticated(broker):
    with RawClient(broker.socket_dir) as raw, pytest.raises(grpc.RpcError) as raised:
        raw.stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_stops_working_when_its_fd_channel_closes(broker):
    raw = RawClient(broker.socket_dir)
    raw.call("GetStats", pb.GetStatsRequest())
    token = raw.token
    raw.sock.close()
    with RawClient(broker.socket_dir) as other:
        deadline_ok = False
        for _ in range(100):
            try:
                other.call("GetStats", pb.GetStatsRequest(), token=token)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                deadline_ok = True
                break
            time.sleep(0.02)
        assert deadline_ok, "the old token still worked 2 s after its session closed"
    raw.channel.close()


def test_dynamic_attach_needs_the_event_stream_open(broker):
    with broker.connect() as exp, RawClient(broker.socket_dir) as raw:
        buffer = exp.export(4096, offers=["memfd"])
        with pytest.raises(grpc.RpcError) as raised:
            raw.call("Attach", pb.AttachRequest(buffer_id=buffer.id, accept=[mt.Match(memfd=mt.MemfdMatch())]))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "event stream" in raised.value.details() and "compat" in raised.value.details()
        # A compat attach (empty accept list) needs no event stream and pins.
        response = raw.call("Attach", pb.AttachRequest(buffer_id=buffer.id))
        assert response.map_type == "memfd" and response.pinned


def test_ending_an_importer_session_detaches_its_attachments(broker):
    with broker.connect() as exp:
        buffer = exp.export(4096, offers=["memfd"])
        importer = broker.connect()
        attachment = importer.attach(buffer.id, accept=["memfd"], map=True)
        assert exp.stats().attachments == 1 and exp.stats().mappings == 1
        attachment.mapping.close()
        importer.close()
        deadline = time.monotonic() + 2
        while exp.stats().attachments and time.monotonic() < deadline:
            time.sleep(0.02)
        assert exp.stats().attachments == 0
        assert exp.buffers()[0].attachment_count == 0


def test_only_the_exporter_may_revoke_its_buffer(broker):
    with broker.connect() as exp, broker.connect() as other:
        buffer = exp.export(4096)
        with pytest.raises(bufbroker.PermissionDenied, match="only its exporter"):
            other.call("RevokeBuffer", pb.RevokeBufferRequest(buffer_id=buffer.id))


def test_explain_is_a_dry_run_that_matches_what_attach_chooses(broker):
    with broker.connect() as exp, broker.connect() as imp:
        buffer = exp.export(4096, offers=[bufbroker.Memfd(access="read"), "segments"], allow_write=True)
        explained = imp.explain(buffer.id, accept=["memfd", "segments"], access="read_write")
        assert imp.stats().attachments == 0
        attachment = imp.attach(buffer.id, accept=["memfd", "segments"], access="read_write")
        assert explained.map_type == attachment.map_type == "segments"
        assert [s.verdict for s in explained.trace] == [s.verdict for s in attachment.trace]
        attachment.detach()
        # (accept=["memfd"] would now match: the segments->memfd converter hands out the whole memfd.)
        failed = imp.explain(buffer.id, accept=["dmabuf"], access="read_write")
        assert failed.map_type == "" and "no common mapping type" in failed.error


def test_list_buffers_pages_through_every_buffer(broker):
    with broker.connect() as session:
        made = [session.export(4096, name=f"page-{i}").id for i in range(250)]
        first = session.call("ListBuffers", pb.ListBuffersRequest(page_size=100))
        assert len(first.buffers) == 100 and first.next_after_id == first.buffers[-1].id
        assert [b.id for b in session.buffers()] == made
        assert [b.name for b in session.buffers(name="page-7")] == ["page-7"]


def test_introspection_lists_sessions_attachments_and_mapping_types(broker):
    with broker.connect() as exp, broker.connect() as imp:
        buffer = exp.export(4096, offers=["segments", "memfd"])
        attachment = imp.attach(buffer.id, accept=["memfd"], map=True)
        sessions = {s.id: s for s in imp.call("ListSessions", pb.ListSessionsRequest()).sessions}
        assert sessions[exp.id].role == "exporter" and sessions[exp.id].buffers == 1 and sessions[exp.id].fds_held == 1
        assert sessions[imp.id].role == "importer" and sessions[imp.id].mappings == 1
        (info,) = imp.call("ListAttachments", pb.ListAttachmentsRequest(buffer_id=buffer.id)).attachments
        assert info.id == attachment.id and info.map_type == "memfd" and info.session_id == imp.id
        assert [s.verdict for s in info.trace] == ["type-differs", "matched"]
        types = {t.name: t for t in imp.call("ListMappingTypes", pb.ListMappingTypesRequest()).mapping_types}
        assert types["memfd"].supported and types["segments"].description
        attachment.detach()


def test_explain_against_an_offers_list_needs_no_buffer(broker):
    with broker.connect() as session:
        request = pb.ExplainRequest(
            offers=[
                mt.Offer(memfd=mt.MemfdOffer(max_access=mt.ACCESS_READ)),
                mt.Offer(segments=mt.SegmentsOffer(max_access=mt.ACCESS_READ_WRITE)),
            ],
            accept=[
                mt.Match(memfd=mt.MemfdMatch(access=mt.ACCESS_READ_WRITE)),
                mt.Match(segments=mt.SegmentsMatch(access=mt.ACCESS_READ_WRITE)),
            ],
        )
        explained = session.call("Explain", request)
        assert explained.map_type == "segments"
        assert [s.verdict for s in explained.trace] == ["soft-mismatch", "type-differs", "type-differs", "matched"]
