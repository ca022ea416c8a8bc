"""The Registry's state machine (core/registry.py), driven directly with fake mapping types.

No broker, no sockets, no real fds: the fds are plain numbers, the ledger's
close records them, and the fake types map by handing back the numbers they
are given. So each rule runs in well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing, BufferFd
from bufbroker_broker.core.errors import (
    FailedPrecondition,
    NoCommonMappingType,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.core.host_facts import HostFacts, UdmabufFacts
from bufbroker_broker.core.mapping_type import MapResult, MatchContext, Matched, SoftMismatch, check_mapping_type
from bufbroker_broker.core.negotiate import MATCHED, TYPE_DIFFERS, Spec
from bufbroker_broker.core.registry import (
    ACTIVE,
    EXIT_KEEP,
    REVOKED,
    AttachmentInvalidatedEvent,
    Change,
    ExporterGoneEvent,
    MoveNotifyEvent,
    Registry,
    RevokedEvent,
    Session,
    SessionLimits,
)

SIZE = 4096
HOST = HostFacts(udmabuf=UdmabufFacts(True, "made up for the test", device="/nonexistent"))


@dataclass(frozen=True)
class FakeOffer:
    tag: str = ""
    soft: str = ""  # non-empty: a soft mismatch with this reason


@dataclass(frozen=True)
class FakeMatch:
    tag: str = ""


@dataclass(frozen=True)
class FakeParams:
    offer_tag: str
    match_tag: str


@dataclass(eq=False)  # a singleton: compared and hashed by identity
class FakeType:
    """A mapping type with no I/O: a map sends the buffer's fd numbers.

    With ``keeps``, the first map "builds" one fd (a number from 900 up) that
    it keeps in ``backing.kept`` for later maps, like udmabuf. With
    ``opens``, each map "opens" one temporary fd (from 700 up), like a
    read-only reopen. Every call is recorded.
    """

    name: str
    keeps: bool = False
    opens: bool = False
    description: str = "a fake type"
    offer_message: type = FakeOffer
    match_message: type = FakeMatch
    handle_message: type = pb.MemfdHandle
    contexts: list[MatchContext] = field(default_factory=list)
    maps: list[tuple[Backing, FakeParams]] = field(default_factory=list)
    unmaps: list[tuple[Backing, FakeParams]] = field(default_factory=list)
    _next_fd: int = 900
    _next_temporary: int = 700

    def check_offer(self, offer, fd_sizes, size):
        return offer

    def check_match(self, match):
        return match

    def match(self, offer: FakeOffer, match: FakeMatch, ctx: MatchContext):
        self.contexts.append(ctx)
        return SoftMismatch(offer.soft) if offer.soft else Matched()

    def finish(self, offer: FakeOffer, match: FakeMatch, ctx: MatchContext) -> FakeParams:
        return FakeParams(offer.tag, match.tag)

    def map(self, backing: Backing, params: FakeParams) -> MapResult:
        self.maps.append((backing, params))
        handle = pb.MemfdHandle(size=backing.size)
        if self.keeps:
            kept = backing.kept.get("built")
            if kept is None:
                kept = backing.kept["built"] = self._next_fd
                self._next_fd += 1
                return MapResult(handle, [kept], retained=[kept])
            return MapResult(handle, [kept])
        if self.opens:
            opened = self._next_temporary
            self._next_temporary += 1
            return MapResult(handle, [opened], temporary=[opened])
        return MapResult(handle, [f.fd for f in backing.fds])

    def unmap(self, backing: Backing, params: FakeParams) -> None:
        self.unmaps.append((backing, params))

    def describe(self) -> str:
        return self.description


class FakeConverter:
    """Hands out offers of ``source`` as ``target``; maps like ``target`` (its kept table is target's)."""

    copies = False

    def __init__(self, source: FakeType, target: FakeType) -> None:
        self.name = f"{source.name}->{target.name}"
        self.source, self.target = source, target
        self.maps: list[Backing] = []

    def match(self, offer, match, ctx):
        return Matched()

    def finish(self, offer, match, ctx):
        return FakeParams(f"converted {offer.tag}", match.tag)

    def map(self, backing, params):
        self.maps.append(backing)
        return self.target.map(backing, params)

    def unmap(self, backing, params):
        self.target.unmap(backing, params)


class World:
    """A registry with a recording ledger close, notify and observer."""

    def __init__(self, limits: SessionLimits | None = None, converters=()) -> None:
        self.closed: list[int] = []
        self.events: list[tuple[int, object]] = []
        self.changes: list[Change] = []
        self.ledger = FdLedger(close=self.closed.append)
        self.registry = Registry(
            self.ledger,
            notify=lambda session, event: self.events.append((session.id, event)),
            limits=limits or SessionLimits(),
            converters=converters,
            host=HOST,
        )
        self.registry.observe(self.changes.append)
        self._pids = iter(range(100, 1000))
        self._fds = iter(range(10, 700))

    def session(self, uid: int = 1000) -> Session:
        pid = next(self._pids)
        return self.registry.session_open(f"token-{pid}", pid, uid, uid)

    def fds(self, n: int = 1, size: int = SIZE) -> list[BufferFd]:
        """n fds as the server hands them over: received, so adopted by the ledger."""
        numbers = self.ledger.adopt_received([next(self._fds) for _ in range(n)])
        return [BufferFd(fd, size, True) for fd in numbers]

    def register(self, exporter: Session, *offers: Spec, name: str = "", **kwargs):
        return self.registry.buffer_register(exporter, self.fds(), SIZE, list(offers), name=name, **kwargs)

    def kinds(self) -> list[str]:
        return [c.kind for c in self.changes]

    def events_of(self, session: Session) -> list[object]:
        return [event for session_id, event in self.events if session_id == session.id]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def a() -> FakeType:
    return FakeType("a")


@pytest.fixture
def b() -> FakeType:
    return FakeType("b")


def offer(t: FakeType, tag: str = "", soft: str = "") -> Spec:
    return Spec(t, FakeOffer(tag, soft))


def match(t: FakeType, tag: str = "") -> Spec:
    return Spec(t, FakeMatch(tag))


def test_the_fake_type_is_a_complete_mapping_type(a):
    check_mapping_type(a)  # raises TypeError if the fixture type is incomplete


# --- register, find, visibility -----------------------------------------------------


def test_a_registered_buffer_is_found_by_id_and_by_name(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a), name="cam")
    assert world.registry.buffer_find(buffer.id) is buffer
    assert world.registry.buffer_find(name="cam") is buffer
    assert exporter.buffers == {buffer.id: buffer}
    with pytest.raises(NotFound, match="no buffer named 'nope'"):
        world.registry.buffer_find(name="nope")


