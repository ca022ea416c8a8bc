"""Operations (server/operations.py): the use cases every transport calls.

A real Registry, the real built-in mapping types and real memfds; the
ledger closes with os.close. Each test's World checks at teardown that
every session can end and the ledger then holds no fd.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time

import pytest

from bufbroker.specs import offers_to_wire
from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from bufbroker_broker.core.negotiate import MATCHED, TYPE_DIFFERS
from bufbroker_broker.core.principals import SAME_UID
from bufbroker_broker.core.registry import AttachmentInvalidatedEvent, MoveNotifyEvent, SessionLimits
from bufbroker_broker.server.limits import DEFAULT_MAX_LABELS as MAX_LABELS
from bufbroker_broker.server.limits import DEFAULT_MAX_NAME_LENGTH as MAX_NAME
from bufbroker_broker.server.operations import Operations
from tests.unit.server.world import SIZE, World, accept, is_open, plugin_match, plugin_offer, seals

RW = mpb.ACCESS_READ_WRITE


def run(coroutine):
    return asyncio.run(coroutine)


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- register ------------------------------------------------------------------------


def test_register_seals_the_memfds_and_keeps_them(world: World):
    exporter = world.session()
    fd = world.memfd()
    buffer = world.ops.register(exporter, [fd], SIZE, offers_to_wire(["memfd"]), name="kept", on_exporter_exit="revoke")
    assert world.registry.buffers[buffer.id] is buffer and world.ops.find_buffer(name="kept") is buffer
    assert is_open(fd) and world.closed == []
    wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    assert seals(fd) & wanted == wanted
    assert buffer.allow == (SAME_UID,), "no allow list means the exporter's uid only"


def _bad_registrations():
    offers = offers_to_wire(["memfd"])
    return {
        "size larger than fd 0": dict(size=SIZE + 1, wire_offers=offers),
        "size zero": dict(size=0, wire_offers=offers),
        "name too long": dict(size=SIZE, wire_offers=offers, name="n" * (MAX_NAME + 1)),
        "name with a control character": dict(size=SIZE, wire_offers=offers, name="a\nb"),
        "too many labels": dict(size=SIZE, wire_offers=offers, labels={str(i): "v" for i in range(MAX_LABELS + 1)}),
        "unknown mapping type": dict(size=SIZE, wire_offers=[plugin_offer("no-such-type")]),
        "empty offer arm": dict(size=SIZE, wire_offers=[mpb.Offer()]),
        "bad principal": dict(size=SIZE, wire_offers=offers, allow=["nobody-knows-this"]),
    }


@pytest.mark.parametrize(
    "case",
    [
        "size larger than fd 0",
        "size zero",
        "name too long",
        "name with a control character",
        "too many labels",
        "unknown mapping type",
        "empty offer arm",
        "bad principal",
    ],
)
def test_register_closes_every_fd_when_the_request_is_invalid(world: World, case: str):
    exporter = world.session()
    fds = [world.memfd(), world.memfd()]
    request = _bad_registrations()[case]
    with pytest.raises(InvalidArgument):
        world.ops.register(exporter, fds, on_exporter_exit="revoke", **request)
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert sorted(world.closed) == sorted(fds) and world.ledger.held == 0
    assert not world.registry.buffers


def test_register_closes_every_fd_when_one_is_not_a_memfd(world: World):
    exporter = world.session()
    read_end, write_end = os.pipe()
    os.close(write_end)
    fds = [world.memfd(), world.ledger.adopt_received([read_end])[0]]
    with pytest.raises(InvalidArgument, match="fd 1 of the buffer is a pipe"):
        world.ops.register(exporter, fds, SIZE, offers_to_wire(["segments"]), on_exporter_exit="revoke")
    assert not any(is_open(fd) for fd in fds)
    assert world.ledger.held == 0


def test_register_closes_the_fds_when_the_registry_refuses_the_buffer(world: World):
    """A name already taken is the registry's refusal, after every check here passed."""
    exporter = world.session()
    world.export(exporter, name="taken")
    fd = world.memfd()
    with pytest.raises(FailedPrecondition, match="taken"):
        world.ops.register(exporter, [fd], SIZE, offers_to_wire(["memfd"]), name="taken", on_exporter_exit="revoke")
    assert not is_open(fd)
    assert world.ledger.held == 1  # the first buffer's fd only


