"""Protocol fuzzing: arbitrary, mostly invalid requests for every RPC.

Every answer is a gRPC status with a message (never INTERNAL, which would be
a bug the broker logged), and the broker keeps serving afterwards.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bufbroker import fdwire
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mt
from tests.raw_client import RawClient

CATEGORY = "protocol fuzzing"

UNARY_RPCS = [method.name for method in pb.DESCRIPTOR.services_by_name["Broker"].methods if not method.server_streaming]

U64_EDGES = [
    0,
    1,
    2,
    4095,
    4096,
    4097,
    1 << 20,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
]
U32_EDGES = [0, 1, 255, 4096, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]
I64_EDGES = [0, 1, -1, -(1 << 63), (1 << 63) - 1]
I32_EDGES = [0, 1, -1, -(1 << 31), (1 << 31) - 1]
TYPE_NAMES = ["memfd", "segments", "udmabuf", "dmabuf", "", "MEMFD", "no-such-type", "memfd\x00", "ñ", "../../etc"]
TEXT = st.one_of(
    st.sampled_from(["", "shared", "memfd", "uid:0", "uid:65534", "gid:0", "same-uid", "any", "NV12", "0000:03:00.0"]),
    st.text(max_size=40),
    st.text(min_size=200, max_size=300, alphabet="abcdefghijklmnopqrstuvwxyzé€😀"),
)

_SCALARS = {
    FieldDescriptor.TYPE_UINT64: st.one_of(st.sampled_from(U64_EDGES), st.integers(0, (1 << 64) - 1)),
    FieldDescriptor.TYPE_FIXED64: st.sampled_from(U64_EDGES),
    FieldDescriptor.TYPE_UINT32: st.one_of(st.sampled_from(U32_EDGES), st.integers(0, (1 << 32) - 1)),
    FieldDescriptor.TYPE_FIXED32: st.sampled_from(U32_EDGES),
    FieldDescriptor.TYPE_INT64: st.one_of(st.sampled_from(I64_EDGES), st.integers(-(1 << 63), (1 << 63) - 1)),
    FieldDescriptor.TYPE_SINT64: st.sampled_from(I64_EDGES),
    FieldDescriptor.TYPE_INT32: st.one_of(st.sampled_from(I32_EDGES), st.integers(-(1 << 31), (1 << 31) - 1)),
    FieldDescriptor.TYPE_SINT32: st.sampled_from(I32_EDGES),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: TEXT,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
}


# Fields whose valid values make the broker wait that long by design (an attach
# waiting for its buffer): valid values stay short, the rest probe the checks.
_FIELD_VALUES = {
    "wait_seconds": st.sampled_from([0.0, 0.001, 0.05, -1.0, -0.0, 300.5, 1e308, float("inf"), float("nan")]),
}


def _enum_values(field: FieldDescriptor):
    return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 1000))


def _message(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Any instance of ``descriptor``: each field set or not, values at the edges."""

    @st.composite
    def build(draw):
        message_class = _CLASSES[descriptor.full_name]
        message = message_class()
        for field in descriptor.fields:
            if descriptor.full_name == "google.protobuf.Any":
                break
            if not draw(st.booleans()):
                continue
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if depth >= 3:
                    continue
                if field.message_type.GetOptions().map_entry:
                    entries = draw(st.dictionaries(TEXT, TEXT, max_size=4))
                    getattr(message, field.name).update(entries)
                    continue
                values = _message(field.message_type, depth + 1)
                if field.is_repeated:
                    for value in draw(st.lists(values, max_size=4)):
                        getattr(message, field.name).add().CopyFrom(value)
                else:
                    getattr(message, field.name).CopyFrom(draw(values))
                continue
            if field.name in _FIELD_VALUES:
                values = _FIELD_VALUES[field.name]
            elif field.type == FieldDescriptor.TYPE_ENUM:
                values = _enum_values(field)
            else:
                values = _SCALARS[field.type]
            if field.is_repeated:
                getattr(message, field.name).extend(draw(st.lists(values, max_size=4)))
            else:
                setattr(message, field.name, draw(values))
        return message

    return build()


def _collect_classes() -> dict:
    classes = {}
    for module in (pb, mt):
        for name in dir(module):
            value = getattr(module, name)
            descriptor = getattr(value, "DESCRIPTOR", None)
            if isinstance(value, type) and descriptor is not None and hasattr(descriptor, "fields"):
                classes[descriptor.full_name] = value
                for nested in descriptor.nested_types:
                    nested_class = getattr(value, nested.name, None)
                    if nested_class is not None:
                        classes[nested.full_name] = nested_class
    from google.protobuf import any_pb2

    classes["google.protobuf.Any"] = any_pb2.Any
    return classes


_CLASSES = _collect_classes()


def _request_class(rpc: str):
    method = pb.DESCRIPTOR.services_by_name["Broker"].methods_by_name[rpc]
    return _CLASSES[method.input_type.full_name]


def _requests(rpc: str) -> st.SearchStrategy:
    return _message(_request_class(rpc).DESCRIPTOR)


