"""FdLedger: every file descriptor the broker holds, accounted for.

Each fd the broker receives or opens is adopted here and closed through
here, so ``held`` is always the number of client fds the broker keeps open.
Tests compare it (and /proc/<pid>/fd) with a baseline after every test.

The ledger only keeps the books: the closing itself is the ``close``
callable its creator hands in (the daemon passes ``os.close``; unit tests
pass one that records), so the core makes no system call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class FdLedger:
    """The broker's fd books. Every method runs on the event loop."""

    def __init__(self, close: Callable[[int], None]) -> None:
        """``close(fd)`` releases one fd; an OSError from it is counted and swallowed."""
        self._close = close
        self.received = 0  # arrived over the fd channel
        self.opened = 0  # opened by the broker itself (e.g. O_RDONLY reopen)
        self.sent = 0  # copies handed to clients (the kernel duplicates)
        self.closed = 0
        self.expired = 0  # closed because no call claimed them in time
        self.close_errors = 0  # closes that failed (EBADF: a bookkeeping bug)

    def __repr__(self) -> str:
        return (
            f"FdLedger(held={self.held}, received={self.received}, opened={self.opened}, "
            f"sent={self.sent}, closed={self.closed}, expired={self.expired})"
        )

    @property
    def held(self) -> int:
        return self.received + self.opened - self.closed

    def adopt_received(self, fds: list[int]) -> list[int]:
        """Count ``fds`` that arrived from a client; the broker owns them now. Returns them."""
        self.received += len(fds)
        return fds

    def adopt_opened(self, fd: int) -> int:
        """Count one fd the broker opened itself; it must be closed through :meth:`close`."""
        self.opened += 1
        return fd

    def count_sent(self, n: int) -> None:
        """Count ``n`` fds sent to a client (copies: the broker still holds its own)."""
        self.sent += n

    def close(self, fd: int) -> None:
        """Close one fd the broker owns; ownership ends here."""
        self.closed += 1
        try:
            self._close(fd)
        except OSError:
            # Already closed would be a bookkeeping bug; EBADF must not take
            # the broker down, and the count still records the release.
            self.close_errors += 1

    def close_all(self, fds: Sequence[int]) -> None:
        """Close ``fds`` in reverse order (the reverse of how they were taken)."""
        for fd in reversed(fds):
            self.close(fd)

    def expire(self, fds: Sequence[int]) -> None:
        """Close fds no call claimed in time."""
        self.expired += len(fds)
        self.close_all(fds)
