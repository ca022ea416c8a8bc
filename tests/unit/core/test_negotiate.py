"""negotiate(): the exporter-first nested loop of DESIGN.md section 3.

Small fake mapping types (plain classes, plain dataclass messages) drive the
rules; the real memfd and segments types check the access soft mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.errors import InvalidArgument, NoCommonMappingType
from bufbroker_broker.core.mapping_type import MapResult, MatchContext, Matched, SoftMismatch, check_mapping_type
from bufbroker_broker.core.negotiate import (
    ERROR,
    MATCHED,
    SOFT_MISMATCH,
    TYPE_DIFFERS,
    Spec,
    negotiate,
)
from bufbroker_broker.mapping_types.memfd import MEMFD
from bufbroker_broker.mapping_types.segments import SEGMENTS

CTX = MatchContext(importer_uid=1000, importer_gid=1000, buffer_size=4096, fd_sizes=(4096,), fd_writable=(True,))


@dataclass(frozen=True)
class FakeOffer:
    tag: str = ""
    soft: str = ""  # non-empty: every pair with this offer is a soft mismatch


@dataclass(frozen=True)
class FakeMatch:
    tag: str = ""
    soft: str = ""  # non-empty: a soft mismatch with this reason
    error: str = ""  # non-empty: match raises InvalidArgument with this message


class FakeType:
    """A complete mapping type whose verdict is written in its messages."""

    offer_message = FakeOffer
    match_message = FakeMatch
    handle_message = dict

    def __init__(self, name: str) -> None:
        self.name = name
        self.description = f"fake type {name}"
        self.finished: list[tuple[FakeOffer, FakeMatch]] = []

    def check_offer(self, offer, fd_sizes, size):
        return offer

    def check_match(self, match):
        return match

    def match(self, offer: FakeOffer, match: FakeMatch, ctx: MatchContext):
        if match.error:
            raise InvalidArgument(match.error)
        if offer.soft or match.soft:
            return SoftMismatch(offer.soft or match.soft)
        return Matched()

    def finish(self, offer: FakeOffer, match: FakeMatch, ctx: MatchContext):
        self.finished.append((offer, match))
        return ("params", self.name, offer.tag, match.tag)

    def map(self, backing, params):
        return MapResult(handle={}, fds=[])

    def unmap(self, backing, params):
        pass

    def describe(self):
        return self.description


def offer(t: FakeType, tag: str = "", soft: str = "") -> Spec:
    return Spec(t, FakeOffer(tag, soft))


def match(t: FakeType, tag: str = "", soft: str = "", error: str = "") -> Spec:
    return Spec(t, FakeMatch(tag, soft, error))


def pairs(trace) -> list[tuple[int, int]]:
    return [(s.offer_index, s.match_index) for s in trace]


def test_fake_type_is_a_complete_mapping_type():
    check_mapping_type(FakeType("fake"))  # raises TypeError if the fixture type is incomplete


def test_exporter_order_wins_over_importer_order():
    a, b = FakeType("a"), FakeType("b")
    result = negotiate([offer(a), offer(b)], [match(b), match(a)], CTX)
    assert result.map_type is a
    assert (result.offer_index, result.match_index) == (0, 1)


def test_importer_order_only_ranks_matches_of_the_same_offer():
    a = FakeType("a")
    result = negotiate([offer(a, "o")], [match(a, "first"), match(a, "second")], CTX)
    assert result.match_index == 0
    assert result.map_params == ("params", "a", "o", "first")


def test_pairs_of_different_types_are_recorded_as_type_differs_and_skipped():
    a, b = FakeType("a"), FakeType("b")
    result = negotiate([offer(a)], [match(b), match(a)], CTX)
    assert result.match_index == 1
    assert result.trace[0].verdict == TYPE_DIFFERS
    assert (result.trace[0].offer_type, result.trace[0].match_type) == ("a", "b")
    assert b.finished == []


def test_types_are_compared_by_identity_not_by_name():
    first, second = FakeType("same"), FakeType("same")
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate([offer(first)], [match(second)], CTX)
    assert [s.verdict for s in raised.value.trace] == [TYPE_DIFFERS]


def test_soft_mismatch_continues_to_the_next_pair_with_its_reason_recorded():
    a = FakeType("a")
    result = negotiate([offer(a)], [match(a, soft="access: nope"), match(a, "ok")], CTX)
    assert result.match_index == 1
    assert result.trace[0].verdict == SOFT_MISMATCH
    assert result.trace[0].reason == "access: nope"
    assert result.trace[1].verdict == MATCHED


def test_error_aborts_the_whole_negotiation_even_if_a_later_pair_would_match():
    a = FakeType("a")
    with pytest.raises(InvalidArgument) as raised:
        negotiate([offer(a), offer(a)], [match(a, error="bad match"), match(a)], CTX)
    trace = raised.value.trace
    assert pairs(trace) == [(0, 0)]
    assert trace[-1].verdict == ERROR
    assert trace[-1].reason == "bad match"
    assert a.finished == []


def test_error_trace_keeps_the_steps_before_the_error():
    a, b = FakeType("a"), FakeType("b")
    with pytest.raises(InvalidArgument) as raised:
        negotiate([offer(a)], [match(b), match(a, soft="x"), match(a, error="boom")], CTX)
    assert [s.verdict for s in raised.value.trace] == [TYPE_DIFFERS, SOFT_MISMATCH, ERROR]


def test_no_common_type_names_offered_and_accepted_types_and_traces_every_pair():
    a, b, c = FakeType("alpha"), FakeType("beta"), FakeType("gamma")
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate([offer(a), offer(b)], [match(c), match(b, soft="extents: too many")], CTX)
    message = str(raised.value)
    assert "[alpha, beta]" in message
    assert "[gamma, beta]" in message
    assert "extents: too many" in message
    assert pairs(raised.value.trace) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert raised.value.status == "FAILED_PRECONDITION"


def test_trace_lists_examined_pairs_exporter_first_stopping_at_the_match():
    a, b, c = FakeType("a"), FakeType("b"), FakeType("c")
    result = negotiate([offer(a), offer(b), offer(c)], [match(c), match(b), match(a, soft="no")], CTX)
    assert (result.offer_index, result.match_index) == (1, 1)
    assert pairs(result.trace) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert [s.verdict for s in result.trace] == [
        TYPE_DIFFERS,
        TYPE_DIFFERS,
        SOFT_MISMATCH,
        TYPE_DIFFERS,
        MATCHED,
    ]


def test_finish_is_called_once_for_the_matched_pair_and_gives_map_params():
    a = FakeType("a")
    result = negotiate([offer(a, "o1"), offer(a, "o2")], [match(a, "skip", soft="s"), match(a, "m2")], CTX)
    assert a.finished == [(FakeOffer("o1"), FakeMatch("m2"))]
    assert result.map_params == ("params", "a", "o1", "m2")


# --- properties over three fake types -------------------------------------------

TYPES = (FakeType("t0"), FakeType("t1"), FakeType("t2"))
# (type index, soft-mismatch flag); soft is the rarer case so most lists have matches.
entries = st.lists(st.tuples(st.integers(0, 2), st.sampled_from([False, False, True])), max_size=5)
PROPERTY = settings(database=None, max_examples=400)


def build(offer_entries, match_entries):
    offers = [offer(TYPES[t], f"o{i}", "soft" if s else "") for i, (t, s) in enumerate(offer_entries)]
    accept = [match(TYPES[t], f"m{j}", "soft" if s else "") for j, (t, s) in enumerate(match_entries)]
    return offers, accept


def compatible(o: Spec, m: Spec) -> bool:
    return o.type is m.type and not o.message.soft and not m.message.soft


def expected_pair(offers, accept):
    for i, o in enumerate(offers):
        for j, m in enumerate(accept):
            if compatible(o, m):
                return i, j
    return None


def outcome(offers, accept):
    try:
        return negotiate(offers, accept, CTX)
    except NoCommonMappingType as error:
        return error


@PROPERTY
@given(entries, entries)
def test_property_chosen_offer_is_the_first_with_any_compatible_match(offer_entries, match_entries):
    offers, accept = build(offer_entries, match_entries)
    result = outcome(offers, accept)
    expected = expected_pair(offers, accept)
    if expected is None:
        assert isinstance(result, NoCommonMappingType)
    else:
        assert (result.offer_index, result.match_index) == expected
        assert result.map_type is offers[expected[0]].type


@PROPERTY
@given(entries, entries, st.randoms(use_true_random=False))
def test_property_importer_order_never_changes_the_chosen_offer(offer_entries, match_entries, rnd):
    offers, accept = build(offer_entries, match_entries)
    shuffled = list(accept)
    rnd.shuffle(shuffled)
    before, after = outcome(offers, accept), outcome(offers, shuffled)
    assert type(before) is type(after)
    if not isinstance(before, NoCommonMappingType):
        assert before.offer_index == after.offer_index
        assert before.map_type is after.map_type


@PROPERTY
@given(entries, entries)
def test_property_trace_is_the_exporter_first_prefix_up_to_the_match(offer_entries, match_entries):
    offers, accept = build(offer_entries, match_entries)
    result = outcome(offers, accept)
    enumeration = [(i, j) for i in range(len(offers)) for j in range(len(accept))]
    expected = expected_pair(offers, accept)
    end = len(enumeration) if expected is None else enumeration.index(expected) + 1
    assert pairs(result.trace) == enumeration[:end]
    for step in result.trace:
        o, m = offers[step.offer_index], accept[step.match_index]
        if o.type is not m.type:
            assert step.verdict == TYPE_DIFFERS
        elif compatible(o, m):
            assert step.verdict == MATCHED
        else:
            assert (step.verdict, step.reason) == (SOFT_MISMATCH, "soft")


@PROPERTY
@given(entries, entries)
def test_property_no_match_raises_with_every_pair_traced(offer_entries, match_entries):
    offers, accept = build(offer_entries, match_entries)
    assume(expected_pair(offers, accept) is None)
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate(offers, accept, CTX)
    assert len(raised.value.trace) == len(offers) * len(accept)


# --- the real memfd and segments types ----------------------------------------------


def test_read_write_match_against_read_only_memfd_offer_is_an_access_soft_mismatch():
    offers = [Spec(MEMFD, pb.MemfdOffer(max_access=pb.ACCESS_READ))]
    accept = [Spec(MEMFD, pb.MemfdMatch(access=pb.ACCESS_READ_WRITE))]
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate(offers, accept, CTX)
    (step,) = raised.value.trace
    assert step.verdict == SOFT_MISMATCH
    assert step.reason.startswith("access")


def test_access_soft_mismatch_falls_through_to_the_next_offer():
    writable = pb.SegmentsOffer(max_access=pb.ACCESS_READ_WRITE)
    segments_offer = SEGMENTS.check_offer(writable, CTX.fd_sizes, CTX.buffer_size)
    offers = [
        Spec(MEMFD, pb.MemfdOffer(max_access=pb.ACCESS_READ)),
        Spec(SEGMENTS, segments_offer),
    ]
    accept = [
        Spec(MEMFD, pb.MemfdMatch(access=pb.ACCESS_READ_WRITE)),
        Spec(SEGMENTS, pb.SegmentsMatch(access=pb.ACCESS_READ_WRITE)),
    ]
    result = negotiate(offers, accept, CTX)
    assert result.map_type is SEGMENTS
    assert (result.offer_index, result.match_index) == (1, 1)
    assert [s.verdict for s in result.trace] == [SOFT_MISMATCH, TYPE_DIFFERS, TYPE_DIFFERS, MATCHED]
    assert result.trace[0].reason.startswith("access")
    assert result.map_params == (pb.ACCESS_READ_WRITE, segments_offer)


def test_read_write_match_against_a_read_only_exporter_fd_is_an_access_soft_mismatch():
    ctx = MatchContext(0, 0, 4096, (4096,), (False,))
    offers = [Spec(MEMFD, pb.MemfdOffer(max_access=pb.ACCESS_READ_WRITE))]  # the offer would allow read_write
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate(offers, [Spec(MEMFD, pb.MemfdMatch(access=pb.ACCESS_READ_WRITE))], ctx)
    assert raised.value.trace[0].reason.startswith("access")
    assert "the exporter's fd is read-only" in raised.value.trace[0].reason
    result = negotiate(offers, [Spec(MEMFD, pb.MemfdMatch(access=pb.ACCESS_READ))], ctx)
    assert result.map_params == pb.ACCESS_READ


# --- converters: tried only after every direct pair --------------------------------


class FakeConverter:
    """Converts offers of ``source`` into matches of ``target``; verdicts as FakeType's."""

    def __init__(self, source: FakeType, target: FakeType, copies: bool = False, soft: str = "") -> None:
        self.name = f"{source.name}->{target.name}" + ("-copy" if copies else "")
        self.source, self.target, self.copies, self.soft = source, target, copies, soft
        self.finished: list[tuple[FakeOffer, FakeMatch]] = []

    def match(self, offer: FakeOffer, match: FakeMatch, ctx: MatchContext):
        if match.error:
            raise InvalidArgument(match.error)
        if self.soft or offer.soft or match.soft:
            return SoftMismatch(self.soft or offer.soft or match.soft)
        return Matched()

    def finish(self, offer: FakeOffer, match: FakeMatch, ctx: MatchContext):
        self.finished.append((offer, match))
        return ("converted", self.name, offer.tag, match.tag)

    def map(self, backing, params):
        return MapResult(handle={}, fds=[])

    def unmap(self, backing, params):
        pass


