"""The broker's use cases, once, for every transport.

gRPC (server/grpc), the call channels (server/fdchannel/calls.py) and HTTP
(server/http) are thin adapters: they decode a request, call one operation
here and encode its result. Every rule about *what* may happen lives in the
core's Registry; this layer adds what a use case needs around it: fd checks
at registration, undoing a half-made attach+map, and moves, whose state (which
buffers are moving, who is waited for) is owned here and nowhere else.

Everything runs on the broker's event loop but a copy. Only a move, a map
during a move and an attach told to wait for its buffer wait, and they wait on
events (the last unmap, the swap, the registration), never by polling. A map
through a converter that copies (segments->memfd-copy) is O(size), so it never
runs on the loop: the map copies in a worker thread (at most copy_workers at
once), awaited, and the registry records it back on the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker import mapping_types
from bufbroker_broker.core import format_pairs
from bufbroker_broker.core.backing import BufferFd
from bufbroker_broker.core.errors import (
    BrokerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.core.mapping_type import MapResult
from bufbroker_broker.core.negotiate import TraceStep
from bufbroker_broker.core.principals import SAME_UID, parse_principals
from bufbroker_broker.core.registry import (
    ACTIVE,
    Attachment,
    Buffer,
    Change,
    Mapping,
    Registry,
    Session,
)
from bufbroker_broker.host.fd_inspect import check_distinct_files, inspect_fd
from bufbroker_broker.server.limits import RequestLimits
from bufbroker_broker.server.wire.messages import named_buffer

log = logging.getLogger(__name__)

# A size the kernel can mmap on 64-bit Linux; anything larger is a typo.
MAX_SIZE = 1 << 46
# What a dry run against a bare offers list may assume about the buffer.
EXPLAIN_MAX_SIZE = MAX_SIZE
# The longest an attach may wait for its buffer to appear (AttachRequest.wait_seconds).
MAX_ATTACH_WAIT = 300.0
# Changes after which a move may have nobody left to wait for.
_MOVE_WAKERS = frozenset({"unmapped", "detached", "session-ended", "revoked", "unregistered"})


class CopyPending(Exception):
    """Not an error: the map copies, and a copy is not done on the event loop.

    The caller must await ``finish()``: it copies in a worker thread, then
    maps on the loop, and returns the mapping and its result (or raises the
    map's error, having undone what the call made: the attachment of an
    attach+map). ``attachment`` is the attachment being mapped.
    """

    def __init__(self, attachment: Attachment, finish: Callable[[], Awaitable[tuple[Mapping, MapResult]]]) -> None:
        super().__init__(f"attachment {attachment.id}: the map copies")
        self.attachment = attachment
        self.finish = finish


@dataclass(frozen=True)
class ExplainAnswer:
    """What an attach would negotiate: the type (empty when it would fail), the trace and why it failed."""

    map_type: str
    trace: tuple[TraceStep, ...]
    error: str = ""


@dataclass(frozen=True)
class Stats:
    sessions: int
    buffers: int
    attachments: int
    mappings: int
    fds_held: int
    fds_received: int
    fds_sent: int
    fds_closed: int
    fds_expired: int


@dataclass(frozen=True)
class Target:
    """The buffer an attach asks for: by id or name, or (``labels`` set) by a label selector."""

    buffer_id: int = 0
    name: str = ""
    labels: dict[str, str] | None = None

    @classmethod
    def of(cls, request: pb.AttachRequest) -> Target:
        """What an AttachRequest names: its ``buffer`` oneof or its labels, never both."""
        if not request.labels:
            return cls(*named_buffer(request))
        if request.WhichOneof("buffer") is not None:
            raise InvalidArgument(
                "give the buffer by id, by name or by labels, not both: a label selector picks the buffer itself"
            )
        return cls(labels=dict(request.labels))


@dataclass(frozen=True)
class Page:
    """One page of buffers in id order, and how many matched in all."""

    buffers: list[Buffer]
    total: int
    more: bool


class Operations:
    def __init__(
        self,
        registry: Registry,
        ledger: FdLedger,
        move_timeout: float = 2.0,
        limits: RequestLimits | None = None,
    ) -> None:
        self.registry = registry
        self.ledger = ledger
        self.move_timeout = move_timeout
        # Checked before any other work on every request (server/limits.py).
        self.limits = limits or RequestLimits()
        # buffer id -> set once its move is over (committed or failed)
        self._moves: dict[int, asyncio.Event] = {}
        # buffer id -> its offers as the exporter sent them: a move without new
        # offers checks these again against the new fds (normalised offers would
        # keep the old sizes). Pruned as buffers go, see _remember_offers.
        self._wire_offers: dict[int, list[mpb.Offer]] = {}
        # Copies running in worker threads (setting copy_workers), and per session id those waiting or running.
        self._copy_slots = asyncio.Semaphore(self.limits.copy_workers)
        self._copies: dict[int, int] = {}

    # --- buffers -------------------------------------------------------------------

    def find_buffer(self, buffer_id: int = 0, name: str = "", asker: Session | None = None) -> Buffer:
        """The buffer named; with ``asker``, one it may not see is NotFound, exactly as a missing one."""
        return self.registry.buffer_find(buffer_id, name, asker)

    def select_buffer(self, asker: Session, target: Target) -> Buffer:
        """The buffer an attach names: by (id, name), or by a label selector.

        A selector picks among the active buffers ``asker`` may see, those
        carrying every one of its labels with that value: none is NotFound,
        several FailedPrecondition naming them.
        """
        if target.labels is None:
            return self.find_buffer(target.buffer_id, target.name, asker)
        labels = target.labels
        self.limits.check_labels(labels, "selector labels")
        matches = [
            b
            for _, b in sorted(self.registry.buffers.items())
            if b.state == ACTIVE and labels_match(b, labels) and self.registry.buffer_visible(asker, b)
        ]
        if not matches:
            raise NotFound(f"no buffer you may see carries the labels {format_labels(labels)}")
        if len(matches) > 1:
            named = ", ".join(f"{b.id} ({b.name!r})" if b.name else str(b.id) for b in matches[:10])
            more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
            raise FailedPrecondition(
                f"{len(matches)} buffers carry the labels {format_labels(labels)}: {named}{more}; "
                "add a label that tells them apart, or attach by name or id"
            )
        return matches[0]

    async def await_buffer(self, asker: Session, target: Target, wait: float = 0.0) -> Buffer:
        """:meth:`select_buffer`, waiting up to ``wait`` seconds for the buffer to be registered.

        Wakes on the registry's "registered" change (an observer held only
        while waiting), never by polling. Gives up early when ``asker``'s
        session ends. After ``wait`` seconds: NotFound saying so.
        """
        check_wait(wait)
        try:
            return self.select_buffer(asker, target)
        except NotFound as missing:
            if not wait:
                raise
            why = missing.message
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        woken = asyncio.Event()

        def watch(change: Change) -> None:
            if change.kind == "registered" or (change.kind == "session-ended" and change.session_id == asker.id):
                woken.set()

        self.registry.observe(watch)  # only while this attach waits
        try:
            while True:
                woken.clear()
                try:
                    await asyncio.wait_for(woken.wait(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    raise NotFound(f"{why} (waited {wait:g} s for it to be registered)") from None
                if asker.closed:
                    raise Unavailable("the session ended while its attach waited for the buffer")
                try:
                    return self.select_buffer(asker, target)
                except NotFound as still:
                    why = still.message  # another buffer was registered: keep waiting
        finally:
            self.registry.unobserve(watch)

    def register(
        self,
        session: Session,
        fds: list[int],
        size: int,
        wire_offers: Sequence[mpb.Offer],
        *,
        name: str = "",
        labels: dict[str, str] | None = None,
        layout: pb.Layout | None = None,
        allow: Sequence[str] = (),
        on_exporter_exit: str,
    ) -> Buffer:
        """Check the exporter's fds and request, then register; on any failure the fds are closed."""
        with ExitStack() as unwind:
            unwind.callback(self.ledger.close_all, fds)  # until the registry owns them
            labels = labels or {}
            self.limits.check_name(name)  # the request's bounds first, before any work
            self.limits.check_labels(labels)
            self.limits.check_offers(wire_offers)
            kind = mapping_types.offers_fd_kind(wire_offers)  # memfd, or dmabuf for dmabuf offers
            check_distinct_files(fds)
            infos = [inspect_fd(fd, i, kind) for i, fd in enumerate(fds)]
            check_size(size, infos[0].size)
            format_pairs.check_layout(layout, size, len(fds))
            offers = mapping_types.offers_from_wire(wire_offers, tuple(i.size for i in infos), size)
            buffer = self.registry.buffer_register(
                session,
                infos,
                size,
                offers,
                name=name,
                labels=labels,
                layout=layout,
                allow=parse_principals(list(allow), "allow") or (SAME_UID,),
                on_exporter_exit=on_exporter_exit,
            )
            unwind.pop_all()
        self._remember_offers(buffer, wire_offers)
        log.debug("buffer %d registered by session %d", buffer.id, session.id)
        return buffer

    def _remember_offers(self, buffer: Buffer, wire_offers: Sequence[mpb.Offer]) -> None:
        self._wire_offers[buffer.id] = list(wire_offers)
        live = self.registry.buffers
        if len(self._wire_offers) > 2 * len(live) + 64:  # amortised: drop buffers that are gone
            self._wire_offers = {i: o for i, o in self._wire_offers.items() if i in live}

    def revoke(self, session: Session, buffer_id: int, reason: str) -> None:
        self.registry.buffer_revoke(self.registry.buffer_owned(session, buffer_id), reason or "revoked by its exporter")

    def unregister(self, session: Session, buffer_id: int) -> None:
        self.registry.buffer_unregister(self.registry.buffer_owned(session, buffer_id))

    def list_buffers(self, after_id: int, limit: int, keep: Callable[[Buffer], bool]) -> Page:
        """Buffers with ids above ``after_id`` that ``keep`` accepts, at most ``limit`` of them."""
        matching = [b for _, b in sorted(self.registry.buffers.items()) if keep(b)]
        page = [b for b in matching if b.id > after_id][:limit]
        return Page(page, len(matching), bool(page) and matching[-1].id > page[-1].id)

    # --- moves ---------------------------------------------------------------------

    def moving(self, buffer: Buffer) -> bool:
        return buffer.id in self._moves

    async def move(
        self,
        session: Session,
        buffer_id: int,
        fds: list[int],
        size: int,
        wire_offers: Sequence[mpb.Offer],
        layout: pb.Layout | None,
        reason: str,
    ) -> tuple[Buffer, list[Attachment]]:
        """Swap a buffer's backing: tell importers, wait for their unmaps (or the deadline), commit.

        Returns the buffer and the attachments that did not unmap in time
        (marked non-compliant by the registry). The new fds are closed on
        any failure. Without ``wire_offers`` the buffer keeps its offers,
        checked again against the new fds.
        """
        with ExitStack() as unwind:
            unwind.callback(self.ledger.close_all, fds)  # until the registry owns them, even when refused
            self.limits.check_offers(wire_offers)
            buffer = self.registry.buffer_owned(session, buffer_id)
            if self.moving(buffer):
                raise FailedPrecondition(f"buffer {buffer.id} is already moving; wait for that move to finish")
            offers_wire = list(wire_offers) or self._wire_offers.get(buffer.id, [])
            self.registry.check_fd_budget(session, len(fds), releasing=len(buffer.fds))
            check_distinct_files(fds)
            infos = [inspect_fd(fd, i, mapping_types.offers_fd_kind(offers_wire)) for i, fd in enumerate(fds)]
            check_size(size, infos[0].size)
            format_pairs.check_layout(layout, size, len(fds))
            offers = mapping_types.offers_from_wire(offers_wire, tuple(i.size for i in infos), size)
            self.registry.check_shared_files(session, infos, buffer.allow, moving=buffer)  # refused before any notice
            waiting = self.registry.move_notify(buffer, reason or "moved by its exporter")
            done = self._moves[buffer.id] = asyncio.Event()
            try:
                await self._until_unmapped(buffer, waiting)
                if buffer.state != ACTIVE:
                    raise FailedPrecondition(f"buffer {buffer.id} was revoked while it was moving")
                late = self.registry.move_commit(buffer, infos, size, offers, layout)
                unwind.pop_all()
                self._remember_offers(buffer, offers_wire)
            finally:
                del self._moves[buffer.id]
                done.set()
        if late:
            log.warning(
                "buffer %d moved; importer(s) %s did not unmap within %s s and are marked non-compliant",
                buffer.id,
                ", ".join(f"pid {a.session.pid} (attachment {a.id})" for a in late),
                self.move_timeout,
            )
        return buffer, late

    async def _until_unmapped(self, buffer: Buffer, waiting: list[Attachment]) -> None:
        """Wake on the change that leaves none of ``waiting`` mapped (or the buffer revoked), or time out."""

        def settled() -> bool:
            return buffer.state != ACTIVE or not any(a.mappings for a in waiting)

        if settled():
            return
        woken = asyncio.Event()

        def watch(change: Change) -> None:
            if change.kind in _MOVE_WAKERS and settled():
                woken.set()

        self.registry.observe(watch)  # only while this move waits: other changes stay free
        try:
            await asyncio.wait_for(woken.wait(), self.move_timeout)
        except TimeoutError:
            pass
        finally:
            self.registry.unobserve(watch)

    async def wait_out_move(self, buffer: Buffer) -> None:
        """Mapping during a move gets the new backing: wait for the swap."""
        done = self._moves.get(buffer.id)
        if done is None:
            return
        try:
            await asyncio.wait_for(done.wait(), self.move_timeout + 1)
        except TimeoutError:
            raise Unavailable(f"buffer {buffer.id} is still moving; map again") from None

    # --- attachments and mappings --------------------------------------------------

    def attach(self, session: Session, buffer: Buffer, wire_accept: Sequence[mpb.Match], access: int) -> Attachment:
        """Negotiate and attach (no mapping). An accept list that names types needs the event stream."""
        self.limits.check_accept(wire_accept)
        accept, compat = mapping_types.accept_from_wire(wire_accept, access)
        if not compat and not session.events_open:
            raise FailedPrecondition(
                "a dynamic attach (one that names mapping types) needs this session's event "
                "stream open, so it can be told to unmap when the buffer moves; call Events "
                "first (bufbroker.connect() does), or attach with an empty accept list as a "
                "compat importer, which pins the buffer"
            )
        return self.registry.attach(session, buffer, accept, pinned=compat)

    def attach_map_now(
        self, session: Session, buffer: Buffer, wire_accept: Sequence[mpb.Match], access: int
    ) -> tuple[Attachment, Mapping, MapResult]:
        """Attach and map in one step (the buffer must not be moving); nothing half-made survives a failure.

        A map that copies raises :class:`CopyPending` (the attachment is made;
        its ``finish()`` detaches it if the map fails).
        """
        attachment = self.attach(session, buffer, wire_accept, access)
        try:
            mapping, result = self.map_now(attachment)
        except CopyPending as pending:
            finish = pending.finish
            raise CopyPending(attachment, lambda: self._detach_if_failed(attachment, finish())) from None
        except BaseException:
            self.registry.detach(attachment)
            raise
        return attachment, mapping, result

    async def attach_map(
        self, session: Session, buffer: Buffer, wire_accept: Sequence[mpb.Match], access: int
    ) -> tuple[Attachment, Mapping, MapResult]:
        """:meth:`attach_map_now`, copying in a worker if the map copies."""
        try:
            return self.attach_map_now(session, buffer, wire_accept, access)
        except CopyPending as pending:
            return (pending.attachment, *await pending.finish())

    async def _detach_if_failed(
        self, attachment: Attachment, mapped: Awaitable[tuple[Mapping, MapResult]]
    ) -> tuple[Mapping, MapResult]:
        try:
            return await mapped
        except BaseException:
            if attachment.id in self.registry.attachments:
                self.registry.detach(attachment)
            raise

    def map_now(self, attachment: Attachment) -> tuple[Mapping, MapResult]:
        """Map an attachment whose buffer is not moving. The caller sends ``result.fds``, then
        closes ``result.temporary``; if the fds cannot be delivered it calls :meth:`undo`.

        A map that copies is not done here (it is O(size)): it raises
        :class:`CopyPending` after the checks a map gets, and the caller
        awaits its ``finish()``. Other maps stay synchronous, with no thread hop.
        """
        converter = attachment.converter
        if converter is None or not converter.copies:
            return self.registry.map(attachment)
        self.registry.check_map(attachment)  # refused before any work
        session_id = attachment.session.id
        waiting = self._copies.get(session_id, 0)
        limit = self.limits.max_copies_per_session
        if waiting >= limit:
            raise ResourceExhausted(
                f"{converter.name}: this session has {waiting} copies waiting or running, at most "
                f"{limit} (setting max_copies_per_session); wait for their replies before mapping again, "
                "or accept segments to share without a copy"
            )
        self._copies[session_id] = waiting + 1  # until the copy's finish() is over
        copy = self._map_copy(attachment)
        raise CopyPending(attachment, lambda: copy)

    async def map(self, session: Session, attachment: Attachment) -> tuple[Mapping, MapResult]:
        """Map, first waiting out a move of the buffer (the mapping then shows the new backing);
        a map that copies copies in a worker thread, and the loop goes on meanwhile."""
        if self.moving(attachment.buffer):
            await self.wait_out_move(attachment.buffer)
            if attachment.id not in session.attachments:
                raise NotFound(f"attachment {attachment.id} was detached while its buffer moved")
        try:
            return self.map_now(attachment)
        except CopyPending as pending:
            return await pending.finish()

    async def _map_copy(self, attachment: Attachment) -> tuple[Mapping, MapResult]:
        """Copy in a worker thread (at most copy_workers at once), then map on the loop.

        The worker reads duplicates of the buffer's fds (a revoke or a move
        may close the buffer's own meanwhile) and touches no broker state.
        A copy whose attachment went away meanwhile (a detach, its session's
        end, a revoke) is closed; one of a backing a move swapped meanwhile
        is closed and made again from the new backing.
        """
        buffer, session = attachment.buffer, attachment.session
        try:
            while True:
                if self.moving(buffer):
                    await self.wait_out_move(buffer)
                self.registry.check_map(attachment)
                generation = buffer.generation
                result = await self._copy_in_worker(attachment)
                if buffer.generation == generation and not self.moving(buffer):
                    # registry.map checks again (detached, revoked, limits) and closes the copy if refused.
                    return self.registry.map(attachment, prepared=result)
                self._discard(result)  # a copy of the old backing
        finally:
            left = self._copies.pop(session.id, 1) - 1
            if left:
                self._copies[session.id] = left

    async def _copy_in_worker(self, attachment: Attachment) -> MapResult:
        converter = attachment.converter
        assert converter is not None
        await self._copy_slots.acquire()
        try:
            self.registry.check_map(attachment)  # it may have waited for a slot
            dups = self._duplicate_fds(attachment.buffer)
        except BaseException:
            self._copy_slots.release()
            raise
        backing = dataclasses.replace(attachment.buffer.backing(attachment.map_type), fds=dups, kept={})
        job = asyncio.get_running_loop().run_in_executor(None, converter.map, backing, attachment.map_params)

        def copied(_: object) -> None:  # on the loop, once the worker is done, whoever still waits
            self.ledger.close_all([each.fd for each in dups])
            self._copy_slots.release()

        job.add_done_callback(copied)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:  # the caller is gone; the worker is not: close its copy when it is done
            job.add_done_callback(self._discard_when_done)
            raise

    def _discard_when_done(self, job: asyncio.Future[MapResult]) -> None:
        if not job.cancelled() and job.exception() is None:
            self._discard(job.result())

    def _duplicate_fds(self, buffer: Buffer) -> list[BufferFd]:
        """The buffer's fds, duplicated for a worker (adopted: closed through the ledger)."""
        dups: list[BufferFd] = []
        try:
            for each in buffer.fds:
                dups.append(dataclasses.replace(each, fd=self.ledger.adopt_opened(os.dup(each.fd))))
        except OSError as error:
            self.ledger.close_all([each.fd for each in dups])
            raise ResourceExhausted(
                f"the broker could not copy buffer {buffer.id} ({error.strerror or error}); map again later, "
                "or accept segments to share without a copy"
            ) from None
        return dups

    def _discard(self, result: MapResult) -> None:
        """Close the fds of a map that will not be sent."""
        for fd in result.temporary + result.retained:
            self.ledger.close(self.ledger.adopt_opened(fd))

    def undo(self, mapping: Mapping, attachment: Attachment | None = None) -> None:
        """The reply never reached the client: drop the mapping (and the attachment made with it)."""
        if mapping.id in self.registry.mappings:
            self.registry.unmap(mapping)
        if attachment is not None and attachment.id in self.registry.attachments:
            self.registry.detach(attachment)

    def attachment(self, session: Session, attachment_id: int) -> Attachment:
        return self.registry.attachment_find(session, attachment_id)

    def unmap(self, session: Session, mapping_id: int) -> None:
        self.registry.unmap(self.registry.mapping_find(session, mapping_id))

    def detach(self, session: Session, attachment_id: int) -> None:
        self.registry.detach(self.registry.attachment_find(session, attachment_id))

    # --- questions -----------------------------------------------------------------

    def explain(
        self,
        asker: Session,
        wire_accept: Sequence[mpb.Match],
        access: int,
        buffer: Buffer | None = None,
        wire_offers: Sequence[mpb.Offer] = (),
    ) -> ExplainAnswer:
        """Negotiate without attaching, against ``buffer`` or a bare offers list.

        Raises NotFound or InvalidArgument for bad input (an unknown type, a
        bad access value), as Attach would; any other refusal is the answer.
        """
        self.limits.check_accept(wire_accept)
        self.limits.check_offers(wire_offers)
        accept, _ = mapping_types.accept_from_wire(wire_accept, access)
        try:
            if buffer is None:
                offers = mapping_types.offers_from_wire(wire_offers, (EXPLAIN_MAX_SIZE,), EXPLAIN_MAX_SIZE)
                negotiation = self.registry.explain_offers(asker, offers, accept)
            else:
                negotiation = self.registry.explain(asker, buffer, accept)
        except (NotFound, InvalidArgument):
            raise
        except BrokerError as error:
            return ExplainAnswer("", getattr(error, "trace", ()), error.message)
        return ExplainAnswer(negotiation.map_type.name, negotiation.trace)

    def stats(self) -> Stats:
        registry, ledger = self.registry, self.ledger
        return Stats(
            sessions=len(registry.sessions),
            buffers=len(registry.buffers),
            attachments=len(registry.attachments),
            mappings=len(registry.mappings),
            fds_held=ledger.held,
            fds_received=ledger.received,
            fds_sent=ledger.sent,
            fds_closed=ledger.closed,
            fds_expired=ledger.expired,
        )


