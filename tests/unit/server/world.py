"""A real Registry and Operations over real memfds, for the server's unit tests.

The ledger closes with os.close (as the daemon's does) and records what it
closed; every memfd a test makes is adopted by the ledger as the fd channel
would adopt what a client sent. ``close()`` ends every session and checks
that the ledger holds no fd afterwards.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bufbroker.specs import accept_to_wire, offers_to_wire
from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker import mapping_types
from bufbroker_broker.core.backing import Backing
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.core.host_facts import UNPROBED
from bufbroker_broker.core.mapping_type import MapResult, MatchContext, Matched
from bufbroker_broker.core.registry import Buffer, Registry, Session, SessionLimits
from bufbroker_broker.server.operations import Operations

SIZE = 4096


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def seals(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GET_SEALS)


@dataclass(eq=False)
class ScriptedType:
    """A plugin mapping type whose match and map do what the test says.

    ``match_raises`` / ``map_raises``: an exception to raise there (a
    BrokerError or a bug such as RuntimeError); otherwise it matches and maps
    by sending the buffer's first fd.
    """

    name: str = "scripted"
    description: str = "a plugin type scripted by the test"
    offer_message: type = mpb.MemfdOffer
    match_message: type = mpb.MemfdMatch
    handle_message: type = mpb.MemfdHandle
    match_raises: BaseException | None = None
    map_raises: BaseException | None = None

    def check_offer(self, offer: Any, fd_sizes: Sequence[int], size: int) -> Any:
        return offer

    def check_match(self, match: Any) -> Any:
        return match

    def match(self, offer: Any, match: Any, ctx: MatchContext) -> Matched:
        if self.match_raises is not None:
            raise self.match_raises
        return Matched()

    def finish(self, offer: Any, match: Any, ctx: MatchContext) -> None:
        return None

    def map(self, backing: Backing, params: None) -> MapResult:
        if self.map_raises is not None:
            raise self.map_raises
        return MapResult(mpb.MemfdHandle(size=backing.size), [backing.fds[0].fd])

    def unmap(self, backing: Backing, params: None) -> None:
        pass

    def describe(self) -> str:
        return self.description


def plugin_offer(name: str) -> mpb.Offer:
    offer = mpb.Offer()
    offer.plugin.type_name = name
    return offer


def plugin_match(name: str) -> mpb.Match:
    match = mpb.Match()
    match.plugin.type_name = name
    return match


def accept(*names: Any, access: str = "read_write") -> list[mpb.Match]:
    return accept_to_wire(list(names), access)


class World:
    """One broker's state: ledger, registry, operations; no transports."""

    def __init__(self, move_timeout: float = 2.0, limits: SessionLimits | None = None) -> None:
        mapping_types.load_mapping_types()
        self.closed: list[int] = []
        self.events: list[tuple[int, object]] = []
        self.ledger = FdLedger(close=self._close)
        self.registry = Registry(
            self.ledger,
            notify=lambda session, event: self.events.append((session.id, event)),
            limits=limits or SessionLimits(),
            converters=mapping_types.load_converters(),
            host=UNPROBED,
        )
        self.ops = Operations(self.registry, self.ledger, move_timeout=move_timeout)
        self._pids = iter(range(1000, 100000))

    def _close(self, fd: int) -> None:
        self.closed.append(fd)
        os.close(fd)

    def session(self, events: bool = True, uid: int | None = None) -> Session:
        """A session of this process's uid; ``events``: its event stream is open (dynamic attaches)."""
        pid = next(self._pids)
        uid = os.getuid() if uid is None else uid
        session = self.registry.session_open(f"token-{pid}", pid, uid, os.getgid() if uid == os.getuid() else uid)
        session.events_open = events
        return session

    def memfd(self, size: int = SIZE) -> int:
        """A sealable memfd of ``size`` bytes, received (adopted by the ledger)."""
        fd = os.memfd_create("bufbroker-test", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return self.ledger.adopt_received([fd])[0]

    def export(
        self,
        exporter: Session,
        offers: Sequence[Any] = ("memfd",),
        size: int = SIZE,
        allow_write: bool = True,
        **kwargs: Any,
    ) -> Buffer:
        """Register a memfd with these offers (names, SDK specs or wire Offers).

        The world's importers ask for read_write (``accept()``), so its exports
        allow writes (``allow_write``, as the SDK's export) unless a test says not.
        """
        wire = [o if isinstance(o, mpb.Offer) else offers_to_wire([o], allow_write)[0] for o in offers]
        kwargs.setdefault("on_exporter_exit", "revoke")
        return self.ops.register(exporter, [self.memfd(size)], size, wire, **kwargs)

    def events_of(self, session: Session) -> list[object]:
        return [event for session_id, event in self.events if session_id == session.id]

    def close(self) -> None:
        """End every session (as the fd channel does when clients go); the ledger must then be empty."""
        for session in list(self.registry.sessions.values()):
            self.registry.session_close(session)
        assert not self.registry.buffers and not self.registry.attachments and not self.registry.mappings
        assert self.ledger.held == 0, f"fds left in the ledger: {self.ledger}"
        assert self.ledger.close_errors == 0, f"closes of fds already closed: {self.ledger}"
