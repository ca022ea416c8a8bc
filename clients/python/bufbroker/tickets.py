"""The fd-ticket store: fds the broker sent under a ticket, until their caller claims them.

A gRPC reply (Map, Attach with ``map``, OpenCallChannel) names a ticket; the
fds come separately, on the fd channel, under that ticket. The fd-channel
reader thread ``deliver()``s them here and the calling thread ``take()``s
them, whichever comes first. A ticket nobody claims (its caller gave up
waiting, or died) expires after ``unclaimed_timeout`` and its fds are closed,
so they never pile up.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from bufbroker import errors, fdwire

UNCLAIMED_TIMEOUT = 30.0  # seconds; far beyond the few milliseconds a claim takes


@dataclass
class _Delivery:
    fds: list[int]
    arrived_at: float


class TicketStore:
    """fds by ticket, thread-safe. The store owns an fd from delivery until it is taken."""

    def __init__(self, unclaimed_timeout: float = UNCLAIMED_TIMEOUT) -> None:
        self.unclaimed_timeout = unclaimed_timeout
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._deliveries: dict[int, _Delivery] = {}
        self._closed_because = ""

    def deliver(self, ticket: int, fds: list[int]) -> None:
        """Keep ``fds`` under ``ticket`` for a caller to take; the store now owns them.

        After ``close()`` they are closed at once: nobody will claim them. A
        second delivery under the same ticket replaces the first (whose fds
        are closed).
        """
        with self._lock:
            if self._closed_because:
                dropped = list(fds)
            else:
                dropped = self._expire_locked()
                previous = self._deliveries.pop(ticket, None)
                if previous is not None:
                    dropped.extend(previous.fds)
                self._deliveries[ticket] = _Delivery(list(fds), time.monotonic())
                self._changed.notify_all()
        fdwire.close_fds(dropped)

    def take(self, ticket: int, count: int, timeout: float) -> list[int]:
        """The ``count`` fds delivered under ``ticket``, waiting up to ``timeout`` seconds.

        The caller owns the returned fds. Raises Unavailable when they do not
        come in time, when the store was closed (the connection was lost or
        the session ended) or when their number is not ``count`` (they are
        closed then).
        """
        with self._lock:
            self._changed.wait_for(lambda: ticket in self._deliveries or bool(self._closed_because), timeout)
            delivery = self._deliveries.pop(ticket, None)
            closed_because = self._closed_because
            expired = self._expire_locked()
        fdwire.close_fds(expired)
        if delivery is None:
            why = closed_because or f"nothing arrived within {timeout} s"
            raise errors.Unavailable(f"the fds for ticket {ticket} did not arrive: {why}")
        if len(delivery.fds) != count:
            fdwire.close_fds(delivery.fds)
            raise errors.Unavailable(f"ticket {ticket}: expected {count} fds, got {len(delivery.fds)}")
        return delivery.fds

    def expire(self) -> int:
        """Close the fds of tickets unclaimed for longer than ``unclaimed_timeout``; how many fds it closed.

        ``deliver()`` and ``take()`` do this by themselves; call it to sweep
        without either.
        """
        with self._lock:
            expired = self._expire_locked()
        fdwire.close_fds(expired)
        return len(expired)

    def close(self, why: str) -> None:
        """Close every unclaimed fd and wake the waiters: their ``take()`` raises Unavailable(why)."""
        with self._lock:
            if self._closed_because:
                return
            self._closed_because = why or "the ticket store was closed"
            dropped = [fd for delivery in self._deliveries.values() for fd in delivery.fds]
            self._deliveries.clear()
            self._changed.notify_all()
        fdwire.close_fds(dropped)

    @property
    def closed(self) -> bool:
        return bool(self._closed_because)

    def __len__(self) -> int:
        """Tickets delivered and not yet taken."""
        with self._lock:
            return len(self._deliveries)

    def _expire_locked(self) -> list[int]:
        """Forget the expired deliveries; their fds, for the caller to close outside the lock."""
        deadline = time.monotonic() - self.unclaimed_timeout
        stale = [ticket for ticket, delivery in self._deliveries.items() if delivery.arrived_at < deadline]
        return [fd for ticket in stale for fd in self._deliveries.pop(ticket).fds]
