"""bufbroker.tickets: fds held under tickets until claimed, and closed when nobody claims them."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bufbroker.errors import Unavailable
from bufbroker.tickets import TicketStore


def memfd(name: str = "ticket") -> int:
    return os.memfd_create(name, os.MFD_CLOEXEC)


def is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


@pytest.fixture
def store():
    store = TicketStore()
    yield store
    store.close("test over")


def test_take_returns_exactly_the_fds_delivered_under_the_ticket(store):
    first, second = memfd("a"), memfd("b")
    inodes = [os.fstat(first).st_ino, os.fstat(second).st_ino]
    store.deliver(7, [first, second])
    fds = store.take(7, 2, timeout=1)
    assert [os.fstat(fd).st_ino for fd in fds] == inodes
    assert len(store) == 0
    for fd in fds:
        os.close(fd)


def test_take_waits_for_a_delivery_from_another_thread(store):
    fd = memfd()
    threading.Timer(0.05, store.deliver, args=(3, [fd])).start()
    started = time.monotonic()
    assert store.take(3, 1, timeout=5) == [fd]
    assert time.monotonic() - started >= 0.04
    os.close(fd)


def test_take_of_a_ticket_that_never_comes_raises_unavailable_after_the_timeout(store):
    with pytest.raises(Unavailable, match=r"ticket 9 did not arrive: nothing arrived within 0\.05 s"):
        store.take(9, 1, timeout=0.05)


def test_a_delivery_with_the_wrong_number_of_fds_is_refused_and_its_fds_closed(store):
    fds = [memfd(), memfd()]
    store.deliver(4, fds)
    with pytest.raises(Unavailable, match="expected 1 fds, got 2"):
        store.take(4, 1, timeout=1)
    assert all(is_closed(fd) for fd in fds)


def test_a_ticket_nobody_claims_expires_and_its_fds_are_closed():
    store = TicketStore(unclaimed_timeout=0.05)
    fd = memfd()
    store.deliver(1, [fd])
    assert store.expire() == 0 and not is_closed(fd), "a fresh ticket is kept"
    time.sleep(0.1)
    assert store.expire() == 1
    assert is_closed(fd)
    assert len(store) == 0
    with pytest.raises(Unavailable):
        store.take(1, 1, timeout=0.01)


def test_a_later_delivery_sweeps_expired_tickets_without_an_explicit_expire():
    store = TicketStore(unclaimed_timeout=0.05)
    stale, fresh = memfd("stale"), memfd("fresh")
    store.deliver(1, [stale])
    time.sleep(0.1)
    store.deliver(2, [fresh])
    assert is_closed(stale)
    assert len(store) == 1 and store.take(2, 1, timeout=1) == [fresh]
    os.close(fresh)


def test_closing_wakes_a_waiting_taker_with_the_reason_and_closes_unclaimed_fds():
    store = TicketStore()
    pending = memfd()
    store.deliver(1, [pending])
    failures: list[BaseException] = []

    def wait_for_ticket_2() -> None:
        try:
            store.take(2, 1, timeout=10)
        except Unavailable as error:
            failures.append(error)

    waiter = threading.Thread(target=wait_for_ticket_2)
    waiter.start()
    time.sleep(0.05)
    store.close("the broker closed this session's fd channel")
    waiter.join(timeout=2)
    assert not waiter.is_alive()
    assert "did not arrive: the broker closed this session's fd channel" in str(failures[0])
    assert is_closed(pending)


def test_fds_delivered_after_close_are_closed_at_once():
    store = TicketStore()
    store.close("session closed")
    fd = memfd()
    store.deliver(5, [fd])
    assert is_closed(fd)
    assert len(store) == 0


def test_a_second_delivery_under_the_same_ticket_closes_the_first(store):
    first, second = memfd("first"), memfd("second")
    store.deliver(6, [first])
    store.deliver(6, [second])
    assert is_closed(first)
    assert store.take(6, 1, timeout=1) == [second]
    os.close(second)