# --- attach and map ----------------------------------------------------------------------


def test_a_dynamic_attach_needs_the_event_stream_but_a_compat_one_does_not(world: World):
    buffer = world.export(world.session())
    deaf = world.session(events=False)
    with pytest.raises(FailedPrecondition, match="event stream"):
        world.ops.attach(deaf, buffer, accept("memfd"), RW)
    assert not deaf.attachments
    compat = world.ops.attach(deaf, buffer, [], RW)
    assert compat.pinned and compat.map_type.name == "memfd"


def test_attach_map_now_leaves_no_attachment_when_the_map_is_refused():
    world = World(limits=SessionLimits(max_mappings=0))
    try:
        buffer = world.export(world.session())
        importer = world.session()
        changes = []
        world.registry.observe(changes.append)
        with pytest.raises(ResourceExhausted):
            world.ops.attach_map_now(importer, buffer, accept("memfd"), RW)
        assert not world.registry.attachments and not importer.attachments and not buffer.attachments
        assert [c.kind for c in changes] == ["negotiated", "attached", "detached"]
    finally:
        world.close()


def test_attach_map_now_leaves_no_attachment_when_the_map_raises_a_bug(world: World, scripted):
    scripted.map_raises = RuntimeError("a bug in the type's map")
    buffer = world.export(world.session(), offers=[plugin_offer("scripted")])
    importer = world.session()
    with pytest.raises(RuntimeError, match="a bug"):
        world.ops.attach_map_now(importer, buffer, [plugin_match("scripted")], RW)
    assert not world.registry.attachments and not importer.attachments and not buffer.attachments
    assert not world.registry.mappings and importer.mapping_count == 0


def test_attach_map_now_returns_the_attachment_its_mapping_and_the_fds(world: World):
    buffer = world.export(world.session())
    importer = world.session()
    attachment, mapping, result = world.ops.attach_map_now(importer, buffer, accept("memfd"), RW)
    assert world.registry.attachments == {attachment.id: attachment}
    assert attachment.mappings == {mapping.id: mapping}
    assert result.fds == [buffer.fds[0].fd] and result.temporary == []


def test_undo_drops_the_mapping_and_the_attachment_made_with_it(world: World):
    buffer = world.export(world.session())
    importer = world.session()
    attachment, mapping, _ = world.ops.attach_map_now(importer, buffer, accept("memfd"), RW)
    world.ops.undo(mapping, attachment)
    assert not world.registry.mappings and not world.registry.attachments
    assert not importer.attachments and importer.mapping_count == 0
    world.ops.undo(mapping, attachment)  # a second undo finds nothing to do
    assert not world.registry.attachments


def test_undo_of_a_map_alone_keeps_the_attachment(world: World):
    buffer = world.export(world.session())
    importer = world.session()
    attachment = world.ops.attach(importer, buffer, accept("memfd"), RW)
    mapping, _ = world.ops.map_now(attachment)
    world.ops.undo(mapping)
    assert not world.registry.mappings and importer.mapping_count == 0
    assert world.registry.attachments == {attachment.id: attachment}


def test_unmap_and_detach_find_only_the_callers_own(world: World):
    buffer = world.export(world.session())
    importer, other = world.session(), world.session()
    attachment, mapping, _ = world.ops.attach_map_now(importer, buffer, accept("memfd"), RW)
    with pytest.raises(NotFound):
        world.ops.unmap(other, mapping.id)
    with pytest.raises(NotFound):
        world.ops.detach(other, attachment.id)
    world.ops.unmap(importer, mapping.id)
    assert not attachment.mappings
    world.ops.detach(importer, attachment.id)
    assert not world.registry.attachments