def test_converter_is_tried_only_after_every_direct_pair_failed():
    a, b = FakeType("a"), FakeType("b")
    a_to_b = FakeConverter(a, b)
    # Offer 0 could be converted for match 0, but offer 1 matches directly: direct wins.
    result = negotiate([offer(a), offer(b)], [match(b)], CTX, converters=[a_to_b])
    assert (result.offer_index, result.converter) == (1, None)
    assert [s.converter for s in result.trace] == ["", ""]
    assert a_to_b.finished == []


def test_converted_match_names_the_converter_in_the_trace_and_the_negotiation():
    a, b = FakeType("a"), FakeType("b")
    a_to_b = FakeConverter(a, b)
    result = negotiate([offer(a, "o")], [match(b, "m")], CTX, converters=[a_to_b])
    assert result.map_type is b
    assert result.converter is a_to_b
    assert result.map_params == ("converted", "a->b", "o", "m")
    direct, converted = result.trace
    assert (direct.verdict, direct.converter) == (TYPE_DIFFERS, "")
    assert (converted.offer_type, converted.match_type, converted.verdict) == ("a", "b", MATCHED)
    assert converted.converter == "a->b"
    assert converted.reason == "a->b: converted from the exporter's a offer (zero-copy)"


def test_zero_copy_converters_are_tried_before_copying_ones_whatever_the_importer_order():
    a, b, c = FakeType("a"), FakeType("b"), FakeType("c")
    copy_to_b, zero_copy_to_c = FakeConverter(a, b, copies=True), FakeConverter(a, c)
    result = negotiate([offer(a)], [match(b), match(c)], CTX, converters=[copy_to_b, zero_copy_to_c])
    assert result.converter is zero_copy_to_c
    assert result.match_index == 1


