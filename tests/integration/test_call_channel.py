"""Call channels: the fast path for attach, map, unmap and detach.

The SDK uses them by itself; these tests check the wire behaviour against a
real broker: the same answers and errors as the RPCs, fds in the reply,
hostile datagrams refused without harm, the per-session limit, and that a
call channel's life is tied to its session but not the other way round.
"""

from __future__ import annotations

import os
import socket
import time

import grpc
import pytest

import bufbroker
from bufbroker import calls, fdwire, specs
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import fd_channel_pb2 as fdpb
from tests.raw_client import RawClient, call_on


@pytest.fixture
def shared(broker):
    """An exporter session holding a 4 KiB buffer named 'shared' that starts with b'hello'."""
    with broker.connect() as exporter:
        buffer = exporter.export(4096, name="shared", offers=["memfd"])
        buffer.memoryview()[:5] = b"hello"
        yield buffer


def _compat_attach(map: bool) -> pb.AttachRequest:
    # An empty accept list: a compat importer, which needs no event stream.
    return pb.AttachRequest(buffer_name="shared", map=map)


def test_attach_map_unmap_detach_answer_like_the_rpcs_with_fds_in_the_reply(broker, shared):
    with RawClient(broker.socket_dir) as raw, raw.open_call_channel() as channel:
        reply, fds = call_on(channel, "attach", _compat_attach(map=True), call_id=7)
        assert reply.call_id == 7 and reply.WhichOneof("reply") == "attach"
        attached = reply.attach
        assert attached.map_type == "memfd" and attached.pinned
        assert attached.mapping.fd_ticket == 0 and attached.mapping.fd_count == len(fds) == 1
        assert os.pread(fds[0], 5, 0) == b"hello"
        fdwire.close_fds(fds)

        reply, fds = call_on(channel, "map", pb.MapRequest(attachment_id=attached.attachment_id), call_id=8)
        assert reply.call_id == 8 and reply.map.handle.WhichOneof("kind") == "memfd" and len(fds) == 1
        assert os.pread(fds[0], 5, 0) == b"hello"
        fdwire.close_fds(fds)
        assert broker.stats().mappings == 2

        for mapping_id in (attached.mapping.mapping_id, reply.map.mapping_id):
            reply, fds = call_on(channel, "unmap", pb.UnmapRequest(mapping_id=mapping_id))
            assert reply.WhichOneof("reply") == "unmap" and fds == []
        reply, _ = call_on(channel, "detach", pb.DetachRequest(attachment_id=attached.attachment_id))
        assert reply.WhichOneof("reply") == "detach"
        assert broker.stats().attachments == 0

        reply, _ = call_on(channel, "detach", pb.DetachRequest(attachment_id=attached.attachment_id))
        assert reply.error.code == "NOT_FOUND" and reply.error.kind == "not-found"
        assert str(attached.attachment_id) in reply.error.message


def test_call_errors_carry_the_status_kind_and_negotiation_trace(broker, shared):
    with RawClient(broker.socket_dir) as raw, raw.open_call_channel() as channel:
        request = pb.AttachRequest(buffer_name="shared", accept=specs.accept_to_wire(["segments"], "read"))
        reply, fds = call_on(channel, "attach", request)
        assert fds == []
        # Without its event stream a session may only attach as compat.
        assert reply.error.code == "FAILED_PRECONDITION" and reply.error.kind == "failed-precondition"
        assert "event stream" in reply.error.message
    with broker.connect() as importer:
        with pytest.raises(bufbroker.errors.NoCommonMappingType) as failed:
            importer.attach("shared", accept=["segments"])
        assert [(s.offer_type, s.match_type) for s in failed.value.trace] == [("memfd", "segments")]
        assert importer._link.calls._all, "the SDK made the attach on a call channel"


def test_hostile_datagrams_get_a_clear_error_and_the_channel_keeps_serving(broker, shared):
    before = broker.settled_fd_count()
    with RawClient(broker.socket_dir) as raw, raw.open_call_channel() as channel:
        memfd = os.memfd_create("hostile", os.MFD_CLOEXEC)
        sends = {
            "fds on a call": (
                fdwire.encode(fdpb.FdMessage(call=fdpb.Call(call_id=3, detach=pb.DetachRequest()))),
                [memfd],
            ),
            "garbage": (b"\xff\xfe not a protobuf", []),
            "empty": (b"", []),
            "wrong kind": (fdwire.encode(fdpb.FdMessage(send_fds=fdpb.SendFds(nonce="n", fd_count=0))), []),
            "no request": (fdwire.encode(fdpb.FdMessage(call=fdpb.Call(call_id=4))), []),
            "too long": (b"\x00" * (fdwire.MAX_CALL_BYTES + 10), []),
        }
        for what, (data, fds) in sends.items():
            channel.sendmsg([data], fdwire.ancillary(fds))
            received = fdwire.receive(channel, fdwire.MAX_CALL_BYTES)
            assert received.fds == [], what
            error = received.message.reply.error
            assert error.code == "INVALID_ARGUMENT" and error.message, what
        os.close(memfd)
        reply, fds = call_on(channel, "attach", _compat_attach(map=True))
        assert len(fds) == 1 and reply.attach.mapping.fd_count == 1
        fdwire.close_fds(fds)
    assert broker.wait_for_fds(before) == before


