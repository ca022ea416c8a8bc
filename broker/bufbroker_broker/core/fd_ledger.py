"""FdLedger: every file descriptor the broker holds, accounted for.

Each fd the broker receives or opens is adopted here and closed through
here, so ``held`` is always the number of client fds the broker keeps open.
Tests compare it (and /proc/<pid>/fd) with a baseline after every test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class FdLedger:
    received: int = 0   # arrived over the fd channel
    opened: int = 0     # opened by the broker itself (e.g. O_RDONLY reopen)
    sent: int = 0       # copies handed to clients (the kernel duplicates)
    closed: int = 0
    expired: int = 0    # closed because no call claimed them in time

    @property
    def held(self) -> int:
        return self.received + self.opened - self.closed

    def adopt_received(self, fds: list[int]) -> list[int]:
        self.received += len(fds)
        return fds

    def adopt_opened(self, fd: int) -> int:
        self.opened += 1
        return fd

    def count_sent(self, n: int) -> None:
        self.sent += n

    def close(self, fd: int) -> None:
        """Close one fd the broker owns; ownership ends here."""
        self.closed += 1
        try:
            os.close(fd)
        except OSError:
            # Already closed would be a bookkeeping bug; EBADF must not take
            # the broker down, and the count still records the release.
            pass

    def close_all(self, fds: list[int]) -> None:
        for fd in reversed(fds):
            self.close(fd)

    def expire(self, fds: list[int]) -> None:
        self.expired += len(fds)
        self.close_all(fds)
