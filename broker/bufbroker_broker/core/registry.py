"""Registry: sessions, buffers, attachments and mappings.

All broker state lives here and changes only on the broker's one event
loop, so nothing here takes a lock (the loop plays the part of the kernel's
reservation lock). The registry makes no system call: it closes the fds it
owns through the FdLedger (whose creator hands it the close), hands mapping
types only a buffer's Backing, reads the host from the HostFacts it was
given, and reports what importers must hear through the ``notify`` callback.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bufbroker.v1 import broker_pb2
from bufbroker_broker.core.backing import Backing, BufferFd, KeptFds
from bufbroker_broker.core.errors import (
    BrokerError,
    FailedPrecondition,
    NoCommonMappingType,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.core.format_pairs import Pair
from bufbroker_broker.core.host_facts import HostFacts
from bufbroker_broker.core.mapping_type import AnyConverter, AnyMappingType, MapResult, MatchContext
from bufbroker_broker.core.negotiate import Negotiation, Spec, negotiate
from bufbroker_broker.core.principals import SAME_UID, describe_peer, principal_allowed
from bufbroker_broker.core.trace import TraceStep

__all__ = [
    "ACTIVE",
    "EXIT_KEEP",
    "EXIT_REVOKE",
    "REVOKED",
    "Attachment",
    "AttachmentInvalidatedEvent",
    "Buffer",
    "BufferFd",
    "Change",
    "Event",
    "ExporterGoneEvent",
    "Mapping",
    "MoveNotifyEvent",
    "Notify",
    "Observer",
    "Registry",
    "RevokedEvent",
    "Session",
    "SessionLimits",
]

ACTIVE = "active"
REVOKED = "revoked"
EXIT_REVOKE = "revoke"
EXIT_KEEP = "keep"


@dataclass
class Session:
    """One client connection to the fd channel; lives as long as it does."""

    id: int
    token: str
    pid: int
    uid: int
    gid: int
    events_open: bool = False
    groups: tuple[int, ...] = ()  # the peer's supplementary gids, read by the transport at connect
    non_compliant: bool = False  # ignored a MoveNotify deadline
    buffers: dict[int, Buffer] = field(default_factory=dict)
    attachments: dict[int, Attachment] = field(default_factory=dict)
    closed: bool = False
    # Live mappings over all its attachments, kept by Registry.map/unmap so
    # the per-session limit check on every map does not walk them.
    mapping_count: int = 0
    # Backing fds of its registered buffers the broker holds, kept by
    # register, revoke and move so the fd budget check does not walk them.
    fd_count: int = 0
    # What the session calls itself (SetSessionName), shown beside its pid.
    name: str = ""


@dataclass
class Buffer:
    """A registered buffer, owned by its exporter's session."""

    id: int
    exporter: Session
    size: int
    fds: list[BufferFd]
    offers: list[Spec]
    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    layout: broker_pb2.Layout | None = None
    state: str = ACTIVE
    attachments: dict[int, Attachment] = field(default_factory=dict)
    allow: tuple[str, ...] = (SAME_UID,)
    on_exporter_exit: str = EXIT_REVOKE
    exporter_gone: bool = False
    generation: int = 1
    # What mapping types keep for this backing across maps (udmabuf: its
    # dma-bufs), one table per attachment map_type; the registry closes
    # every fd in them when the backing goes away (revoke, move).
    kept: dict[AnyMappingType, KeptFds] = field(default_factory=dict)
    # (fds, sizes, writable, seals) for match_context(), which every attach
    # needs: worked out once per backing. ``fds`` is only ever replaced (on
    # move and revoke), never edited in place, so its identity is the key.
    _fd_facts: _FdFacts | None = field(default=None, init=False, repr=False, compare=False)

    def fd_facts(self) -> tuple[tuple[int, ...], tuple[bool, ...], tuple[int, ...]]:
        """The fds' sizes, writability and seals, in fd order."""
        facts = self._fd_facts
        if facts is None or facts.fds is not self.fds:
            fds = self.fds
            facts = self._fd_facts = _FdFacts(
                fds,
                tuple(f.size for f in fds),
                tuple(f.writable for f in fds),
                tuple(f.seals for f in fds),
            )
        return facts.sizes, facts.writable, facts.seals

    @property
    def fd_sizes(self) -> tuple[int, ...]:
        return self.fd_facts()[0]

    @property
    def pinned_by(self) -> list[Attachment]:
        return [a for a in self.attachments.values() if a.pinned]

    def backing(self, map_type: AnyMappingType) -> Backing:
        """What ``map_type``'s map and unmap see of this buffer, with the type's kept fds."""
        return Backing(self.id, self.name, self.size, self.fds, self.kept.setdefault(map_type, {}))