def test_a_buffer_name_is_taken_until_its_buffer_is_unregistered(world, a):
    exporter = world.session()
    first = world.register(exporter, offer(a), name="cam")
    with pytest.raises(FailedPrecondition, match=f"buffer name 'cam' is taken by buffer {first.id}"):
        world.register(exporter, offer(a), name="cam")
    world.registry.buffer_unregister(first)
    assert world.register(exporter, offer(a), name="cam").name == "cam"


def test_only_the_exporter_owns_its_buffer(world, a):
    exporter, other = world.session(), world.session()
    buffer = world.register(exporter, offer(a))
    assert world.registry.buffer_owned(exporter, buffer.id) is buffer
    with pytest.raises(PermissionDenied, match="only its exporter may revoke or unregister it"):
        world.registry.buffer_owned(other, buffer.id)


def test_a_buffer_is_visible_to_its_exporter_its_allow_list_and_root(world, a):
    exporter, stranger, friend, root = world.session(1000), world.session(2000), world.session(3000), world.session(0)
    buffer = world.register(exporter, offer(a), allow=("uid:3000",))
    visible = {s.uid: world.registry.buffer_visible(s, buffer) for s in (exporter, stranger, friend, root)}
    assert visible == {1000: True, 2000: False, 3000: True, 0: True}


