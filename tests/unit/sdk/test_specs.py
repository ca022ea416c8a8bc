"""bufbroker.specs: offers and accept-list entries become their own type's wire message."""

from __future__ import annotations

import pytest

import bufbroker
from bufbroker import specs
from bufbroker.v1 import mapping_types_pb2 as mt


def test_each_type_name_becomes_an_offer_of_that_type_in_the_given_order():
    offers = specs.offers_to_wire(["udmabuf", "segments", "memfd", "dmabuf"])
    assert [offer.WhichOneof("kind") for offer in offers] == ["udmabuf", "segments", "memfd", "dmabuf"]


def test_no_offers_is_an_empty_list_for_the_broker_to_default():
    assert specs.offers_to_wire(None) == [] and specs.offers_to_wire([]) == []


def test_allow_write_makes_offers_without_an_access_read_write_and_keeps_explicit_ones():
    body = mt.MemfdOffer(max_access=mt.ACCESS_READ)
    named, spec, explicit, kept, plugin = specs.offers_to_wire(
        [
            "udmabuf",
            bufbroker.Segments(extents=[bufbroker.Extent(0, 50)], restricted_to=["uid:1000"]),
            bufbroker.Dmabuf(access="read_write", device="0000:03:00.0"),
            bufbroker.Memfd(access="read"),
            bufbroker.Plugin("acme-tiles", body),
        ],
        allow_write=True,
    )
    assert named.udmabuf.max_access == mt.ACCESS_READ_WRITE
    assert spec.segments.max_access == mt.ACCESS_READ_WRITE and list(spec.restricted_to) == ["uid:1000"]
    assert [(e.offset, e.length) for e in spec.segments.extents] == [(0, 50)]
    assert (explicit.dmabuf.max_access, explicit.dmabuf.device) == (mt.ACCESS_READ_WRITE, "0000:03:00.0")
    assert kept.memfd.max_access == mt.ACCESS_READ
    assert plugin.plugin.body.Unpack(unpacked := mt.MemfdOffer()) and unpacked == body  # a plugin's own message
    # Without it, nothing is granted on the wire: the broker reads unset as read.
    (default,) = specs.offers_to_wire(["memfd"])
    assert default.memfd.max_access == mt.ACCESS_UNSPECIFIED


def test_allow_write_without_offers_is_one_read_write_memfd_offer():
    for none in (None, []):
        assert specs.offers_to_wire(none, allow_write=True) == [
            mt.Offer(memfd=mt.MemfdOffer(max_access=mt.ACCESS_READ_WRITE))
        ]


def test_an_offer_carries_its_options_in_its_own_message():
    memfd, segments = specs.offers_to_wire(
        [
            bufbroker.Memfd(access="read", restricted_to=["uid:1000"]),
            bufbroker.Segments(extents=[bufbroker.Extent(4096, 100, fd_index=1), bufbroker.Extent(0, 50)]),
        ]
    )
    assert memfd.memfd.max_access == mt.ACCESS_READ and list(memfd.restricted_to) == ["uid:1000"]
    assert [(e.fd_index, e.offset, e.length) for e in segments.segments.extents] == [(1, 4096, 100), (0, 0, 50)]
    assert segments.segments.max_access == mt.ACCESS_UNSPECIFIED


def test_dmabuf_offer_and_match_carry_the_device_and_the_p2p_flags():
    (offer,) = specs.offers_to_wire([bufbroker.Dmabuf(device="0000:03:00.0", requires_p2p=True)])
    assert (offer.dmabuf.device, offer.dmabuf.requires_p2p) == ("0000:03:00.0", True)
    (match,) = specs.accept_to_wire([bufbroker.Dmabuf(device="0000:04:00.0", accepts_p2p=True)], "read")
    assert match.dmabuf.device == "0000:04:00.0" and match.dmabuf.accepts_p2p
    assert match.dmabuf.access == mt.ACCESS_READ


def test_an_accept_entry_without_access_takes_the_attach_access_and_its_own_access_wins():
    plain, own = specs.accept_to_wire(["memfd", bufbroker.Segments(access="read", max_extents=4)], "read_write")
    assert plain.memfd.access == mt.ACCESS_READ_WRITE
    assert own.segments.access == mt.ACCESS_READ and own.segments.max_extents == 4


def test_memfd_match_can_allow_a_copy():
    (match,) = specs.accept_to_wire([bufbroker.Memfd(allow_copy=True)], "read")
    assert match.memfd.allow_copy


def test_a_plugin_spec_packs_its_own_message_under_its_type_name():
    body = mt.Extent(fd_index=2, offset=8, length=16)
    (offer,) = specs.offers_to_wire([bufbroker.Plugin("acme-tiles", body)])
    (match,) = specs.accept_to_wire([bufbroker.Plugin("acme-tiles", body)], "read")
    for wire in (offer, match):
        assert wire.WhichOneof("kind") == "plugin" and wire.plugin.type_name == "acme-tiles"
        unpacked = mt.Extent()
        assert wire.plugin.body.Unpack(unpacked) and unpacked == body


def test_an_unknown_type_name_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown mapping type 'gpu'.*\['dmabuf', 'memfd', 'segments', 'udmabuf'\]"):
        specs.offers_to_wire(["gpu"])


def test_something_that_is_not_a_spec_is_a_type_error():
    with pytest.raises(TypeError, match="expected a mapping type name or spec, got 42"):
        specs.accept_to_wire([42], "read")  # type: ignore[list-item]


@pytest.mark.parametrize("access", ["write", "READ", ""])
def test_a_bad_access_is_refused_even_with_an_empty_accept_list(access):
    with pytest.raises(ValueError, match="access must be 'read' or 'read_write'"):
        specs.accept_to_wire([], access)
    with pytest.raises(ValueError, match="access must be"):
        specs.offers_to_wire([bufbroker.Memfd(access=access)])


def test_access_values_are_the_wire_enum():
    assert specs.access_value("read") == mt.ACCESS_READ
    assert specs.access_value("read_write") == mt.ACCESS_READ_WRITE
    assert specs.access_value(None) == mt.ACCESS_UNSPECIFIED