# --- moves ---------------------------------------------------------------------------


def _mapped(world: World, buffer, n: int = 1):
    """n importers, each with one attachment mapped once."""
    out = []
    for _ in range(n):
        importer = world.session()
        attachment, mapping, _ = world.ops.attach_map_now(importer, buffer, accept("memfd"), RW)
        out.append((importer, attachment, mapping))
    return out


def test_a_move_wakes_on_the_last_unmap_not_at_the_deadline(world: World):
    world.ops.move_timeout = 5.0
    exporter = world.session()
    buffer = world.export(exporter)
    old_fd = buffer.fds[0].fd
    (first, _, first_map), (second, _, second_map) = _mapped(world, buffer, 2)
    new_fd = world.memfd(2 * SIZE)

    async def scenario():
        started = time.monotonic()
        move = asyncio.create_task(world.ops.move(exporter, buffer.id, [new_fd], 2 * SIZE, [], None, "grow"))
        await asyncio.sleep(0.03)
        world.ops.unmap(first, first_map.id)
        await asyncio.sleep(0.03)
        assert not move.done(), "the move committed while an importer still had the buffer mapped"
        await asyncio.sleep(0.02)
        world.ops.unmap(second, second_map.id)
        result = await asyncio.wait_for(move, 2.0)
        return result, time.monotonic() - started

    (moved, late), elapsed = run(scenario())
    assert elapsed < 1.0, f"the move took {elapsed:.2f} s: it waited for the deadline, not the last unmap"
    assert moved is buffer and late == []
    assert buffer.fds[0].fd == new_fd and buffer.size == 2 * SIZE and buffer.generation == 2
    assert not is_open(old_fd) and is_open(new_fd)
    assert not world.ops.moving(buffer)
    notified = [e for e in world.events_of(first) + world.events_of(second) if isinstance(e, MoveNotifyEvent)]
    assert [e.reason for e in notified] == ["grow", "grow"]


def test_a_move_times_out_and_marks_late_attachments_non_compliant(world: World):
    world.ops.move_timeout = 0.1
    exporter = world.session()
    buffer = world.export(exporter)
    [(importer, attachment, _)] = _mapped(world, buffer)
    idle = world.ops.attach(world.session(), buffer, accept("memfd"), RW)  # attached, never mapped

    async def scenario():
        started = time.monotonic()
        result = await world.ops.move(exporter, buffer.id, [world.memfd()], SIZE, [], None, "")
        return result, time.monotonic() - started

    (_, late), elapsed = run(scenario())
    assert 0.1 <= elapsed < 1.0, f"the move took {elapsed:.2f} s with a 0.1 s deadline"
    assert late == [attachment]
    assert attachment.non_compliant and importer.non_compliant
    assert not idle.non_compliant and not idle.session.non_compliant
    assert not attachment.mappings and not world.registry.mappings and importer.mapping_count == 0
    assert any(isinstance(e, AttachmentInvalidatedEvent) for e in world.events_of(importer))
    assert buffer.generation == 2


def test_a_move_with_nothing_mapped_commits_without_waiting(world: World):
    world.ops.move_timeout = 5.0
    exporter = world.session()
    buffer = world.export(exporter)
    world.ops.attach(world.session(), buffer, accept("memfd"), RW)
    started = time.monotonic()
    _, late = run(world.ops.move(exporter, buffer.id, [world.memfd()], SIZE, [], None, ""))
    assert time.monotonic() - started < 1.0 and late == [] and buffer.generation == 2