def _huge_list_request(rpc: str, count: int, duplicate: bool, type_name: str):
    request = _request_class(rpc)()
    if rpc in ("RegisterBuffer", "MoveBuffer", "Explain") and "offers" in request.DESCRIPTOR.fields_by_name:
        for n in range(count):
            offer = request.offers.add()
            if type_name == "memfd" or duplicate:
                offer.memfd.SetInParent()
            else:
                offer.plugin.type_name = f"{type_name}{n}"
    if "accept" in request.DESCRIPTOR.fields_by_name:
        for n in range(count):
            match = request.accept.add()
            if type_name == "memfd" or duplicate:
                match.memfd.SetInParent()
            else:
                match.plugin.type_name = f"{type_name}{n}"
    return request


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.codes: dict[str, int] = {}


def _check_answer(raw: RawClient, rpc: str, request, tally: Tally, token: str | None = None) -> None:
    tally.cases += 1
    try:
        raw.call(rpc, request, token=token)
        code = "OK"
    except grpc.RpcError as error:
        code = error.code().name
        assert error.code() != grpc.StatusCode.INTERNAL, f"{rpc}({request!r:.300}) → INTERNAL: {error.details()}"
        assert error.code() != grpc.StatusCode.UNKNOWN, f"{rpc}({request!r:.300}) → UNKNOWN: {error.details()}"
        assert error.details(), f"{rpc} answered {code} without a message"
    tally.codes[code] = tally.codes.get(code, 0) + 1


def _serving(raw: RawClient) -> None:
    stats = raw.call("GetStats", pb.GetStatsRequest())
    assert stats.pid > 0


@pytest.fixture
def fuzzed(broker, reliability, request):
    tally = Tally()
    before = broker.settled_fd_count()
    yield broker, tally
    leaked = max(0, broker.settled_fd_count() - before)
    refused = sum(count for code, count in tally.codes.items() if code != "OK")
    reliability.record(
        CATEGORY,
        cases=tally.cases,
        faults=refused,
        fds_leaked=leaked,
        note=f"{request.node.name}: {tally.cases} requests, answers {dict(sorted(tally.codes.items()))}",
    )
    assert "bug in" not in broker.log(), broker.log()[-3000:]


FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("BUFBROKER_FUZZ_EXAMPLES", "15")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_every_rpc_answers_arbitrary_requests_with_a_status_never_internal(fuzzed):
    broker, tally = fuzzed
    with broker.connect() as exporter, RawClient(broker.socket_dir) as raw:
        # Something to aim at: small ids exist, so fuzzed ids sometimes hit.
        shared = exporter.export(4096, name="shared", offers=["segments", "memfd"])
        raw.call("Attach", pb.AttachRequest(buffer_id=shared.id))
        for rpc in UNARY_RPCS:

            @FUZZ_SETTINGS
            @given(request=_requests(rpc))
            def answer(request):
                _check_answer(raw, rpc, request, tally)

            answer()
            _serving(raw)
        exporter.stats()


def test_register_and_move_with_real_fds_answer_arbitrary_offers_and_layouts_with_a_status(fuzzed):
    """The nonce names fds really sent, so the fuzzed offers, layouts and sizes reach validation."""
    broker, tally = fuzzed
    with RawClient(broker.socket_dir) as raw:
        [fd] = [os.memfd_create("fuzz", os.MFD_ALLOW_SEALING)]
        os.ftruncate(fd, 1 << 16)
        raw.send_fds("own", [fd])
        own = raw.register("own", 1 << 16).buffer.id
        for rpc in ("RegisterBuffer", "MoveBuffer"):

            @FUZZ_SETTINGS
            @given(
                request=_requests(rpc),
                fd_size=st.sampled_from([0, 4096, 1 << 16]),
                fd_count=st.integers(1, 3),
                aim=st.booleans(),
            )
            def answer(request, fd_size, fd_count, aim):
                fds = []
                for _ in range(fd_count):
                    new = os.memfd_create("fuzz", os.MFD_ALLOW_SEALING)
                    os.ftruncate(new, fd_size)
                    fds.append(new)
                raw.send_fds("fz", fds)
                for new in fds:
                    os.close(new)
                request.nonce = "fz"
                if rpc == "MoveBuffer" and aim:
                    request.buffer_id = own
                _check_answer(raw, rpc, request, tally)
                _drain_notices(raw)  # closes any fds that came back

            answer()
            _serving(raw)
    os.close(fd)


def _drain_notices(raw: RawClient) -> list:

    received = []
    raw.sock.settimeout(0.005)
    try:
        for _ in range(50):
            message = raw.receive()
            fdwire.close_fds(message.fds)
            received.append(message)
    except (TimeoutError, BlockingIOError):
        pass
    finally:
        raw.sock.settimeout(5)
    return received


SHAPES = {
    "10000 unknown types": (10000, False, "no-such-type"),
    "10000 duplicate memfd": (10000, True, "memfd"),
    "empty": (0, False, "memfd"),
}