def test_one_file_under_two_allow_lists_is_refused_naming_the_other_buffer(world, a):
    exporter = world.session(1000)

    def pool_fd() -> list[BufferFd]:  # a new fd of the same file (st_dev, st_ino), as two registrations send
        (number,) = world.ledger.adopt_received([next(world._fds)])
        return [BufferFd(number, SIZE, True, file_id=(5, 77))]

    frame_a = world.registry.buffer_register(exporter, pool_fd(), SIZE, [offer(a)], name="a", allow=("uid:2000",))
    refused = pool_fd()
    with pytest.raises(FailedPrecondition) as error:
        world.registry.buffer_register(exporter, refused, SIZE, [offer(a)], name="b", allow=("uid:3000",))
    message = error.value.message
    assert f"buffer {frame_a.id} (a)" in message and "uid:2000" in message and "uid:3000" in message
    assert "same allow list" in message and "one memfd per access group" in message
    world.ledger.close_all([f.fd for f in refused])  # the caller's to close, as on every refusal
    same = world.registry.buffer_register(exporter, pool_fd(), SIZE, [offer(a)], name="c", allow=("uid:2000",))
    assert same.id != frame_a.id
    other_file = [BufferFd(world.ledger.adopt_received([next(world._fds)])[0], SIZE, True, file_id=(5, 78))]
    world.registry.buffer_register(exporter, other_file, SIZE, [offer(a)], name="d", allow=("uid:3000",))
    world.registry.buffer_unregister(frame_a)
    world.registry.buffer_unregister(same)  # the file is no longer registered: any allow list may take it
    world.registry.buffer_register(exporter, pool_fd(), SIZE, [offer(a)], name="e", allow=("uid:3000",))


# --- attach, negotiation ---------------------------------------------------------------


def test_attach_records_the_negotiated_type_params_and_trace(world, a, b):
    exporter = world.session()
    buffer = world.register(exporter, offer(a, "first"), offer(b, "second"))
    attachment = world.registry.attach(exporter, buffer, [match(b, "m")], pinned=False)
    assert attachment.map_type is b
    assert attachment.map_params == FakeParams("second", "m")
    assert [(s.offer_index, s.verdict) for s in attachment.trace] == [(0, TYPE_DIFFERS), (1, MATCHED)]
    assert world.registry.attachment_find(exporter, attachment.id) is attachment
    assert buffer.attachments == {attachment.id: attachment}


def test_an_attach_without_a_common_type_creates_nothing(world, a, b):
    exporter = world.session()
    buffer = world.register(exporter, offer(a))
    with pytest.raises(NoCommonMappingType):
        world.registry.attach(exporter, buffer, [match(b)], pinned=False)
    assert world.registry.attachments == {} and buffer.attachments == {} and exporter.attachments == {}
    negotiated = [c for c in world.changes if c.kind == "negotiated"]
    assert negotiated[-1].detail == {"result": "no-common-type", "map_type": "", "dry_run": False}


def test_attach_to_a_buffer_the_importer_may_not_see_is_not_found_like_a_missing_one(world, a):
    buffer = world.register(world.session(1000), offer(a), name="secret-name", allow=("uid:3000",))
    stranger = world.session(2000)
    with pytest.raises(NotFound) as hidden:
        world.registry.attach(stranger, buffer, [match(a)], pinned=False)
    with pytest.raises(NotFound) as missing:
        world.registry.buffer_find(buffer.id + 1000)
    assert str(hidden.value) == str(missing.value).replace(str(buffer.id + 1000), str(buffer.id))
    assert "secret-name" not in str(hidden.value) and "uid:3000" not in str(hidden.value)
    with pytest.raises(NotFound, match="no buffer named 'secret-name'"):
        world.registry.buffer_find(name="secret-name", asker=stranger)
    assert world.registry.buffer_find(name="secret-name", asker=world.session(3000)) is buffer


def test_attach_by_the_exporter_its_own_allow_list_excludes_is_permission_denied(world, a):
    exporter = world.session(1000)
    buffer = world.register(exporter, offer(a), allow=("uid:2000",))
    with pytest.raises(PermissionDenied, match=r"does not allow uid:1000 gid:1000.*\[uid:2000\]"):
        world.registry.attach(exporter, buffer, [match(a)], pinned=False)


