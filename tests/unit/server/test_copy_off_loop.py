"""Maps that copy (segments->memfd-copy) run in a worker thread, never on the event loop.

Operations (server/operations.py) over a real Registry and real memfds. A
copy's converter is wrapped so a test can hold it in its worker and see
where it ran; every test's World checks at teardown that the ledger holds
no fd.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from bufbroker.specs import Extent, Memfd, Segments
from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker.core.backing import Backing
from bufbroker_broker.core.errors import FailedPrecondition, NotFound, ResourceExhausted
from bufbroker_broker.core.mapping_type import MapResult
from bufbroker_broker.core.registry import Attachment, Session
from bufbroker_broker.server.limits import DEFAULT_COPY_WORKERS as MAX_COPIES
from bufbroker_broker.server.limits import DEFAULT_MAX_COPIES_PER_SESSION as MAX_COPIES_PER_SESSION
from bufbroker_broker.server.operations import CopyPending
from tests.unit.server.world import World, accept

READ = mpb.ACCESS_READ
PAGE = 4096
COPY = accept(Memfd(allow_copy=True), access="read")


class Held:
    """Wraps a copying converter: its map runs only once ``go`` is set, and records its thread."""

    def __init__(self, converter: Any) -> None:
        self.converter = converter
        self.name, self.source, self.target, self.copies = converter.name, converter.source, converter.target, True
        self.go = threading.Event()
        self.running = 0
        self.most_at_once = 0
        self.threads: list[int] = []
        self.backings: list[Backing] = []
        self._lock = threading.Lock()

    def map(self, backing: Backing, params: Any) -> MapResult:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.threads.append(threading.get_ident())
            self.backings.append(backing)
        try:
            assert self.go.wait(10)
            return self.converter.map(backing, params)
        finally:
            with self._lock:
                self.running -= 1

    def unmap(self, backing: Backing, params: Any) -> None:
        self.converter.unmap(backing, params)

    def __getattr__(self, name: str) -> Any:  # match, finish
        return getattr(self.converter, name)


async def until(condition: Any, also: asyncio.Task | None = None) -> int:
    """Run the loop until ``condition()`` (a failed ``also`` raises); return how many times it yielded."""
    for ticks in range(5000):
        if condition():
            return ticks
        if also is not None and also.done():
            also.result()
        await asyncio.sleep(0.001)
    raise AssertionError("timed out")


def copy_buffer(world: World, exporter: Session):
    """Two extents, out of order, of a marked memfd: the copy is b"second" + b"first"."""
    buffer = world.export(
        exporter, offers=[Segments(extents=[Extent(PAGE, 6), Extent(0, 5)])], size=2 * PAGE, allow_write=False
    )
    os.pwrite(buffer.fds[0].fd, b"first", 0)
    os.pwrite(buffer.fds[0].fd, b"second", PAGE)
    return buffer


def held_attachment(world: World, importer: Session, buffer) -> tuple[Attachment, Held]:
    attachment = world.ops.attach(importer, buffer, COPY, READ)
    assert attachment.converter is not None and attachment.converter.name == "segments->memfd-copy"
    held = Held(attachment.converter)
    attachment.converter = held
    return attachment, held


def sent(world: World, result: MapResult) -> bytes:
    """What the importer would read; then close the copy as the transport does once it is sent."""
    data = os.pread(result.fds[0], 64, 0)
    world.ledger.close_all(result.temporary)
    return data


def test_a_copy_runs_in_a_worker_on_duplicated_fds_while_the_loop_goes_on(world: World):
    buffer = copy_buffer(world, world.session())
    importer = world.session()
    attachment, held = held_attachment(world, importer, buffer)

    async def scenario():
        loop_thread = threading.get_ident()
        mapping = asyncio.create_task(world.ops.map(importer, attachment))
        assert await until(lambda: held.threads, mapping) > 0  # the loop runs while the worker copies
        await asyncio.sleep(0.01)
        assert not mapping.done()
        held.go.set()
        done, result = await mapping
        assert held.threads and loop_thread not in held.threads
        (backing,) = held.backings
        assert backing.fds[0].fd != buffer.fds[0].fd  # a duplicate, closed once the copy is done
        assert result.handle == mpb.MemfdHandle(size=11, access=READ)
        assert sent(world, result) == b"secondfirst"
        assert done.id in world.registry.mappings

    asyncio.run(scenario())


def test_maps_that_do_not_copy_stay_synchronous(world: World):
    buffer = world.export(world.session(), offers=["segments"])
    importer = world.session()
    attachment = world.ops.attach(importer, buffer, accept("segments"), READ)
    mapping, result = world.ops.map_now(attachment)  # no loop, no thread, no CopyPending
    assert mapping.id in world.registry.mappings
    world.ledger.close_all(result.temporary)


def test_map_now_of_a_copy_raises_copy_pending_after_the_checks(world: World):
    exporter = world.session()
    buffer = copy_buffer(world, exporter)
    importer = world.session()
    attachment = world.ops.attach(importer, buffer, COPY, READ)
    with pytest.raises(CopyPending) as pending:
        world.ops.map_now(attachment)
    held = Held(attachment.converter)
    held.go.set()
    attachment.converter = held

    async def scenario():
        _, result = await pending.value.finish()
        assert sent(world, result) == b"secondfirst"

    asyncio.run(scenario())
    world.ops.revoke(exporter, buffer.id, "gone")
    with pytest.raises(FailedPrecondition, match="revoked"):  # refused before any copy
        world.ops.map_now(attachment)


@pytest.mark.parametrize("ending", ["detach", "session-end", "revoke"])
def test_a_copy_whose_attachment_went_away_meanwhile_is_closed(world: World, ending: str):
    exporter = world.session()
    buffer = copy_buffer(world, exporter)
    importer = world.session()
    attachment, held = held_attachment(world, importer, buffer)
    held_before = world.ledger.held

    async def scenario():
        mapping = asyncio.create_task(world.ops.map(importer, attachment))
        await until(lambda: held.threads, mapping)
        if ending == "detach":
            world.ops.detach(importer, attachment.id)
        elif ending == "session-end":
            world.registry.session_close(importer)
        else:
            world.ops.revoke(exporter, buffer.id, "withdrawn")
        held.go.set()
        with pytest.raises(NotFound if ending != "revoke" else FailedPrecondition):
            await mapping

    asyncio.run(scenario())
    assert not world.registry.mappings
    # The copy and the duplicates were closed (a revoke also closed the buffer's own fd).
    assert world.ledger.held == held_before - (1 if ending == "revoke" else 0)


def test_a_caller_cancelled_during_the_copy_leaves_no_fd(world: World):
    buffer = copy_buffer(world, world.session())
    importer = world.session()
    attachment, held = held_attachment(world, importer, buffer)
    held_before = world.ledger.held

    async def scenario():
        mapping = asyncio.create_task(world.ops.map(importer, attachment))
        await until(lambda: held.threads, mapping)
        mapping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await mapping
        held.go.set()
        await until(lambda: world.ledger.held == held_before)  # the worker finishes; its copy is closed then

    asyncio.run(scenario())
    assert not world.registry.mappings


def test_attach_map_of_a_copy_detaches_if_the_map_fails(world: World):
    exporter = world.session()
    buffer = copy_buffer(world, exporter)
    importer = world.session()
    converter = world.registry.converters[-1]
    assert converter.copies
    held = Held(converter)
    world.registry.converters = (*world.registry.converters[:-1], held)

    async def scenario():
        task = asyncio.create_task(world.ops.attach_map(importer, buffer, COPY, READ))
        await until(lambda: held.threads, task)
        world.ops.revoke(exporter, buffer.id, "withdrawn")
        held.go.set()
        with pytest.raises(FailedPrecondition):
            await task

    asyncio.run(scenario())
    assert not importer.attachments and not world.registry.mappings


def test_at_most_max_copies_run_at_once_and_a_session_queues_a_few(world: World):
    buffer = copy_buffer(world, world.session())
    importers = [world.session() for _ in range(2)]
    per_session = [
        [held_attachment(world, importer, buffer) for _ in range(MAX_COPIES_PER_SESSION + 1)] for importer in importers
    ]
    helds = [held for attachments in per_session for _, held in attachments]

    async def scenario():
        tasks = []
        for importer, attachments in zip(importers, per_session, strict=True):
            for attachment, _ in attachments[:-1]:
                tasks.append(asyncio.create_task(world.ops.map(importer, attachment)))
        await asyncio.sleep(0.05)
        assert sum(h.running for h in helds) == MAX_COPIES  # the others wait for a slot
        with pytest.raises(
            ResourceExhausted, match=f"at most {MAX_COPIES_PER_SESSION} \\(setting max_copies_per_session\\)"
        ):
            world.ops.map_now(per_session[0][-1][0])
        for held in helds:
            held.go.set()
        for _, result in await asyncio.gather(*tasks):
            assert sent(world, result) == b"secondfirst"
        assert sum(h.running for h in helds) == 0

    asyncio.run(scenario())
    assert len(world.registry.mappings) == 2 * MAX_COPIES_PER_SESSION