def test_huge_duplicate_and_empty_offer_and_accept_lists_are_answered(fuzzed):
    broker, tally = fuzzed
    with broker.connect() as exporter, RawClient(broker.socket_dir) as raw:
        shared = exporter.export(4096, name="shared", offers=["memfd"])
        for rpc in ["RegisterBuffer", "MoveBuffer", "Attach", "Explain"]:
            for shape, (count, duplicate, type_name) in SHAPES.items():
                _answer_list_request(raw, tally, shared, rpc, shape, count, duplicate, type_name)


def _answer_list_request(raw, tally, shared, rpc, shape, count, duplicate, type_name):
    request = _huge_list_request(rpc, count, duplicate, type_name)
    for field in ("buffer_id",):
        if field in request.DESCRIPTOR.fields_by_name:
            setattr(request, field, shared.id)
    if "size" in request.DESCRIPTOR.fields_by_name:
        request.size = 4096
    started = time.monotonic()
    _check_answer(raw, rpc, request, tally)
    assert time.monotonic() - started < 5, f"{rpc} with {shape} took {time.monotonic() - started:.1f} s"
    _serving(raw)


WRONG_TOKENS = [
    "",
    "00",
    "not-hex",
    "ff" * 16,
    "0" * 4096,
    "zz" * 16,
]  # (grpc itself refuses non-ASCII values client-side)


def test_wrong_tokens_are_unauthenticated_for_every_rpc(fuzzed):
    broker, tally = fuzzed
    with RawClient(broker.socket_dir) as raw:
        for rpc, token in [(rpc, token) for rpc in UNARY_RPCS for token in WRONG_TOKENS]:
            request = _request_class(rpc)()
            tally.cases += 1
            try:
                raw.call(rpc, request, token=token)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
                assert error.details()
            except ValueError:
                # grpc refuses to send a metadata value it cannot encode: not the broker's part.
                continue
            tally.codes[code.name] = tally.codes.get(code.name, 0) + 1
            if rpc in ("ListMappingTypes",) and code == grpc.StatusCode.OK:
                continue  # public, needs no session
            assert code == grpc.StatusCode.UNAUTHENTICATED, f"{rpc} with token {token!r:.20} answered {code}"
        _serving(raw)


def test_events_stream_with_wrong_token_or_twice_is_refused_with_a_status(fuzzed):
    broker, tally = fuzzed
    with RawClient(broker.socket_dir) as raw:
        stream = raw.stub.Events(pb.EventsRequest(), metadata=((fdwire.SESSION_METADATA_KEY, "ff" * 16),), timeout=5)
        with pytest.raises(grpc.RpcError) as raised:
            next(stream)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        first = raw.stub.Events(pb.EventsRequest(), metadata=raw.metadata, timeout=5)
        assert next(first).HasField("ready")
        second = raw.stub.Events(pb.EventsRequest(), metadata=raw.metadata, timeout=5)
        with pytest.raises(grpc.RpcError) as raised:
            next(second)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        first.cancel()
        tally.cases += 3
        _serving(raw)


CALL_KINDS = {"attach": "Attach", "map": "Map", "unmap": "Unmap", "detach": "Detach"}


def test_call_channels_answer_arbitrary_calls_and_bytes_with_an_error_never_internal(fuzzed):
    """The fast path: every datagram gets one reply, with the call's id, and never INTERNAL."""
    from bufbroker.v1 import fd_channel_pb2 as fdpb
    from tests.raw_client import call_on

    broker, tally = fuzzed
    with broker.connect() as exporter, RawClient(broker.socket_dir) as raw, raw.open_call_channel() as channel:
        exporter.export(4096, name="shared", offers=["segments", "memfd"])
        call_on(channel, "attach", pb.AttachRequest(buffer_name="shared"))  # small ids exist

        def answered(reply, fds: list[int], call_id: int) -> None:
            fdwire.close_fds(fds)
            tally.cases += 1
            code = reply.error.code if reply.HasField("error") else "OK"
            assert code not in ("INTERNAL", "UNKNOWN"), f"{reply!r:.300}"
            assert reply.call_id == call_id
            assert code == "OK" or reply.error.message
            tally.codes[code] = tally.codes.get(code, 0) + 1

        for kind, rpc in CALL_KINDS.items():

            @FUZZ_SETTINGS
            @given(request=_requests(rpc), call_id=st.sampled_from(U64_EDGES))
            def answer(request, call_id):
                reply, fds = call_on(channel, kind, request, call_id=call_id)
                answered(reply, fds, call_id)

            answer()

        @FUZZ_SETTINGS
        @given(data=st.binary(min_size=1, max_size=300))
        def answer_bytes(data):
            channel.sendmsg([data])
            received = fdwire.receive(channel, fdwire.MAX_CALL_BYTES)
            message = received.message
            assert message is not None and message.HasField("reply"), received
            call = fdpb.FdMessage()
            try:
                call.ParseFromString(data)
                call_id = call.call.call_id if call.HasField("call") else 0
            except Exception:
                call_id = 0
            answered(message.reply, received.fds, call_id)

        answer_bytes()
        reply, fds = call_on(channel, "attach", pb.AttachRequest(buffer_name="shared", map=True))
        assert len(fds) == 1, reply
        fdwire.close_fds(fds)
        _serving(raw)