@dataclass(frozen=True)
class _FdFacts:
    fds: list[BufferFd]
    sizes: tuple[int, ...]
    writable: tuple[bool, ...]
    seals: tuple[int, ...]


@dataclass
class Attachment:
    """An importer's negotiated link to a buffer; map_type is fixed for life."""

    id: int
    buffer: Buffer
    session: Session
    map_type: AnyMappingType
    map_params: object  # fixed by negotiation (re-derived on a move); the mapper's map reads it
    trace: tuple[TraceStep, ...]
    pinned: bool
    match: Spec  # the accept entry that matched: a move negotiates it again
    converter: AnyConverter | None = None  # set when a converter produced map_type; it maps
    format: Pair | None = None  # the (format, modifier) pair negotiated, when both sides listed pairs
    mappings: dict[int, Mapping] = field(default_factory=dict)
    non_compliant: bool = False
    invalid: str = ""  # why the attachment can no longer map, if it cannot


@dataclass
class Mapping:
    id: int
    attachment: Attachment
    fd_count: int


@dataclass(frozen=True)
class RevokedEvent:
    buffer_id: int
    attachment_ids: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class MoveNotifyEvent:
    attachment_id: int
    buffer_id: int
    reason: str
    generation: int


@dataclass(frozen=True)
class ExporterGoneEvent:
    buffer_id: int
    policy: str


@dataclass(frozen=True)
class AttachmentInvalidatedEvent:
    attachment_id: int
    reason: str


Event = RevokedEvent | MoveNotifyEvent | ExporterGoneEvent | AttachmentInvalidatedEvent
Notify = Callable[[Session, Event], None]


@dataclass(frozen=True)
class Change:
    """One change of registry state, for observers (SSE, metrics).

    ``kind`` is one of: session-opened, session-ended, registered,
    unregistered, revoked, moved, attached, detached, mapped, unmapped,
    negotiated. ``detail`` carries kind-specific facts (never fds, tokens
    or memory contents): for negotiated, ``result`` (matched,
    no-common-type, error), ``map_type`` and ``dry_run``.
    """

    kind: str
    session_id: int = 0
    buffer_id: int = 0
    attachment_id: int = 0
    # JSON values (observers serialise it as it is).
    detail: dict[str, Any] = field(default_factory=dict)


Observer = Callable[[Change], None]


@dataclass(frozen=True)
class SessionLimits:
    """What one session may hold at once; a client past one gets RESOURCE_EXHAUSTED."""

    max_buffers: int = 4096
    max_attachments: int = 4096
    max_mappings: int = 16384
    max_fds: int = 4096  # backing fds held for its buffers plus fds sent but not yet claimed


def _notify_nobody(session: Session, event: Event) -> None:
    """The default ``notify``: a registry without transports has no one to tell."""


def _missing(buffer_id: int, name: str) -> NotFound:
    what = f"named {name!r}" if name else f"with id {buffer_id}"
    return NotFound(
        f"no buffer {what}: it was never registered, or was unregistered "
        "when its exporter ended; list buffers with `bufbroker ls`"
    )


def _admitted(allow: Sequence[str], exporter_uid: int) -> frozenset[str]:
    """Whom an allow list admits, order and spelling aside (same-uid is the exporter's uid)."""
    return frozenset(f"uid:{exporter_uid}" if principal == SAME_UID else principal for principal in allow)


def _check_limit(held: int, limit: int, what: str, setting: str) -> None:
    if held >= limit:
        raise ResourceExhausted(
            f"this session already holds {held} {what}, the limit ({setting} = {limit}); "
            f"release some first, or ask the operator to raise {setting}"
        )