@pytest.mark.parametrize("ending", ["last unmap", "deadline"])
def test_the_move_observer_is_removed_after_the_move(world: World, ending: str):
    world.ops.move_timeout = 5.0 if ending == "last unmap" else 0.05
    exporter = world.session()
    buffer = world.export(exporter)
    [(importer, _, mapping)] = _mapped(world, buffer)
    before = list(world.registry.observers)

    async def scenario():
        move = asyncio.create_task(world.ops.move(exporter, buffer.id, [world.memfd()], SIZE, [], None, ""))
        await settle()
        assert len(world.registry.observers) == len(before) + 1, "the move should observe while it waits"
        if ending == "last unmap":
            world.ops.unmap(importer, mapping.id)
        await asyncio.wait_for(move, 2.0)

    run(scenario())
    assert world.registry.observers == before


def test_a_map_during_a_move_waits_for_the_swap_and_gets_the_new_backing(world: World):
    world.ops.move_timeout = 5.0
    exporter = world.session()
    buffer = world.export(exporter)
    [(holder, _, held)] = _mapped(world, buffer)
    latecomer = world.session()
    attachment = world.ops.attach(latecomer, buffer, accept("memfd"), RW)
    new_fd = world.memfd()

    async def scenario():
        move = asyncio.create_task(world.ops.move(exporter, buffer.id, [new_fd], SIZE, [], None, ""))
        await settle()
        assert world.ops.moving(buffer)
        mapping = asyncio.create_task(world.ops.map(latecomer, attachment))
        await asyncio.sleep(0.05)
        assert not mapping.done(), "a map during a move must wait for the swap"
        world.ops.unmap(holder, held.id)
        await asyncio.wait_for(move, 2.0)
        return await asyncio.wait_for(mapping, 1.0)

    _, result = run(scenario())
    assert result.fds == [new_fd], "the map during the move must get the new backing"
    assert buffer.generation == 2


def test_a_map_whose_attachment_was_detached_during_the_move_is_not_found(world: World):
    world.ops.move_timeout = 5.0
    exporter = world.session()
    buffer = world.export(exporter)
    [(holder, _, held)] = _mapped(world, buffer)
    latecomer = world.session()
    attachment = world.ops.attach(latecomer, buffer, accept("memfd"), RW)

    async def scenario():
        move = asyncio.create_task(world.ops.move(exporter, buffer.id, [world.memfd()], SIZE, [], None, ""))
        await settle()
        mapping = asyncio.create_task(world.ops.map(latecomer, attachment))
        await settle()
        world.ops.detach(latecomer, attachment.id)
        world.ops.unmap(holder, held.id)
        await asyncio.wait_for(move, 2.0)
        with pytest.raises(NotFound, match="detached while its buffer moved"):
            await asyncio.wait_for(mapping, 1.0)

    run(scenario())
    assert not world.registry.mappings


def test_a_second_move_of_a_moving_buffer_is_refused(world: World):
    world.ops.move_timeout = 5.0
    exporter = world.session()
    buffer = world.export(exporter)
    [(holder, _, held)] = _mapped(world, buffer)
    first_fd = world.memfd()

    async def scenario():
        move = asyncio.create_task(world.ops.move(exporter, buffer.id, [first_fd], SIZE, [], None, ""))
        await settle()
        with pytest.raises(FailedPrecondition, match="already moving"):
            await world.ops.move(exporter, buffer.id, [], SIZE, [], None, "")
        assert world.ops.moving(buffer), "the refused move must not end the first one"
        world.ops.unmap(holder, held.id)
        await asyncio.wait_for(move, 2.0)

    run(scenario())
    assert buffer.fds[0].fd == first_fd and buffer.generation == 2


def test_a_refused_second_move_closes_the_fds_it_was_handed(world: World):
    world.ops.move_timeout = 5.0
    exporter = world.session()
    buffer = world.export(exporter)
    [(holder, _, held)] = _mapped(world, buffer)
    refused_fd = world.memfd()

    async def scenario():
        move = asyncio.create_task(world.ops.move(exporter, buffer.id, [world.memfd()], SIZE, [], None, ""))
        await settle()
        try:
            with pytest.raises(FailedPrecondition, match="already moving"):
                await world.ops.move(exporter, buffer.id, [refused_fd], SIZE, [], None, "")
            refused_closed = not is_open(refused_fd)
        finally:
            world.ops.unmap(holder, held.id)
            await asyncio.wait_for(move, 2.0)
            if is_open(refused_fd):  # keep the books straight for the World's teardown check
                world.ledger.close(refused_fd)
        return refused_closed

    assert run(scenario()), "the fds of a refused move were left open (and counted as held)"