def dry_run_session(uid: int | None = None, gid: int | None = None) -> Session:
    """Who a dry run asks as when no client session asks (HTTP): the uid/gid given, else the broker's."""
    return Session(
        id=0,
        token="",
        pid=os.getpid(),
        uid=os.getuid() if uid is None else uid,
        gid=os.getgid() if gid is None else gid,
    )


def labels_match(buffer: Buffer, labels: dict[str, str]) -> bool:
    """Does the buffer carry every one of ``labels`` with that value?"""
    return all(buffer.labels.get(key) == value for key, value in labels.items())


def format_labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def check_wait(wait: float) -> None:
    if not 0 <= wait <= MAX_ATTACH_WAIT:  # NaN fails too
        raise InvalidArgument(
            f"wait_seconds {wait:g} is not usable: an attach waits 0 to {MAX_ATTACH_WAIT:g} s for its buffer"
        )


def check_size(size: int, fd0_size: int) -> None:
    if size == 0 or size > MAX_SIZE:
        raise InvalidArgument(f"size {size} is not usable: give the buffer's size in bytes, 1 to {MAX_SIZE}")
    if fd0_size < size:
        raise InvalidArgument(
            f"fd 0 of the buffer has {fd0_size} bytes, fewer than the declared size {size}; "
            "ftruncate a memfd to the size you register (a dma-buf's size is fixed: register at most that)"
        )