def test_every_match_reads_the_host_facts_the_registry_was_given(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a))
    world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    world.registry.explain_offers(exporter, [offer(a)], [match(a)])
    attach_ctx, dry_ctx = a.contexts
    assert attach_ctx.host is HOST and dry_ctx.host is HOST
    assert (attach_ctx.dry_run, attach_ctx.buffer_size, attach_ctx.fd_sizes) == (False, SIZE, (SIZE,))
    assert dry_ctx.dry_run is True  # explain against bare offers: no buffer behind them


def test_explain_negotiates_without_attaching_and_says_it_was_a_dry_run(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a))
    negotiation = world.registry.explain(exporter, buffer, [match(a)])
    assert negotiation.map_type is a
    assert world.registry.attachments == {}
    assert world.changes[-1].detail == {"result": "matched", "map_type": "a", "dry_run": True}


# --- map, unmap, detach -----------------------------------------------------------------


def test_map_hands_the_type_the_buffers_backing_and_the_negotiated_params(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a, "o"), name="cam")
    attachment = world.registry.attach(exporter, buffer, [match(a, "m")], pinned=False)
    mapping, result = world.registry.map(attachment)
    ((backing, params),) = a.maps
    assert (backing.buffer_id, backing.name, backing.size, backing.label) == (
        buffer.id,
        "cam",
        SIZE,
        f"buffer {buffer.id} (cam)",
    )
    assert list(backing.fds) == buffer.fds
    assert params == FakeParams("o", "m")
    assert result.fds == [buffer.fds[0].fd]
    assert (mapping.fd_count, exporter.mapping_count) == (1, 1)
    assert world.registry.mapping_find(exporter, mapping.id) is mapping


def test_unmap_hands_the_type_the_same_backing_and_params_and_forgets_the_mapping(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a, "o"))
    attachment = world.registry.attach(exporter, buffer, [match(a, "m")], pinned=False)
    mapping, _ = world.registry.map(attachment)
    world.registry.unmap(mapping)
    ((backing, params),) = a.unmaps
    assert backing.buffer_id == buffer.id and params == FakeParams("o", "m")
    assert attachment.mappings == {} and exporter.mapping_count == 0
    with pytest.raises(NotFound, match=f"no mapping {mapping.id} in this session"):
        world.registry.mapping_find(exporter, mapping.id)


def test_mappings_and_attachments_are_found_only_in_their_own_session(world, a):
    exporter, other = world.session(), world.session()
    buffer = world.register(exporter, offer(a))
    attachment = world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    mapping, _ = world.registry.map(attachment)
    with pytest.raises(NotFound):
        world.registry.attachment_find(other, attachment.id)
    with pytest.raises(NotFound):
        world.registry.mapping_find(other, mapping.id)


def test_detach_unmaps_every_mapping_first(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a))
    attachment = world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    for _ in range(3):
        world.registry.map(attachment)
    world.registry.detach(attachment)
    assert len(a.unmaps) == 3
    assert world.registry.mappings == {} and world.registry.attachments == {} and exporter.mapping_count == 0
    assert world.kinds()[-4:] == ["unmapped", "unmapped", "unmapped", "detached"]


def test_a_converted_attachment_maps_through_its_converter_with_the_targets_kept_fds():
    source, target = FakeType("source"), FakeType("target", keeps=True)
    converter = FakeConverter(source, target)
    world = World(converters=[converter])
    exporter = world.session()
    buffer = world.register(exporter, offer(source, "o"))
    attachment = world.registry.attach(exporter, buffer, [match(target)], pinned=False)
    assert attachment.converter is converter and attachment.map_type is target
    _, result = world.registry.map(attachment)
    (backing,) = converter.maps
    assert backing.kept is buffer.kept[target]
    assert result.retained == [900] and buffer.kept[target] == {"built": 900}


# --- revoke, unregister ---------------------------------------------------------------------


def test_revoke_closes_the_buffers_fds_through_the_ledger(world, a):
    exporter = world.session()
    buffer = world.registry.buffer_register(exporter, world.fds(3), SIZE, [offer(a)])
    fds = [f.fd for f in buffer.fds]
    world.registry.buffer_revoke(buffer, "done")
    assert world.closed == fds[::-1]  # in reverse order
    assert (buffer.state, buffer.fds, world.ledger.held) == (REVOKED, [], 0)