def test_a_session_has_at_most_16_call_channels_and_closing_one_keeps_the_session(broker, shared):
    with RawClient(broker.socket_dir) as raw:
        channels = [raw.open_call_channel() for _ in range(16)]
        with pytest.raises(grpc.RpcError) as refused:
            raw.open_call_channel()
        assert refused.value.code().name == "RESOURCE_EXHAUSTED" and "max_call_channels" in refused.value.details()
        channels.pop().close()
        # The broker notices the close on its next loop turn; then the slot is free again.
        for _ in range(50):
            try:
                channels.append(raw.open_call_channel())
                break
            except grpc.RpcError:
                time.sleep(0.02)
        assert len(channels) == 16
        for channel in channels[:8]:
            channel.close()
        reply, fds = call_on(channels[-1], "attach", _compat_attach(map=False))
        assert reply.attach.attachment_id > 0 and fds == []
        for channel in channels[8:]:
            channel.close()


def test_ending_the_session_ends_its_call_channels(broker, shared):
    raw = RawClient(broker.socket_dir)
    channel = raw.open_call_channel()
    reply, fds = call_on(channel, "attach", _compat_attach(map=True))
    fdwire.close_fds(fds)
    raw.close()
    channel.settimeout(5)
    data = channel.recv(16)  # EOF once the broker ended the session
    assert data == b""
    channel.close()
    assert broker.stats().attachments == 0


def test_the_sdk_uses_a_call_channel_per_busy_thread_and_falls_back_to_grpc(broker, shared, monkeypatch):
    baseline = broker.settled_fd_count()
    with broker.connect() as importer:
        attachment = importer.attach("shared", accept=["memfd"], map=True)
        assert bytes(attachment.mapping.memoryview()[:5]) == b"hello"
        assert len(importer._link.calls._all) == 1
        # The broker holds one more socket: its end of that call channel (and the session's own).
        assert broker.settled_fd_count() == baseline + 2
        attachment.detach()
    monkeypatch.setattr(calls, "MAX_CHANNELS", 0)
    with broker.connect() as importer:
        attachment = importer.attach("shared", accept=["memfd"], map=True)
        mapping = attachment.map()
        assert bytes(mapping.memoryview()[:5]) == b"hello"
        assert importer._link.calls._all == []
        mapping.close()
        attachment.detach()
        assert broker.stats().mappings == 0


def test_a_call_channel_of_a_dead_broker_raises_unavailable(broker_factory):
    broker = broker_factory()
    with broker.connect() as exporter:
        exporter.export(4096, name="shared", offers=["memfd"])
        importer = bufbroker.connect(broker.socket_dir, reconnect=False)
        attachment = importer.attach("shared", accept=["memfd"], map=True)
        broker.process.kill()
        broker.process.wait()
        with pytest.raises(bufbroker.errors.Unavailable):
            attachment.map()
        attachment.mapping.close()  # unmaps locally: the broker is gone
        importer.close()


def test_call_channel_sockets_are_seqpacket_and_close_on_exec(broker, shared):
    with RawClient(broker.socket_dir) as raw, raw.open_call_channel() as channel:
        assert channel.type == socket.SOCK_SEQPACKET
        assert os.get_inheritable(channel.fileno()) is False


def test_a_map_during_a_move_waits_for_the_swap_and_gets_the_new_backing(broker_factory):
    import threading

    broker = broker_factory("--move-timeout", "30")
    with broker.connect() as exporter, RawClient(broker.socket_dir) as raw:
        buffer = exporter.export(4096, name="moving", offers=["memfd"])
        events = raw.stub.Events(pb.EventsRequest(), metadata=raw.metadata)
        assert next(events).HasField("ready")
        first, second = raw.open_call_channel(), raw.open_call_channel()
        try:
            request = pb.AttachRequest(buffer_name="moving", accept=specs.accept_to_wire(["memfd"], "read"), map=True)
            reply, fds = call_on(first, "attach", request)
            fdwire.close_fds(fds)
            attachment_id, old_mapping = reply.attach.attachment_id, reply.attach.mapping.mapping_id

            def move() -> None:
                buffer.move(8192, reason="bigger")
                buffer.memoryview()[:5] = b"moved"

            mover = threading.Thread(target=move)
            mover.start()
            assert next(events).move_notify.attachment_id == attachment_id
            # Map while the move waits for our unmap: the reply must wait for the swap.
            waiting = fdpb.FdMessage(call=fdpb.Call(call_id=2, map=pb.MapRequest(attachment_id=attachment_id)))
            first.sendmsg([waiting.SerializeToString()])
            first.settimeout(0.3)
            with pytest.raises(TimeoutError):
                first.recv(16)
            first.settimeout(10)
            reply, _ = call_on(second, "unmap", pb.UnmapRequest(mapping_id=old_mapping))  # lets the move finish
            assert reply.WhichOneof("reply") == "unmap"
            mover.join(10)
            received = fdwire.receive(first, fdwire.MAX_CALL_BYTES)
            mapped = received.message.reply
            assert mapped.call_id == 2 and mapped.map.size == 8192 and len(received.fds) == 1
            assert os.fstat(received.fds[0]).st_size == 8192 and os.pread(received.fds[0], 5, 0) == b"moved"
            fdwire.close_fds(received.fds)
        finally:
            first.close()
            second.close()
            events.cancel()
