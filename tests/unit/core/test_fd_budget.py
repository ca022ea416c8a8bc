"""The per-session fd budget the Registry keeps (core/registry.py): ``max_fds_per_session``.

The registry counts, per session, the backing fds of its registered
buffers; register, revoke, unregister, move and session end keep the count,
and every way of adding fds is checked against the limit before anything is
taken. Driven with the fake types and numbered fds of test_registry.py.
"""

from __future__ import annotations

import pytest

from bufbroker_broker.core.errors import ResourceExhausted
from bufbroker_broker.core.registry import SessionLimits
from tests.unit.core.test_registry import SIZE, FakeType, World, offer


@pytest.fixture
def a() -> FakeType:
    return FakeType("a")


def _world(max_fds: int) -> World:
    return World(SessionLimits(max_fds=max_fds))


def test_register_counts_each_backing_fd_of_the_session(a):
    world = _world(10)
    exporter, other = world.session(), world.session()
    world.registry.buffer_register(exporter, world.fds(3), SIZE, [offer(a)])
    world.registry.buffer_register(exporter, world.fds(2), SIZE, [offer(a)])
    assert exporter.fd_count == 5
    assert other.fd_count == 0
    assert world.registry.fd_room(exporter) == 5
    assert world.registry.fd_room(exporter, pending=4) == 1
    assert world.registry.fd_room(exporter, pending=40) == 0


def test_a_registration_past_the_limit_is_refused_naming_the_setting_and_takes_nothing(a):
    world = _world(4)
    exporter = world.session()
    world.registry.buffer_register(exporter, world.fds(3), SIZE, [offer(a)])
    with pytest.raises(ResourceExhausted, match="max_fds_per_session = 4") as refused:
        world.registry.buffer_register(exporter, world.fds(2), SIZE, [offer(a)])
    assert "5 fds" in refused.value.message
    assert exporter.fd_count == 3 and len(exporter.buffers) == 1
    # Exactly at the limit is allowed.
    world.registry.buffer_register(exporter, world.fds(1), SIZE, [offer(a)])
    assert exporter.fd_count == 4


def test_pending_fds_count_against_the_same_budget(a):
    world = _world(4)
    exporter = world.session()
    world.registry.buffer_register(exporter, world.fds(2), SIZE, [offer(a)])
    world.registry.check_fd_budget(exporter, 1, pending=1)
    with pytest.raises(ResourceExhausted, match="max_fds_per_session"):
        world.registry.check_fd_budget(exporter, 1, pending=2)


def test_revoke_and_unregister_give_the_fds_back(a):
    world = _world(4)
    exporter = world.session()
    first = world.registry.buffer_register(exporter, world.fds(2), SIZE, [offer(a)])
    second = world.registry.buffer_register(exporter, world.fds(2), SIZE, [offer(a)])
    world.registry.buffer_revoke(first, "test")
    assert exporter.fd_count == 2
    world.registry.buffer_revoke(first, "twice is a no-op")
    assert exporter.fd_count == 2
    world.registry.buffer_unregister(first)  # already revoked: nothing more to give back
    world.registry.buffer_unregister(second)
    assert exporter.fd_count == 0
    world.registry.buffer_register(exporter, world.fds(4), SIZE, [offer(a)])


def test_a_move_swaps_the_count_and_its_check_credits_the_old_backing(a):
    world = _world(4)
    exporter = world.session()
    buffer = world.registry.buffer_register(exporter, world.fds(3), SIZE, [offer(a)])
    world.registry.check_fd_budget(exporter, 4, releasing=len(buffer.fds))
    with pytest.raises(ResourceExhausted, match="max_fds_per_session"):
        world.registry.check_fd_budget(exporter, 5, releasing=len(buffer.fds))
    world.registry.move_commit(buffer, world.fds(1), SIZE, [offer(a)], None)
    assert exporter.fd_count == 1


def test_session_end_leaves_nothing_counted_and_the_ledger_empty(a):
    world = _world(8)
    exporter = world.session()
    for _ in range(3):
        world.registry.buffer_register(exporter, world.fds(2), SIZE, [offer(a)])
    world.registry.session_close(exporter)
    assert exporter.fd_count == 0
    assert world.ledger.held == 0