def test_revoke_tells_each_importer_session_once_with_all_its_attachments(world, a):
    exporter, importer = world.session(), world.session()
    buffer = world.register(exporter, offer(a), allow=("any",))
    first = world.registry.attach(importer, buffer, [match(a)], pinned=False)
    second = world.registry.attach(importer, buffer, [match(a)], pinned=False)
    world.registry.buffer_revoke(buffer, "withdrawn")
    assert world.events_of(importer) == [RevokedEvent(buffer.id, (first.id, second.id), "withdrawn")]


def test_a_revoked_buffer_refuses_attach_and_map_but_keeps_attachments_until_detach(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a), name="cam")
    attachment = world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    world.registry.buffer_revoke(buffer, "withdrawn")
    with pytest.raises(FailedPrecondition, match=r"buffer revoked: buffer \d+ \(cam\).*cannot map it"):
        world.registry.map(attachment)
    with pytest.raises(FailedPrecondition, match="cannot attach to it"):
        world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    assert attachment.id in world.registry.attachments


def test_revoking_twice_closes_nothing_twice(world, a):
    buffer = world.register(world.session(), offer(a))
    world.registry.buffer_revoke(buffer, "once")
    world.registry.buffer_revoke(buffer, "twice")
    assert len(world.closed) == 1 and world.kinds().count("revoked") == 1


def test_unregister_revokes_detaches_and_forgets_the_buffer(world, a):
    exporter, importer = world.session(), world.session()
    buffer = world.register(exporter, offer(a), name="cam", allow=("any",))
    attachment = world.registry.attach(importer, buffer, [match(a)], pinned=False)
    world.registry.map(attachment)
    world.registry.buffer_unregister(buffer)
    assert world.registry.buffers == {} and world.registry.buffers_by_name == {}
    assert world.registry.attachments == {} and importer.attachments == {} and exporter.buffers == {}
    assert world.kinds()[-4:] == ["revoked", "unmapped", "detached", "unregistered"]


def test_kept_fds_are_adopted_and_closed_through_the_ledger_when_the_buffer_is_revoked(world):
    keeper = FakeType("keeper", keeps=True)
    exporter = world.session()
    buffer = world.register(exporter, offer(keeper))
    attachment = world.registry.attach(exporter, buffer, [match(keeper)], pinned=False)
    _, first = world.registry.map(attachment)
    _, again = world.registry.map(attachment)
    assert first.retained == [900] and again.retained == [] and again.fds == [900]  # built once, kept
    assert world.ledger.held == 2  # the buffer's fd and the kept one
    world.registry.buffer_revoke(buffer, "done")
    assert sorted(world.closed) == [10, 900]
    assert buffer.kept == {} and world.ledger.held == 0


# --- the fd ledger's books ------------------------------------------------------------------


def test_the_ledger_holds_exactly_the_fds_the_registry_owns(world):
    opener = FakeType("opener", opens=True)
    exporter = world.session()
    buffer = world.registry.buffer_register(exporter, world.fds(2), SIZE, [offer(opener)])
    assert world.ledger.held == 2
    attachment = world.registry.attach(exporter, buffer, [match(opener)], pinned=False)
    _, result = world.registry.map(attachment)
    assert result.temporary == [700] and world.ledger.held == 3  # adopted: the caller must close it
    world.ledger.close_all(result.temporary)  # what the server does once it sent them
    assert world.ledger.held == 2
    world.registry.buffer_unregister(buffer)
    assert world.ledger.held == 0
    assert (world.ledger.received, world.ledger.opened, world.ledger.closed) == (2, 1, 3)


# --- limits -----------------------------------------------------------------------------------


def test_a_session_past_max_buffers_is_resource_exhausted_naming_the_setting(a):
    world = World(SessionLimits(max_buffers=1))
    exporter = world.session()
    world.register(exporter, offer(a))
    with pytest.raises(ResourceExhausted, match=r"already holds 1 buffers.*max_buffers_per_session = 1"):
        world.register(exporter, offer(a))
    assert len(exporter.buffers) == 1


