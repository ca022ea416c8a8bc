"""ActivityCounters (server/observe/activity.py): what happened since start, from registry changes.

Driven through a real Registry and Operations over real memfds.
"""

from __future__ import annotations

import asyncio
import time

from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker.core.errors import FailedPrecondition
from bufbroker_broker.server.observe.activity import NEGOTIATION_RESULTS, ActivityCounters
from bufbroker_broker.server.observe.latency import REQUEST_STARTED
from tests.unit.server.world import SIZE, World, accept, plugin_match, plugin_offer

RW = mpb.ACCESS_READ_WRITE


def test_sessions_opened_and_ended_are_counted(world: World):
    activity = ActivityCounters(world.registry)
    first, _ = world.session(), world.session()
    world.registry.session_close(first)
    assert (activity.sessions_opened, activity.sessions_ended) == (2, 1)


def test_registrations_count_by_the_exporters_preferred_type_with_their_bytes(world: World):
    activity = ActivityCounters(world.registry)
    exporter = world.session()
    world.export(exporter, offers=["segments", "memfd"], size=SIZE)
    world.export(exporter, offers=["memfd"], size=2 * SIZE)
    world.export(exporter, offers=["memfd"], size=SIZE)
    assert activity.buffers_registered == {"segments": 1, "memfd": 2}
    assert activity.bytes_registered == {"segments": SIZE, "memfd": 3 * SIZE}


def test_attaches_and_maps_count_by_negotiated_type_and_unmaps_and_detaches_in_all(world: World):
    activity = ActivityCounters(world.registry)
    buffer = world.export(world.session(), offers=["segments", "memfd"])
    importer = world.session()
    seg, seg_map, _ = world.ops.attach_map_now(importer, buffer, accept("segments"), RW)
    world.ops.map_now(seg)
    mem, mem_map, _ = world.ops.attach_map_now(importer, buffer, accept("memfd"), RW)
    assert activity.attaches == {"segments": 1, "memfd": 1}
    assert activity.maps == {"segments": 2, "memfd": 1}
    world.ops.unmap(importer, seg_map.id)
    world.ops.detach(importer, seg.id)  # unmaps its second mapping too
    assert (activity.unmaps, activity.detaches) == (2, 1)
    assert activity.conversions == {}, "direct attaches are no conversions"


def test_an_attach_through_a_converter_is_counted_by_the_converters_name(world: World):
    activity = ActivityCounters(world.registry)
    buffer = world.export(world.session(), offers=["segments"])  # one extent: the whole memfd
    attachment = world.ops.attach(world.session(), buffer, accept("memfd"), RW)
    assert attachment.converter is not None
    assert activity.conversions == {"segments->memfd": 1}
    assert activity.attaches == {"memfd": 1}


def test_moves_and_revokes_are_counted(world: World):
    activity = ActivityCounters(world.registry)
    exporter = world.session()
    buffer = world.export(exporter)
    asyncio.run(world.ops.move(exporter, buffer.id, [world.memfd()], SIZE, [], None, ""))
    world.ops.revoke(exporter, buffer.id, "")
    world.ops.revoke(exporter, buffer.id, "")  # a second revoke is a no-op: no change, no count
    assert (activity.moves, activity.revokes) == (1, 1)


def test_negotiations_count_by_result_type_and_dry_run(world: World, scripted):
    activity = ActivityCounters(world.registry)
    buffer = world.export(world.session(), offers=["memfd"])
    importer = world.session()
    world.ops.attach(importer, buffer, accept("memfd"), RW)
    world.ops.explain(importer, accept("memfd"), RW, buffer=buffer)
    world.ops.explain(importer, accept("segments"), RW, buffer=buffer)
    plugged = world.export(world.session(), offers=[plugin_offer("scripted")])
    scripted.match_raises = FailedPrecondition("busy")
    world.ops.explain(importer, [plugin_match("scripted")], RW, buffer=plugged)
    assert activity.negotiations == {
        ("matched", "memfd", False): 1,
        ("matched", "memfd", True): 1,
        ("no-common-type", "none", True): 1,
        ("error", "none", True): 1,
    }
    assert activity.negotiations_by_result() == {"matched": 2, "no-common-type": 1, "error": 1}


def test_negotiations_by_result_names_every_result_even_at_zero(world: World):
    activity = ActivityCounters(world.registry)
    assert activity.negotiations_by_result() == dict.fromkeys(NEGOTIATION_RESULTS, 0)


def test_a_negotiation_is_timed_from_the_start_of_its_request(world: World):
    activity = ActivityCounters(world.registry)
    buffer = world.export(world.session())
    importer = world.session()
    world.ops.explain(importer, accept("memfd"), RW, buffer=buffer)
    assert activity.negotiation_seconds.count == 0, "outside a request there is nothing to time from"
    token = REQUEST_STARTED.set(time.perf_counter() - 0.003)
    try:
        world.ops.explain(importer, accept("memfd"), RW, buffer=buffer)
    finally:
        REQUEST_STARTED.reset(token)
    histogram = activity.negotiation_seconds
    assert histogram.count == 1 and 0.003 <= histogram.sum < 1.0