def test_a_move_by_someone_else_is_refused(world: World):
    buffer = world.export(world.session())
    with pytest.raises(PermissionDenied):
        run(world.ops.move(world.session(), buffer.id, [], SIZE, [], None, ""))


def test_a_revoke_during_a_move_wakes_it_and_fails_it_closing_the_new_fds(world: World):
    world.ops.move_timeout = 5.0
    exporter = world.session()
    buffer = world.export(exporter)
    _mapped(world, buffer)
    new_fd = world.memfd()

    async def scenario():
        started = time.monotonic()
        move = asyncio.create_task(world.ops.move(exporter, buffer.id, [new_fd], SIZE, [], None, ""))
        await settle()
        world.ops.revoke(exporter, buffer.id, "gone")
        with pytest.raises(FailedPrecondition, match="revoked while it was moving"):
            await asyncio.wait_for(move, 2.0)
        return time.monotonic() - started

    assert run(scenario()) < 1.0
    assert not is_open(new_fd) and not world.ops.moving(buffer)


def test_a_move_with_new_fds_too_small_is_refused_and_closes_them(world: World):
    exporter = world.session()
    buffer = world.export(exporter)
    small = world.memfd(SIZE // 2)
    with pytest.raises(InvalidArgument, match="fewer than the declared size"):
        run(world.ops.move(exporter, buffer.id, [small], SIZE, [], None, ""))
    assert not is_open(small) and not world.ops.moving(buffer) and buffer.generation == 1


def test_wait_out_move_returns_at_once_when_nothing_moves(world: World):
    buffer = world.export(world.session())
    started = time.monotonic()
    run(world.ops.wait_out_move(buffer))
    assert time.monotonic() - started < 0.1


# --- questions -----------------------------------------------------------------------


def test_list_buffers_pages_in_id_order_with_the_total_and_whether_more_follow(world: World):
    exporter = world.session()
    ids = [world.export(exporter, name=f"b{i}").id for i in range(5)]
    everything = world.ops.list_buffers

    def page(after: int, limit: int, keep=lambda b: True):
        got = everything(after, limit, keep)
        return [b.id for b in got.buffers], got.total, got.more

    assert page(0, 2) == (ids[0:2], 5, True)
    assert page(ids[1], 2) == (ids[2:4], 5, True)
    assert page(ids[2], 2) == (ids[3:5], 5, False), "a page that ends with the last buffer has no more"
    assert page(ids[3], 2) == (ids[4:5], 5, False)
    assert page(ids[4], 2) == ([], 5, False)
    assert page(0, 10) == (ids, 5, False)
    odd = {ids[1], ids[3]}
    assert page(0, 1, lambda b: b.id in odd) == ([ids[1]], 2, True), "total counts only what keep accepts"
    assert page(ids[1], 1, lambda b: b.id in odd) == ([ids[3]], 2, False)


def test_explain_against_a_buffer_answers_the_type_and_the_trace(world: World):
    buffer = world.export(world.session(), offers=["segments", "memfd"])
    answer = world.ops.explain(world.session(), accept("memfd"), RW, buffer=buffer)
    assert answer.map_type == "memfd" and answer.error == ""
    assert [(s.offer_type, s.match_type, s.verdict) for s in answer.trace] == [
        ("segments", "memfd", TYPE_DIFFERS),
        ("memfd", "memfd", MATCHED),
    ]
    assert not world.registry.attachments, "explain must not attach"


def test_explain_against_bare_offers_needs_no_buffer(world: World):
    offers = offers_to_wire(["segments"], allow_write=True)
    answer = world.ops.explain(world.session(), accept("segments"), RW, wire_offers=offers)
    assert answer.map_type == "segments" and answer.error == ""
    assert [s.verdict for s in answer.trace] == [MATCHED]


def test_explain_against_bare_default_offers_refuses_read_write_saying_how_to_allow_it(world: World):
    answer = world.ops.explain(world.session(), accept("segments"), RW, wire_offers=offers_to_wire(["segments"]))
    assert answer.map_type == "" and "no common mapping type" in answer.error
    (step,) = answer.trace
    assert "the exporter offers segments read-only (the default)" in step.reason
    assert "allow_write=True" in step.reason


def test_explain_returns_a_failed_negotiation_as_its_answer(world: World):
    buffer = world.export(world.session(), offers=["memfd"])
    answer = world.ops.explain(world.session(), accept("segments"), RW, buffer=buffer)
    assert answer.map_type == ""
    assert "no common mapping type" in answer.error
    assert answer.trace and answer.trace[0].verdict == TYPE_DIFFERS


def test_explain_answers_a_revoked_buffer_with_its_refusal(world: World):
    exporter = world.session()
    buffer = world.export(exporter)
    world.ops.revoke(exporter, buffer.id, "")
    answer = world.ops.explain(world.session(), accept("memfd"), RW, buffer=buffer)
    assert answer.map_type == "" and "revoked" in answer.error and answer.trace == ()


@pytest.mark.parametrize(
    ("wire_accept", "access"),
    [
        pytest.param([plugin_match("no-such-type")], RW, id="unknown type"),
        pytest.param([mpb.Match()], RW, id="empty arm"),
        pytest.param([], 7, id="bad access for a compat importer"),
    ],
)
def test_explain_raises_invalid_argument_for_a_bad_accept_list(world: World, wire_accept, access):
    buffer = world.export(world.session())
    with pytest.raises(InvalidArgument):
        world.ops.explain(world.session(), wire_accept, access, buffer=buffer)


@pytest.mark.parametrize("error", [NotFound("no such device"), InvalidArgument("bad device name")])
def test_explain_raises_not_found_and_invalid_argument_from_a_match(world: World, scripted, error):
    buffer = world.export(world.session(), offers=[plugin_offer("scripted")])
    scripted.match_raises = error
    with pytest.raises(type(error)):
        world.ops.explain(world.session(), [plugin_match("scripted")], RW, buffer=buffer)


def test_explain_answers_other_match_errors_with_their_trace(world: World, scripted):
    buffer = world.export(world.session(), offers=[plugin_offer("scripted")])
    scripted.match_raises = FailedPrecondition("the device is busy")
    answer = world.ops.explain(world.session(), [plugin_match("scripted")], RW, buffer=buffer)
    assert answer.map_type == "" and answer.error == "the device is busy"
    assert [(s.verdict, s.reason) for s in answer.trace] == [("error", "the device is busy")]


def test_stats_count_the_registry_and_the_ledger(world: World):
    exporter = world.session()
    buffer = world.export(exporter)
    world.export(exporter)
    importer = world.session()
    world.ops.attach_map_now(importer, buffer, accept("memfd"), RW)
    world.ops.attach(importer, buffer, accept("memfd"), RW)
    world.ledger.count_sent(1)
    stats = world.ops.stats()
    assert (stats.sessions, stats.buffers, stats.attachments, stats.mappings) == (2, 2, 2, 1)
    assert (stats.fds_held, stats.fds_received, stats.fds_sent, stats.fds_closed) == (2, 2, 1, 0)
    world.ledger.expire([world.memfd()])
    stats = world.ops.stats()
    assert (stats.fds_held, stats.fds_received, stats.fds_closed, stats.fds_expired) == (2, 3, 1, 1)


def test_operations_takes_its_move_timeout(world: World):
    assert Operations(world.registry, world.ledger, move_timeout=0.25).move_timeout == 0.25