def test_a_session_past_max_attachments_is_resource_exhausted_naming_the_setting(a):
    world = World(SessionLimits(max_attachments=2))
    exporter = world.session()
    buffer = world.register(exporter, offer(a))
    for _ in range(2):
        world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    with pytest.raises(ResourceExhausted, match="max_attachments_per_session = 2"):
        world.registry.attach(exporter, buffer, [match(a)], pinned=False)


def test_a_session_past_max_mappings_is_resource_exhausted_until_it_unmaps(a):
    world = World(SessionLimits(max_mappings=1))
    exporter = world.session()
    buffer = world.register(exporter, offer(a))
    attachment = world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    mapping, _ = world.registry.map(attachment)
    with pytest.raises(ResourceExhausted, match="max_mappings_per_session = 1"):
        world.registry.map(attachment)
    assert len(a.maps) == 1  # the type was not asked
    world.registry.unmap(mapping)
    world.registry.map(attachment)


# --- exporter exit ------------------------------------------------------------------------------


def test_an_exporter_exit_with_the_revoke_policy_revokes_and_unregisters_its_buffers(world, a):
    exporter, importer = world.session(), world.session()
    buffer = world.register(exporter, offer(a), allow=("any",))
    attachment = world.registry.attach(importer, buffer, [match(a)], pinned=False)
    world.registry.session_close(exporter)
    assert world.events_of(importer) == [RevokedEvent(buffer.id, (attachment.id,), "exporter session ended")]
    assert world.registry.buffers == {} and importer.attachments == {}
    assert exporter.id not in world.registry.sessions and "token-100" not in world.registry.sessions_by_token


def test_an_exporter_exit_with_the_keep_policy_keeps_the_buffer_until_its_last_importer_detaches(world, a):
    exporter, importer = world.session(), world.session()
    buffer = world.register(exporter, offer(a), allow=("any",), on_exporter_exit=EXIT_KEEP)
    attachment = world.registry.attach(importer, buffer, [match(a)], pinned=False)
    world.registry.session_close(exporter)
    assert world.events_of(importer) == [ExporterGoneEvent(buffer.id, EXIT_KEEP)]
    assert (buffer.state, buffer.exporter_gone, world.closed) == (ACTIVE, True, [])
    world.registry.map(attachment)  # the importer may finish reading
    world.registry.detach(attachment)
    assert buffer.id not in world.registry.buffers and world.closed == [10]


def test_an_exporter_exit_with_the_keep_policy_and_no_importers_unregisters_at_once(world, a):
    exporter = world.session()
    world.register(exporter, offer(a), on_exporter_exit=EXIT_KEEP)
    world.registry.session_close(exporter)
    assert world.registry.buffers == {} and world.closed == [10]


def test_an_importer_exit_detaches_its_attachments_and_leaves_the_buffer(world, a):
    exporter, importer = world.session(), world.session()
    buffer = world.register(exporter, offer(a), allow=("any",))
    attachment = world.registry.attach(importer, buffer, [match(a)], pinned=False)
    world.registry.map(attachment)
    world.registry.session_close(importer)
    world.registry.session_close(importer)  # closing twice is a no-op
    assert buffer.attachments == {} and world.registry.mappings == {} and len(a.unmaps) == 1
    assert buffer.state == ACTIVE and world.closed == []


# --- moves ------------------------------------------------------------------------------------------


def test_a_pinned_compat_attachment_blocks_move_notify(world, a):
    exporter, importer = world.session(), world.session()
    buffer = world.register(exporter, offer(a), allow=("any",))
    compat = world.registry.attach(importer, buffer, [match(a)], pinned=True)
    with pytest.raises(
        FailedPrecondition, match=rf"pinned by a compat attachment of session {importer.id} \(pid {importer.pid}\)"
    ):
        world.registry.move_notify(buffer, "grow")
    assert world.events_of(importer) == []
    world.registry.detach(compat)
    assert world.registry.move_notify(buffer, "grow") == []


