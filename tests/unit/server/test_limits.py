"""server/limits.py through Operations: every cap refuses before any work, naming its setting and value."""

from __future__ import annotations

import os

import pytest

from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker import mapping_types
from bufbroker_broker.core.backing import Backing, BufferFd
from bufbroker_broker.core.errors import InvalidArgument, NotFound, ResourceExhausted
from bufbroker_broker.core.host_facts import UNPROBED
from bufbroker_broker.core.mapping_type import MatchContext, Matched
from bufbroker_broker.mapping_types.converters import SegmentsToMemfdCopy
from bufbroker_broker.server.limits import RequestLimits
from bufbroker_broker.server.operations import Operations, Target
from bufbroker_broker.server.settings import BrokerSettings
from tests.unit.server.world import SIZE, World, accept

PAGE = 4096


def small(world: World, **caps: int) -> Operations:
    """The world's operations with these caps (the rest at their defaults)."""
    world.ops = Operations(world.registry, world.ledger, limits=RequestLimits(**caps))
    return world.ops


def memfd_offers(n: int) -> list[mpb.Offer]:
    return [mpb.Offer(memfd=mpb.MemfdOffer(max_access=mpb.ACCESS_READ_WRITE)) for _ in range(n)]


def segments_offer(extents: int) -> mpb.Offer:
    offer = mpb.Offer()
    offer.segments.max_access = mpb.ACCESS_READ
    for n in range(extents):
        offer.segments.extents.add(fd_index=0, offset=n, length=1)
    return offer


def refused_register(world: World, **request) -> str:
    """Register with ``request``; the refusal's text. The fd sent is closed all the same."""
    fd = world.memfd()
    request.setdefault("wire_offers", memfd_offers(1))
    with pytest.raises(InvalidArgument) as refused:
        world.ops.register(world.session(), [fd], SIZE, on_exporter_exit="revoke", **request)
    assert fd in world.closed, "a refused registration closes the fds it was sent"
    return str(refused.value)


def test_the_settings_carry_every_cap_with_the_limits_defaults():
    settings = BrokerSettings()
    assert RequestLimits.of(settings) == RequestLimits()
    assert settings.max_copy_bytes == SegmentsToMemfdCopy().max_bytes
    raised = BrokerSettings(max_offers=7, max_accept_entries=8, max_extents=9, max_labels=10)
    assert RequestLimits.of(raised).max_offers == 7 and RequestLimits.of(raised).max_extents == 9
    for field in ("max_offers", "max_accept_entries", "max_extents", "max_labels", "max_label_bytes"):
        assert BrokerSettings.model_fields[field].description, f"{field} needs a description for --help"


def test_offers_over_max_offers_are_refused_naming_the_setting(world: World):
    small(world, max_offers=3)
    assert "4 offers; at most 3 (setting max_offers)" in refused_register(world, wire_offers=memfd_offers(4))
    world.export(world.session(), offers=["memfd"] * 3)  # at the cap: accepted


def test_accept_entries_over_max_accept_entries_are_refused_by_attach_and_explain(world: World):
    ops = small(world, max_accept_entries=2)
    exporter, importer = world.session(), world.session()
    buffer = world.export(exporter)
    with pytest.raises(InvalidArgument, match=r"3 accept entries; at most 2 \(setting max_accept_entries\)"):
        ops.attach(importer, buffer, accept("memfd", "memfd", "memfd"), mpb.ACCESS_READ)
    with pytest.raises(InvalidArgument, match=r"setting max_accept_entries"):
        ops.explain(importer, accept("memfd", "memfd", "memfd"), mpb.ACCESS_READ, buffer)
    with pytest.raises(InvalidArgument, match=r"setting max_accept_entries"):
        ops.explain(importer, accept("memfd", "memfd", "memfd"), mpb.ACCESS_READ, wire_offers=memfd_offers(1))
    assert world.registry.attachments == {}
    assert ops.attach(importer, buffer, accept("memfd", "memfd"), mpb.ACCESS_READ).buffer is buffer


def test_800_by_800_explain_is_refused_before_negotiating(world: World):
    asked: list[object] = []
    world.registry.observe(asked.append)
    with pytest.raises(InvalidArgument, match=r"800 accept entries; at most 32 \(setting max_accept_entries\)"):
        world.ops.explain(world.session(), accept(*["memfd"] * 800), mpb.ACCESS_READ, wire_offers=memfd_offers(800))
    with pytest.raises(InvalidArgument, match=r"800 offers; at most 32 \(setting max_offers\)"):
        world.ops.explain(world.session(), accept("memfd"), mpb.ACCESS_READ, wire_offers=memfd_offers(800))
    assert not [c for c in asked if getattr(c, "kind", "") == "negotiated"]


def test_extents_over_max_extents_in_all_offers_together_are_refused(world: World):
    small(world, max_extents=10)
    text = refused_register(world, wire_offers=[segments_offer(6), segments_offer(5)])
    assert "11 extents in the offers; at most 10 in all offers together (setting max_extents)" in text
    with pytest.raises(InvalidArgument, match=r"setting max_extents"):
        world.ops.explain(world.session(), accept("segments"), mpb.ACCESS_READ, wire_offers=[segments_offer(11)])
    world.export(world.session(), offers=[segments_offer(5), segments_offer(5)])


