"""(format, modifier) pairs in negotiation: each rule of core/negotiate.py and core/format_pairs.py by name."""

from __future__ import annotations

import pytest

from bufbroker import formats
from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core import format_pairs
from bufbroker_broker.core.errors import InvalidArgument, NoCommonMappingType
from bufbroker_broker.core.negotiate import MATCHED, SOFT_MISMATCH, Spec, negotiate
from bufbroker_broker.mapping_types import accept_from_wire, load_mapping_types, offers_from_wire
from tests.unit.core.test_negotiate import CTX, FakeMatch, FakeOffer, FakeType

Y_TILED = formats.parse_modifier("I915_Y_TILED")
LINEAR = formats.LINEAR


def offer(t: FakeType, *pairs: tuple[str, int], tag: str = "") -> Spec:
    return Spec(t, FakeOffer(tag), formats=tuple(pairs))


def match(t: FakeType, *pairs: tuple[str, int], tag: str = "") -> Spec:
    return Spec(t, FakeMatch(tag), formats=tuple(pairs))


def test_exporter_pair_order_wins_over_the_importer_s():
    dmabuf = FakeType("dmabuf")
    result = negotiate(
        [offer(dmabuf, ("NV12", Y_TILED), ("NV12", LINEAR))], [match(dmabuf, ("NV12", LINEAR), ("NV12", Y_TILED))], CTX
    )
    assert result.format == ("NV12", Y_TILED)
    assert result.trace[-1].verdict == MATCHED and result.trace[-1].format == "NV12:I915_Y_TILED"


def test_an_empty_intersection_is_a_soft_mismatch_naming_both_lists_and_the_next_offer_is_tried():
    dmabuf, memfd = FakeType("dmabuf"), FakeType("memfd")
    offers = [offer(dmabuf, ("NV12", Y_TILED)), offer(memfd, ("NV12", LINEAR), ("XRGB8888", LINEAR))]
    accept = [match(dmabuf, ("NV12", LINEAR)), match(memfd, ("XRGB8888", LINEAR))]
    result = negotiate(offers, accept, CTX)
    assert (result.map_type, result.format) == (memfd, ("XRGB8888", LINEAR))
    refused = result.trace[0]
    assert refused.verdict == SOFT_MISMATCH
    assert refused.reason == (
        "formats: the exporter offers [NV12:I915_Y_TILED], the importer accepts [NV12:LINEAR]: "
        "no (format, modifier) pair in common"
    )
    # The same type with other formats is still a format verdict, not type-differs.
    assert [s.verdict for s in result.trace] == [SOFT_MISMATCH, "type-differs", "type-differs", MATCHED]


def test_no_pair_anywhere_raises_no_common_type_with_the_pair_reasons():
    memfd = FakeType("memfd")
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate([offer(memfd, ("NV12", LINEAR))], [match(memfd, ("XRGB8888", LINEAR))], CTX)
    assert "pairs refused: memfd: formats: the exporter offers [NV12:LINEAR]" in raised.value.message


def test_a_side_without_pairs_puts_no_format_constraint_and_chooses_none():
    memfd = FakeType("memfd")
    assert negotiate([offer(memfd)], [match(memfd, ("NV12", LINEAR))], CTX).format is None
    assert negotiate([offer(memfd, ("NV12", LINEAR))], [match(memfd)], CTX).format is None


def test_the_modifier_is_part_of_the_pair():
    memfd = FakeType("memfd")
    with pytest.raises(NoCommonMappingType):
        negotiate([offer(memfd, ("NV12", Y_TILED))], [match(memfd, ("NV12", LINEAR))], CTX)


def test_a_restricted_offer_is_refused_before_its_formats_are_looked_at():
    memfd = FakeType("memfd")
    restricted = Spec(memfd, FakeOffer(), restricted_to=("uid:1",), formats=(("NV12", LINEAR),))
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate([restricted], [match(memfd, ("XRGB8888", LINEAR))], CTX)
    assert raised.value.trace[0].reason.startswith("restricted")


@pytest.fixture(autouse=True)
def _builtin_types():
    load_mapping_types()  # idempotent: the wire codec looks types up by name


def _memfd_offer(*pairs: pb.FormatPair) -> pb.Offer:
    return pb.Offer(memfd=pb.MemfdOffer(), formats=list(pairs))


@pytest.mark.parametrize(
    "pairs, message",
    [
        ([pb.FormatPair(format="NV13")], "offer 0 formats[0]: unknown pixel format 'NV13'"),
        ([pb.FormatPair(format="")], "offer 0 formats[0] has no format"),
        ([pb.FormatPair(format="NV12"), pb.FormatPair(format="NV12")], "offer 0 formats[1] repeats NV12:LINEAR"),
        ([pb.FormatPair(format="I420"), pb.FormatPair(format="YUV420")], "formats[1] repeats YUV420:LINEAR"),
    ],
)
def test_a_malformed_pair_list_is_invalid_argument(pairs, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        offers_from_wire([_memfd_offer(*pairs)], (4096,), 4096)


def test_a_malformed_accept_pair_list_is_invalid_argument_too():
    with pytest.raises(InvalidArgument, match=r"match 0 formats\[0\]: unknown pixel format 'BOGUS'"):
        accept_from_wire([pb.Match(memfd=pb.MemfdMatch(), formats=[pb.FormatPair(format="BOGUS")])], pb.ACCESS_READ)


def test_aliases_become_drm_names_on_the_way_in():
    [spec] = offers_from_wire([_memfd_offer(pb.FormatPair(format="I420"), pb.FormatPair(format="GREY"))], (4096,), 4096)
    assert spec.formats == (("YUV420", LINEAR), ("R8", LINEAR))


def test_pair_text_uses_modifier_names():
    assert format_pairs.list_text([("NV12", Y_TILED), ("NV12", LINEAR)]) == "[NV12:I915_Y_TILED, NV12:LINEAR]"


def test_more_pairs_than_the_setting_allows_are_refused_naming_it():
    from bufbroker_broker.server.limits import RequestLimits

    offer = _memfd_offer(*[pb.FormatPair(format="NV12", modifier=m) for m in range(65)])
    with pytest.raises(
        InvalidArgument, match=r"65 \(format, modifier\) pairs on offer 0; at most 64 \(setting max_format_pairs\)"
    ):
        RequestLimits().check_offers([offer])
    match = pb.Match(memfd=pb.MemfdMatch(), formats=offer.formats)
    with pytest.raises(InvalidArgument, match=r"pairs on match 0; at most 2 \(setting max_format_pairs\)"):
        RequestLimits(max_format_pairs=2).check_accept([match])