def test_importer_order_ranks_zero_copy_conversions_of_the_same_offer():
    a, b, c = FakeType("a"), FakeType("b"), FakeType("c")
    to_b, to_c = FakeConverter(a, b), FakeConverter(a, c)
    result = negotiate([offer(a)], [match(c), match(b)], CTX, converters=[to_b, to_c])
    assert result.converter is to_c


def test_exporter_order_wins_among_conversions():
    a, b, c = FakeType("a"), FakeType("b"), FakeType("c")
    a_to_c, b_to_c = FakeConverter(a, c, copies=True), FakeConverter(b, c)
    result = negotiate([offer(a), offer(b)], [match(c)], CTX, converters=[b_to_c, a_to_c])
    assert result.converter is a_to_c  # offer 0's copy beats offer 1's zero-copy
    assert result.offer_index == 0


def test_converter_soft_mismatch_continues_with_its_name_in_the_reason():
    a, b = FakeType("a"), FakeType("b")
    refuses, accepts = FakeConverter(a, b, soft="udmabuf unavailable: no device"), FakeConverter(a, b, copies=True)
    result = negotiate([offer(a)], [match(b)], CTX, converters=[refuses, accepts])
    refused = result.trace[1]
    assert (refused.verdict, refused.converter) == (SOFT_MISMATCH, "a->b")
    assert refused.reason == "a->b: udmabuf unavailable: no device"
    assert result.converter is accepts
    assert result.trace[2].reason == "a->b-copy: converted from the exporter's a offer (a copy at each map)"