class Registry:
    """The broker's state. Every method runs on the event loop."""

    def __init__(
        self,
        ledger: FdLedger,
        notify: Notify | None = None,
        limits: SessionLimits = SessionLimits(),
        converters: Sequence[AnyConverter] = (),
        *,
        host: HostFacts,
    ) -> None:
        """``host`` is what the broker probed about this host at start; every match reads it."""
        self.ledger = ledger
        self.limits = limits
        self.converters = tuple(converters)  # tried by negotiate() after every direct pair
        self.host = host
        self.notify: Notify = notify or _notify_nobody
        self.sessions: dict[int, Session] = {}
        self.sessions_by_token: dict[str, Session] = {}
        self.buffers: dict[int, Buffer] = {}
        self.buffers_by_name: dict[str, Buffer] = {}
        self.attachments: dict[int, Attachment] = {}
        self.mappings: dict[int, Mapping] = {}
        self.observers: list[Observer] = []
        self._ids = itertools.count(1)

    def observe(self, observer: Observer) -> None:
        """Call ``observer(change)`` after every change (on the event loop)."""
        self.observers.append(observer)

    def unobserve(self, observer: Observer) -> None:
        """Stop calling ``observer``; observing only while it matters keeps the other changes free."""
        self.observers.remove(observer)

    def _emit(
        self,
        kind: str,
        session_id: int = 0,
        buffer_id: int = 0,
        attachment_id: int = 0,
        detail: dict[str, Any] | None = None,
    ) -> None:
        if not self.observers:  # a broker without HTTP: no one to tell
            return
        change = Change(kind, session_id, buffer_id, attachment_id, detail if detail is not None else {})
        for observer in self.observers:
            observer(change)

    def _next_id(self) -> int:
        return next(self._ids)

    # --- the fd budget ---------------------------------------------------------

    def fd_room(self, session: Session, pending: int = 0) -> int:
        """How many more fds ``session`` may have the broker hold, with ``pending`` unclaimed ones."""
        return max(0, self.limits.max_fds - session.fd_count - pending)

    def check_fd_budget(self, session: Session, adding: int, pending: int = 0, releasing: int = 0) -> None:
        """Refuse ``adding`` more fds for ``session`` past ``max_fds_per_session``.

        ``pending`` are its fds sent but not yet claimed; ``releasing`` are
        held fds the same change gives back (a move's old backing).
        """
        limit = self.limits.max_fds
        held = session.fd_count + pending - releasing
        if held + adding > limit:
            raise ResourceExhausted(
                f"this session would hold {held + adding} fds in the broker ({held} already, {adding} more), "
                f"past the limit (max_fds_per_session = {limit}); unregister buffers first, send each file "
                "once, or ask the operator to raise max_fds_per_session"
            )

    # --- sessions -----------------------------------------------------------

    def session_open(self, token: str, pid: int, uid: int, gid: int, groups: tuple[int, ...] = ()) -> Session:
        session = Session(self._next_id(), token, pid, uid, gid, groups=tuple(groups))
        self.sessions[session.id] = session
        self.sessions_by_token[token] = session
        self._emit("session-opened", session_id=session.id, detail={"pid": pid, "uid": uid})
        return session

    def session_close(self, session: Session) -> None:
        """End a session: detach its attachments, revoke and drop its buffers."""
        if session.closed:
            return
        session.closed = True
        for attachment in list(session.attachments.values()):
            self.detach(attachment)
        for buffer in list(session.buffers.values()):
            if buffer.on_exporter_exit == EXIT_KEEP and buffer.attachments and buffer.state == ACTIVE:
                # Importers may finish reading; the last detach drops it.
                buffer.exporter_gone = True
                for importer in {a.session.id: a.session for a in buffer.attachments.values()}.values():
                    self.notify(importer, ExporterGoneEvent(buffer.id, EXIT_KEEP))
                continue
            self.buffer_unregister(buffer, reason="exporter session ended")
        del self.sessions[session.id]
        del self.sessions_by_token[session.token]
        self._emit("session-ended", session_id=session.id)

    # --- buffers ------------------------------------------------------------

    def buffer_register(
        self,
        exporter: Session,
        fds: list[BufferFd],
        size: int,
        offers: list[Spec],
        name: str = "",
        labels: dict[str, str] | None = None,
        layout: broker_pb2.Layout | None = None,
        allow: tuple[str, ...] = (SAME_UID,),
        on_exporter_exit: str = EXIT_REVOKE,
    ) -> Buffer:
        """Take ownership of ``fds`` and register a buffer.

        The caller has validated the fds and offers. On return the registry
        owns the fds: they are closed when the buffer is revoked.
        """
        _check_limit(len(exporter.buffers), self.limits.max_buffers, "buffers", "max_buffers_per_session")
        self.check_fd_budget(exporter, len(fds))
        self.check_shared_files(exporter, fds, allow or (SAME_UID,))
        if name and name in self.buffers_by_name:
            other = self.buffers_by_name[name]
            raise FailedPrecondition(
                f"buffer name {name!r} is taken by buffer {other.id} of pid "
                f"{other.exporter.pid}; choose another name or unregister that buffer first"
            )
        buffer = Buffer(
            self._next_id(),
            exporter,
            size,
            fds,
            offers,
            name,
            dict(labels or {}),
            layout,
            allow=allow or (SAME_UID,),
            on_exporter_exit=on_exporter_exit,
        )
        self.buffers[buffer.id] = buffer
        if name:
            self.buffers_by_name[name] = buffer
        exporter.buffers[buffer.id] = buffer
        exporter.fd_count += len(fds)
        self._emit("registered", session_id=exporter.id, buffer_id=buffer.id, detail={"name": name, "size": size})
        return buffer

    def check_shared_files(
        self, exporter: Session, fds: Sequence[BufferFd], allow: tuple[str, ...], moving: Buffer | None = None
    ) -> None:
        """Refuse fds whose file another live buffer holds under a different allow list.

        A buffer hands importers its whole fd (a segments extent is an
        offset into it, not a boundary), so extents of one pool memfd under
        different allow lists would let an importer of one read the other.
        Files are compared by ``BufferFd.file_id`` (st_dev, st_ino, from
        host/fd_inspect.py); allow lists by whom they admit (same-uid is the
        exporter's uid).
        """
        wanted = {f.file_id for f in fds if f.file_id != (0, 0)}
        if not wanted:
            return
        admits = _admitted(allow, exporter.uid)
        for other in self.buffers.values():
            if other is moving or not wanted.intersection(f.file_id for f in other.fds):
                continue
            if _admitted(other.allow, other.exporter.uid) != admits:
                raise FailedPrecondition(
                    f"this memfd is already registered as buffer {other.id}"
                    f"{' (' + other.name + ')' if other.name else ''} with allow list "
                    f"{', '.join(other.allow)}, and an importer of either buffer gets the whole memfd, "
                    f"so allow list {', '.join(allow)} would not hold: register it with the same allow "
                    "list, or use one memfd per access group"
                )

    def buffer_find(self, buffer_id: int = 0, name: str = "", asker: Session | None = None) -> Buffer:
        """The buffer of that name (or id); with ``asker``, one it may not see is as missing as one never registered."""
        buffer = self.buffers_by_name.get(name) if name else self.buffers.get(buffer_id)
        if buffer is None or (asker is not None and not self.buffer_visible(asker, buffer)):
            raise _missing(buffer_id, name)
        return buffer

    def buffer_visible(self, session: Session, buffer: Buffer) -> bool:
        """May this session see the buffer? Its exporter, its allow list, and root may."""
        return (
            buffer.exporter is session
            or session.uid == 0
            or principal_allowed(buffer.allow, session.uid, session.gid, buffer.exporter.uid, session.groups)
        )

    def buffer_owned(self, session: Session, buffer_id: int) -> Buffer:
        buffer = self.buffer_find(buffer_id)
        if buffer.exporter is not session:
            raise PermissionDenied(
                f"buffer {buffer_id} belongs to pid {buffer.exporter.pid}'s session; "
                "only its exporter may revoke or unregister it"
            )
        return buffer

    def buffer_revoke(self, buffer: Buffer, reason: str) -> None:
        """Withdraw a buffer: tell importers, close the broker's fds.

        Attachments stay until their importers detach, but every further
        attach and map fails. Revoking twice is a no-op.
        """
        if buffer.state == REVOKED:
            return
        buffer.state = REVOKED
        self._close_kept(buffer)
        self.ledger.close_all([f.fd for f in buffer.fds])
        buffer.exporter.fd_count -= len(buffer.fds)
        buffer.fds = []
        self._emit("revoked", session_id=buffer.exporter.id, buffer_id=buffer.id, detail={"reason": reason})
        by_session: dict[int, list[int]] = {}
        for attachment in buffer.attachments.values():
            by_session.setdefault(attachment.session.id, []).append(attachment.id)
        for session_id, attachment_ids in by_session.items():
            self.notify(
                self.sessions[session_id],
                RevokedEvent(buffer.id, tuple(attachment_ids), reason),
            )

    def buffer_unregister(self, buffer: Buffer, reason: str = "unregistered by its exporter") -> None:
        self.buffer_revoke(buffer, reason)
        for attachment in list(buffer.attachments.values()):
            self.detach(attachment)
        if self.buffers.pop(buffer.id, None) is None:
            return
        if buffer.name and self.buffers_by_name.get(buffer.name) is buffer:
            del self.buffers_by_name[buffer.name]
        buffer.exporter.buffers.pop(buffer.id, None)
        self._emit("unregistered", session_id=buffer.exporter.id, buffer_id=buffer.id)

    def move_notify(self, buffer: Buffer, reason: str) -> list[Attachment]:
        """Start a move: tell every importer holding a mapping to unmap.

        Returns the attachments the broker now waits for. Refused while a
        compat (pinned) attachment exists: a compat importer cannot be told
        to unmap.
        """
        self._check_active(buffer, "move")
        pins = buffer.pinned_by
        if pins:
            holders = ", ".join(f"session {a.session.id} (pid {a.session.pid})" for a in pins)
            raise FailedPrecondition(
                f"buffer {buffer.id} is pinned by a compat attachment of {holders}: a compat "
                "importer cannot be told to unmap, so the buffer cannot move until it detaches"
            )
        waiting = [a for a in buffer.attachments.values() if a.mappings]
        for attachment in waiting:
            self.notify(attachment.session, MoveNotifyEvent(attachment.id, buffer.id, reason, buffer.generation))
        return waiting

    def move_commit(
        self,
        buffer: Buffer,
        fds: list[BufferFd],
        size: int,
        offers: list[Spec],
        layout: broker_pb2.Layout | None,
    ) -> list[Attachment]:
        """Swap the backing; return the attachments that were still mapped.

        Those importers did not unmap in time: they are marked non-compliant
        and their mappings dropped. Every attachment keeps its map_type; its
        map parameters are re-derived from the new offers, and an attachment
        whose type the new offers no longer grant it is invalidated.
        """
        self.check_shared_files(buffer.exporter, fds, buffer.allow, moving=buffer)  # before any change
        late = [a for a in buffer.attachments.values() if a.mappings]
        for attachment in late:
            attachment.non_compliant = attachment.session.non_compliant = True
            for mapping in list(attachment.mappings.values()):
                self.unmap(mapping)
            self.notify(
                attachment.session,
                AttachmentInvalidatedEvent(attachment.id, "it did not unmap before the move deadline; map again"),
            )
        old = [f.fd for f in buffer.fds]
        self._close_kept(buffer)  # e.g. the udmabuf built from the old memfds
        buffer.exporter.fd_count += len(fds) - len(old)
        buffer.fds, buffer.size, buffer.offers = fds, size, offers
        if layout is not None:
            buffer.layout = layout
        buffer.generation += 1
        self.ledger.close_all(old)
        for attachment in buffer.attachments.values():
            # The attachment keeps its type and how it got it: directly, or
            # through the same converter.
            converter = attachment.converter
            source = converter.source if converter is not None else attachment.map_type
            same_type = [o for o in offers if o.type is source]
            try:
                again = negotiate(
                    same_type,
                    [attachment.match],
                    self.match_context(attachment.session, buffer),
                    (converter,) if converter is not None else (),
                )
                attachment.map_params, attachment.invalid, attachment.format = again.map_params, "", again.format
            except BrokerError as error:
                attachment.invalid = (
                    f"after the move the buffer no longer offers it {attachment.map_type.name} ({error.message})"
                )
                self.notify(attachment.session, AttachmentInvalidatedEvent(attachment.id, attachment.invalid))
        self._emit(
            "moved",
            session_id=buffer.exporter.id,
            buffer_id=buffer.id,
            detail={"generation": buffer.generation, "size": size, "non_compliant": [a.id for a in late]},
        )
        return late

    def _close_kept(self, buffer: Buffer) -> None:
        """Close what mapping types kept for the buffer across maps (its udmabufs).

        Called on revoke and on move: a kept dma-buf pins the old pages, so
        it must not outlive the backing it was built from. Importers keep
        the copies they were sent.
        """
        for kept in buffer.kept.values():
            self.ledger.close_all(list(kept.values()))
        buffer.kept.clear()

    # --- attachments ----------------------------------------------------------

    def match_context(self, session: Session, buffer: Buffer) -> MatchContext:
        fd_sizes, fd_writable, fd_seals = buffer.fd_facts()
        return MatchContext(
            importer_uid=session.uid,
            importer_gid=session.gid,
            buffer_size=buffer.size,
            fd_sizes=fd_sizes,
            fd_writable=fd_writable,
            exporter_uid=buffer.exporter.uid,
            fd_seals=fd_seals,
            host=self.host,
            importer_groups=session.groups,
        )

    def explain_offers(self, session: Session, offers: list[Spec], accept: list[Spec]) -> Negotiation:
        """A pure dry run against an offers list, with no buffer behind it (``MatchContext.dry_run``)."""
        ctx = MatchContext(
            session.uid, session.gid, 0, (0,), (True,), host=self.host, dry_run=True, importer_groups=session.groups
        )
        return negotiate(offers, accept, ctx, self.converters)

    def explain(self, session: Session, buffer: Buffer, accept: list[Spec], dry_run: bool = True) -> Negotiation:
        """Negotiate without attaching (a dry run); raises as attach would."""
        if not self.buffer_visible(session, buffer):
            # Neither its name nor its allow list: as if it did not exist (and before "revoked", which tells it does).
            raise _missing(buffer.id, "")
        self._check_active(buffer, "attach to")
        if not principal_allowed(buffer.allow, session.uid, session.gid, buffer.exporter.uid, session.groups):
            raise PermissionDenied(
                f"buffer {buffer.id}{' (' + buffer.name + ')' if buffer.name else ''} does not allow "
                f"{describe_peer(session.uid, session.gid)}: its exporter allows "
                f"[{', '.join(buffer.allow)}]; ask it to add you to allow="
            )

        def emit(result: str, map_type: str = "") -> None:
            detail = {"result": result, "map_type": map_type, "dry_run": dry_run}
            self._emit("negotiated", session.id, buffer.id, detail=detail)

        try:
            negotiation = negotiate(buffer.offers, accept, self.match_context(session, buffer), self.converters)
        except NoCommonMappingType:
            emit("no-common-type")
            raise
        except BrokerError:
            emit("error")
            raise
        emit("matched", negotiation.map_type.name)
        return negotiation

    def attach(self, session: Session, buffer: Buffer, accept: list[Spec], pinned: bool) -> Attachment:
        """Negotiate and record an attachment; nothing is created on failure."""
        _check_limit(
            len(session.attachments), self.limits.max_attachments, "attachments", "max_attachments_per_session"
        )
        negotiation = self.explain(session, buffer, accept, dry_run=False)
        attachment = Attachment(
            self._next_id(),
            buffer,
            session,
            negotiation.map_type,
            negotiation.map_params,
            negotiation.trace,
            pinned,
            match=accept[negotiation.match_index],
            converter=negotiation.converter,
            format=negotiation.format,
        )
        self.attachments[attachment.id] = attachment
        buffer.attachments[attachment.id] = attachment
        session.attachments[attachment.id] = attachment
        self._emit(
            "attached",
            session_id=session.id,
            buffer_id=buffer.id,
            attachment_id=attachment.id,
            detail={"map_type": attachment.map_type.name, "pinned": pinned},
        )
        return attachment

    def attachment_find(self, session: Session, attachment_id: int) -> Attachment:
        attachment = session.attachments.get(attachment_id)
        if attachment is None:
            raise NotFound(
                f"no attachment {attachment_id} in this session: it was detached, its "
                "buffer was unregistered, or it belongs to another session"
            )
        return attachment

    def detach(self, attachment: Attachment) -> None:
        for mapping in list(attachment.mappings.values()):
            self.unmap(mapping)
        if self.attachments.pop(attachment.id, None) is None:
            return
        attachment.buffer.attachments.pop(attachment.id, None)
        attachment.session.attachments.pop(attachment.id, None)
        self._emit(
            "detached",
            session_id=attachment.session.id,
            buffer_id=attachment.buffer.id,
            attachment_id=attachment.id,
        )
        buffer = attachment.buffer
        if buffer.exporter_gone and not buffer.attachments:
            self.buffer_unregister(buffer, reason="its exporter is gone and its last importer detached")

    # --- mappings -------------------------------------------------------------

    def check_map(self, attachment: Attachment) -> None:
        """Raise the error a map of ``attachment`` would get now, before any work is done for it."""
        if attachment.id not in self.attachments:
            raise NotFound(f"attachment {attachment.id} was detached; attach again")
        self._check_active(attachment.buffer, "map")
        if attachment.invalid:
            raise FailedPrecondition(f"attachment {attachment.id} was invalidated: {attachment.invalid}; attach again")
        session = attachment.session
        _check_limit(session.mapping_count, self.limits.max_mappings, "mappings", "max_mappings_per_session")

    def map(self, attachment: Attachment, prepared: MapResult | None = None) -> tuple[Mapping, MapResult]:
        """Produce a handle and the fds to send for one mapping.

        The caller must send ``result.fds`` and then close
        ``result.temporary`` through the ledger. A mapping must be unmapped
        with :meth:`unmap` (detach does it for the importer).

        ``prepared`` is the mapper's map already done by the caller: a
        converter that ``copies`` does O(size) work, which the caller runs
        off the event loop (server/operations.py); the registry checks the
        map again and records it, or closes the prepared fds if it is refused.
        """
        buffer = attachment.buffer
        try:
            self.check_map(attachment)
        except BaseException:
            if prepared is not None:
                for fd in prepared.temporary + prepared.retained:
                    self.ledger.close(self.ledger.adopt_opened(fd))
            raise
        session = attachment.session
        result = prepared
        if result is None:
            # A converted attachment maps through its converter; either way the
            # kept fds are the attachment's map_type's (udmabuf's, converted or not).
            mapper: AnyConverter | AnyMappingType = attachment.converter or attachment.map_type
            result = mapper.map(buffer.backing(attachment.map_type), attachment.map_params)
        for fd in result.temporary + result.retained:
            self.ledger.adopt_opened(fd)
        mapping = Mapping(self._next_id(), attachment, len(result.fds))
        self.mappings[mapping.id] = mapping
        attachment.mappings[mapping.id] = mapping
        session.mapping_count += 1
        self._emit(
            "mapped",
            session_id=session.id,
            buffer_id=buffer.id,
            attachment_id=attachment.id,
            detail={"fds": len(result.fds)},
        )
        return mapping, result

    def mapping_find(self, session: Session, mapping_id: int) -> Mapping:
        mapping = self.mappings.get(mapping_id)
        if mapping is None or mapping.attachment.session is not session:
            raise NotFound(f"no mapping {mapping_id} in this session: it was unmapped, or its attachment was detached")
        return mapping

    def unmap(self, mapping: Mapping) -> None:
        attachment = mapping.attachment
        mapper: AnyConverter | AnyMappingType = attachment.converter or attachment.map_type
        mapper.unmap(attachment.buffer.backing(attachment.map_type), attachment.map_params)
        self.mappings.pop(mapping.id, None)
        if attachment.mappings.pop(mapping.id, None) is not None:
            attachment.session.mapping_count -= 1
        self._emit(
            "unmapped",
            session_id=attachment.session.id,
            buffer_id=attachment.buffer.id,
            attachment_id=attachment.id,
        )

    @staticmethod
    def _check_active(buffer: Buffer, verb: str) -> None:
        if buffer.state == REVOKED:
            raise FailedPrecondition(
                f"buffer revoked: buffer {buffer.id}"
                f"{' (' + buffer.name + ')' if buffer.name else ''} was withdrawn by its "
                f"exporter, so you cannot {verb} it; attach to a live buffer instead"
            )