def test_move_notify_tells_only_attachments_that_hold_mappings(world, a):
    exporter, importer = world.session(), world.session()
    buffer = world.register(exporter, offer(a), allow=("any",))
    mapped = world.registry.attach(importer, buffer, [match(a)], pinned=False)
    world.registry.attach(importer, buffer, [match(a)], pinned=False)  # never mapped
    world.registry.map(mapped)
    assert world.registry.move_notify(buffer, "grow") == [mapped]
    assert world.events_of(importer) == [MoveNotifyEvent(mapped.id, buffer.id, "grow", 1)]


def test_move_commit_marks_late_attachments_non_compliant_and_drops_their_mappings(world, a):
    exporter, importer = world.session(), world.session()
    buffer = world.register(exporter, offer(a), allow=("any",))
    late = world.registry.attach(importer, buffer, [match(a)], pinned=False)
    world.registry.map(late)
    world.registry.move_notify(buffer, "grow")
    old_fd = buffer.fds[0].fd
    assert world.registry.move_commit(buffer, world.fds(), SIZE, [offer(a)], None) == [late]
    assert late.non_compliant and importer.non_compliant
    assert late.mappings == {} and importer.mapping_count == 0 and len(a.unmaps) == 1
    assert isinstance(world.events_of(importer)[-1], AttachmentInvalidatedEvent)
    assert world.closed == [old_fd] and buffer.generation == 2
    assert late.invalid == ""  # it may map the new backing


def test_move_commit_re_derives_map_params_from_the_new_offers(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a, "before"))
    attachment = world.registry.attach(exporter, buffer, [match(a, "m")], pinned=False)
    world.registry.move_commit(buffer, world.fds(), 2 * SIZE, [offer(a, "after")], None)
    assert attachment.map_params == FakeParams("after", "m")
    world.registry.map(attachment)
    backing, params = a.maps[-1]
    assert (backing.size, backing.fds[0].fd, params) == (2 * SIZE, buffer.fds[0].fd, FakeParams("after", "m"))


def test_move_commit_invalidates_an_attachment_the_new_offers_no_longer_grant(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a))
    attachment = world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    world.registry.move_commit(buffer, world.fds(), SIZE, [offer(a, soft="too big now")], None)
    assert "after the move the buffer no longer offers it a" in attachment.invalid
    assert world.events_of(exporter) == [AttachmentInvalidatedEvent(attachment.id, attachment.invalid)]
    with pytest.raises(FailedPrecondition, match=f"attachment {attachment.id} was invalidated"):
        world.registry.map(attachment)


def test_kept_fds_are_closed_when_the_buffer_moves(world):
    keeper = FakeType("keeper", keeps=True)
    exporter = world.session()
    buffer = world.register(exporter, offer(keeper))
    attachment = world.registry.attach(exporter, buffer, [match(keeper)], pinned=False)
    mapping, _ = world.registry.map(attachment)
    world.registry.unmap(mapping)
    world.registry.move_commit(buffer, world.fds(), SIZE, [offer(keeper)], None)
    assert 900 in world.closed and buffer.kept == {}
    _, result = world.registry.map(attachment)
    assert result.retained == [901]  # built again from the new backing


# --- observers ----------------------------------------------------------------------------------------


def test_observers_see_every_change_in_order(world, a):
    exporter = world.session()
    buffer = world.register(exporter, offer(a))
    attachment = world.registry.attach(exporter, buffer, [match(a)], pinned=False)
    mapping, _ = world.registry.map(attachment)
    world.registry.unmap(mapping)
    world.registry.detach(attachment)
    world.registry.buffer_unregister(buffer)
    world.registry.session_close(exporter)
    assert world.kinds() == [
        "session-opened",
        "registered",
        "negotiated",
        "attached",
        "mapped",
        "unmapped",
        "detached",
        "revoked",
        "unregistered",
        "session-ended",
    ]
    attached = world.changes[3]
    assert (attached.session_id, attached.buffer_id, attached.attachment_id) == (exporter.id, buffer.id, attachment.id)
    assert attached.detail == {"map_type": "a", "pinned": False}


def test_unobserve_stops_the_calls_and_other_observers_go_on(world, a):
    later: list[Change] = []
    world.registry.observe(later.append)
    world.registry.unobserve(world.changes.append)
    world.register(world.session(), offer(a))
    assert world.changes == [] and [c.kind for c in later] == ["session-opened", "registered"]
