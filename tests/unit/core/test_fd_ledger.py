"""FdLedger (core/fd_ledger.py): the books of every fd the broker holds; closing is injected."""

from __future__ import annotations

from bufbroker_broker.core.fd_ledger import FdLedger


class Recorder:
    """A ``close`` that records the fds and can be told to fail for some."""

    def __init__(self, failing: tuple[int, ...] = ()) -> None:
        self.closed: list[int] = []
        self.failing = failing

    def __call__(self, fd: int) -> None:
        if fd in self.failing:
            raise OSError(9, "Bad file descriptor")
        self.closed.append(fd)


def test_held_counts_received_and_opened_fds_until_they_are_closed():
    close = Recorder()
    ledger = FdLedger(close)
    assert ledger.adopt_received([3, 4]) == [3, 4]
    assert ledger.adopt_opened(5) == 5
    assert ledger.held == 3
    ledger.close(4)
    assert (ledger.held, ledger.closed, close.closed) == (2, 1, [4])


def test_closing_goes_through_the_injected_close_only():
    close = Recorder()
    ledger = FdLedger(close)
    ledger.adopt_received([7])
    ledger.close(7)
    assert close.closed == [7]  # the ledger itself closes nothing


def test_close_all_closes_in_reverse_order():
    close = Recorder()
    ledger = FdLedger(close)
    ledger.close_all(ledger.adopt_received([3, 4, 5]))
    assert close.closed == [5, 4, 3]
    assert ledger.held == 0


def test_sent_fds_are_counted_but_stay_held():
    ledger = FdLedger(Recorder())
    ledger.adopt_received([3])
    ledger.count_sent(2)
    assert (ledger.sent, ledger.held) == (2, 1)


def test_expired_fds_are_closed_and_counted_as_expired():
    close = Recorder()
    ledger = FdLedger(close)
    ledger.expire(ledger.adopt_received([8, 9]))
    assert (ledger.expired, ledger.closed, ledger.held, close.closed) == (2, 2, 0, [9, 8])


def test_a_failing_close_does_not_raise_and_still_ends_ownership():
    ledger = FdLedger(Recorder(failing=(4,)))
    ledger.adopt_received([3, 4])
    ledger.close_all([3, 4])  # EBADF would be a bookkeeping bug, never a crash
    assert (ledger.held, ledger.closed, ledger.close_errors) == (0, 2, 1)


def test_repr_shows_the_books():
    ledger = FdLedger(Recorder())
    ledger.adopt_received([3])
    assert repr(ledger).startswith("FdLedger(held=1, received=1, opened=0")