def test_converter_error_aborts_the_whole_negotiation():
    a, b = FakeType("a"), FakeType("b")
    with pytest.raises(InvalidArgument) as raised:
        negotiate([offer(a)], [match(b, error="bad"), match(b)], CTX, converters=[FakeConverter(a, b)])
    assert [(s.verdict, s.converter) for s in raised.value.trace] == [
        (TYPE_DIFFERS, ""),
        (TYPE_DIFFERS, ""),
        (ERROR, "a->b"),
    ]


def test_restricted_offer_stays_restricted_when_converted():
    a, b = FakeType("a"), FakeType("b")
    restricted = Spec(a, FakeOffer(), restricted_to=("uid:4242",))
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate([restricted], [match(b)], CTX, converters=[FakeConverter(a, b)])
    step = raised.value.trace[-1]
    assert (step.verdict, step.converter) == (SOFT_MISMATCH, "a->b")
    assert "restricted" in step.reason


def test_no_common_type_lists_converter_refusals_by_converter_name():
    a, b = FakeType("a"), FakeType("b")
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate([offer(a)], [match(b)], CTX, converters=[FakeConverter(a, b, soft="needs a copy")])
    assert "a->b: needs a copy" in str(raised.value)


def test_converters_for_other_types_are_not_tried():
    a, b, c = FakeType("a"), FakeType("b"), FakeType("c")
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate([offer(a)], [match(b)], CTX, converters=[FakeConverter(c, b), FakeConverter(a, c)])
    assert [s.verdict for s in raised.value.trace] == [TYPE_DIFFERS]


def test_a_restricted_offer_is_open_to_a_supplementary_group_of_the_importer():
    a = FakeType("a")
    restricted = Spec(a, FakeOffer(), restricted_to=("gid:44",))
    with pytest.raises(NoCommonMappingType):
        negotiate([restricted], [match(a)], CTX)
    in_group = replace(CTX, importer_groups=(7, 44))
    assert negotiate([restricted], [match(a)], in_group).map_type is a