def test_labels_over_max_labels_or_max_label_bytes_are_refused(world: World):
    small(world, max_labels=2, max_label_bytes=10)
    assert "3 labels; at most 2 (setting max_labels)" in refused_register(world, labels={"a": "", "b": "", "c": ""})
    text = refused_register(world, labels={"key": "12345678"})  # 3 + 8 bytes
    assert "labels hold 11 bytes (keys and values); at most 10 (setting max_label_bytes)" in text
    assert "at most 10" in refused_register(world, labels={"k": "ééééé"})  # UTF-8 bytes, not characters
    world.export(world.session(), labels={"key": "1234567"})


def test_a_label_selector_over_the_caps_is_refused(world: World):
    small(world, max_labels=2)
    with pytest.raises(InvalidArgument, match=r"3 selector labels; at most 2 \(setting max_labels\)"):
        world.ops.select_buffer(world.session(), Target(labels={"a": "1", "b": "2", "c": "3"}))


def test_a_name_over_max_name_length_is_refused(world: World):
    small(world, max_name_length=5)
    assert "6 characters; at most 5 (setting max_name_length)" in refused_register(world, name="abcdef")
    world.export(world.session(), name="abcde")


@pytest.mark.parametrize(
    ("name", "index", "code"),
    [
        ("cam\u202eexe", 3, "U+202E"),  # right-to-left override
        ("a\u200bb", 1, "U+200B"),  # zero width space
        ("line\nbreak", 4, "U+000A"),
        ("del\x7f", 3, "U+007F"),
        ("\u2066iso", 0, "U+2066"),  # left-to-right isolate
    ],
)
def test_a_name_with_control_or_format_characters_says_which_and_where(world: World, name: str, index: int, code: str):
    text = refused_register(world, name=name)
    assert f"{code}" in text and f"at index {index}" in text


def test_printable_unicode_names_are_accepted(world: World):
    assert world.export(world.session(), name="café-камера-相机 1").name == "café-камера-相机 1"


def test_the_copy_converter_refuses_a_copy_over_max_copy_bytes_before_copying(world: World):
    [copy] = [c for c in mapping_types.load_converters(max_copy_bytes=2 * PAGE) if c.copies]
    assert isinstance(copy, SegmentsToMemfdCopy) and copy.max_bytes == 2 * PAGE
    offer = mpb.SegmentsOffer(extents=[mpb.Extent(fd_index=0, offset=0, length=PAGE)] * 3)
    match = mpb.MemfdMatch(access=mpb.ACCESS_READ, allow_copy=True)
    ctx = MatchContext(0, 0, 3 * PAGE, (3 * PAGE,), (True,), host=UNPROBED)
    with pytest.raises(ResourceExhausted, match=r"copy of 12288 bytes; at most 8192 \(setting max_copy_bytes\)"):
        copy.match(offer, match, ctx)
    dry = MatchContext(0, 0, 0, (0,), (True,), host=UNPROBED, dry_run=True)
    assert copy.match(offer, match, dry) == Matched(), "a dry run's sizes are made up: not refused"
    fd = os.memfd_create("big", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 3 * PAGE)
        backing = Backing(1, "", 3 * PAGE, [BufferFd(fd, 3 * PAGE, True)], {})
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ResourceExhausted, match="setting max_copy_bytes"):
            copy.map(backing, ((0, 0, PAGE), (0, PAGE, PAGE), (0, 2 * PAGE, PAGE)))
        assert len(os.listdir("/proc/self/fd")) == before, "nothing was created for a refused copy"
    finally:
        os.close(fd)


def test_an_attach_needing_a_copy_over_max_copy_bytes_is_resource_exhausted(world: World):
    world.registry.converters = mapping_types.load_converters(max_copy_bytes=PAGE)
    half = mpb.Offer()
    half.segments.max_access = mpb.ACCESS_READ
    half.segments.extents.add(fd_index=0, offset=0, length=PAGE)
    half.segments.extents.add(fd_index=0, offset=PAGE, length=PAGE)
    buffer = world.export(world.session(), offers=[half], size=2 * PAGE)
    copy_reader = mpb.Match()
    copy_reader.memfd.access = mpb.ACCESS_READ
    copy_reader.memfd.allow_copy = True
    with pytest.raises(ResourceExhausted, match=r"at most 4096 \(setting max_copy_bytes\)"):
        world.ops.attach_map_now(world.session(), buffer, [copy_reader], mpb.ACCESS_READ)
    assert world.registry.attachments == {}


def test_explain_of_an_invisible_buffer_is_not_found_like_a_missing_one(world: World):
    exporter = world.session(uid=os.getuid())
    buffer = world.export(exporter, name="private-cam", allow=["uid:4242"])
    stranger = world.session(uid=os.getuid() + 1 if os.getuid() else 1)
    with pytest.raises(NotFound) as hidden:
        world.ops.find_buffer(name="private-cam", asker=stranger)
    with pytest.raises(NotFound) as missing:
        world.ops.find_buffer(name="no-such-cam", asker=stranger)
    assert str(hidden.value) == str(missing.value).replace("no-such-cam", "private-cam")
    with pytest.raises(NotFound) as by_registry:
        world.ops.explain(stranger, accept("memfd"), mpb.ACCESS_READ, buffer)
    assert "uid:4242" not in str(by_registry.value) and "private-cam" not in str(by_registry.value)
