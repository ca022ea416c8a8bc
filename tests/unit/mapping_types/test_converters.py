"""The built-in converters (broker/mapping_types/converters.py) on real memfds.

negotiate()'s converter rules are in test_negotiate.py with fake types;
these check what each real converter accepts, refuses (and why), and what
its map hands out.
"""

from __future__ import annotations

import fcntl
import mmap
import os

import pytest

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing, BufferFd
from bufbroker_broker.core.errors import NoCommonMappingType
from bufbroker_broker.core.host_facts import HostFacts, UdmabufFacts
from bufbroker_broker.core.mapping_type import MatchContext, Matched, SoftMismatch
from bufbroker_broker.core.negotiate import MATCHED, SOFT_MISMATCH, TYPE_DIFFERS, Spec, negotiate
from bufbroker_broker.mapping_types.converters import (
    CONVERTERS,
    MEMFD_TO_UDMABUF,
    SEGMENTS_TO_MEMFD,
    SEGMENTS_TO_MEMFD_COPY,
    SEGMENTS_TO_UDMABUF,
)
from bufbroker_broker.mapping_types.memfd import MEMFD
from bufbroker_broker.mapping_types.segments import SEGMENTS
from bufbroker_broker.mapping_types.udmabuf import UDMABUF

PAGE = mmap.PAGESIZE
READ, READ_WRITE = pb.ACCESS_READ, pb.ACCESS_READ_WRITE
# A host as the probe reports one without /dev/udmabuf (host/udmabuf.py); the
# kernel lane converts to real udmabufs.
NO_UDMABUF = HostFacts(udmabuf=UdmabufFacts(False, "/dev/udmabuf does not exist (the kernel needs CONFIG_UDMABUF)"))


def ctx(fd_sizes=(2 * PAGE,), size=None, writable=None, dry_run=False) -> MatchContext:
    writable = writable or (True,) * len(fd_sizes)
    size = fd_sizes[0] if size is None else size
    return MatchContext(0, 0, size, tuple(fd_sizes), tuple(writable), host=NO_UDMABUF, dry_run=dry_run)


def segments(*extents: tuple[int, int, int], access=pb.ACCESS_UNSPECIFIED) -> pb.SegmentsOffer:
    return pb.SegmentsOffer(
        extents=[pb.Extent(fd_index=i, offset=o, length=n) for i, o, n in extents], max_access=access
    )


def reason(result) -> str:
    assert isinstance(result, SoftMismatch), result
    return result.reason


def test_converters_are_ordered_zero_copy_first_and_name_source_and_target():
    assert [c.name for c in CONVERTERS] == [
        "memfd->udmabuf",
        "segments->udmabuf",
        "segments->memfd",
        "segments->memfd-copy",
    ]
    assert [c.copies for c in CONVERTERS] == [False, False, False, True]
    assert (MEMFD_TO_UDMABUF.source, MEMFD_TO_UDMABUF.target) == (MEMFD, UDMABUF)
    assert (SEGMENTS_TO_UDMABUF.source, SEGMENTS_TO_UDMABUF.target) == (SEGMENTS, UDMABUF)


# --- segments -> memfd, zero-copy ------------------------------------------------------


def test_one_extent_covering_a_whole_memfd_converts_without_a_copy():
    writable = segments((0, 0, 2 * PAGE), access=READ_WRITE)
    assert SEGMENTS_TO_MEMFD.match(writable, pb.MemfdMatch(access=READ_WRITE), ctx()) == Matched()


def test_the_tail_of_the_last_page_counts_as_covered():
    # An mmap of the extent shows the rest of its last page anyway.
    assert SEGMENTS_TO_MEMFD.match(segments((0, 0, 1000)), pb.MemfdMatch(), ctx((PAGE,), size=1000)) == Matched()


def test_part_of_a_memfd_needs_a_copy():
    result = SEGMENTS_TO_MEMFD.match(segments((0, PAGE, PAGE)), pb.MemfdMatch(), ctx())
    assert f"not all of its {2 * PAGE} bytes, so a memfd of it needs a copy" in reason(result)


def test_a_dry_run_without_a_buffer_cannot_tell_whether_one_extent_is_a_whole_memfd():
    dry = ctx((0,), size=0, dry_run=True)
    assert SEGMENTS_TO_MEMFD.match(segments((0, PAGE, PAGE)), pb.MemfdMatch(), dry) == Matched()
    # The same sizes without the flag are a real (empty) memfd: the rule applies.
    assert "needs a copy" in reason(SEGMENTS_TO_MEMFD.match(segments((0, PAGE, PAGE)), pb.MemfdMatch(), ctx((0,), 0)))


def test_several_extents_need_a_copy():
    result = SEGMENTS_TO_MEMFD.match(segments((0, 0, PAGE), (0, PAGE, PAGE)), pb.MemfdMatch(), ctx())
    assert reason(result).startswith("2 extents are not one whole memfd")


def test_zero_copy_conversion_keeps_the_offers_access_limit():
    result = SEGMENTS_TO_MEMFD.match(segments((0, 0, 2 * PAGE), access=READ), pb.MemfdMatch(access=READ_WRITE), ctx())
    assert reason(result).startswith("access:")


def test_zero_copy_conversion_of_a_default_offer_is_read_only_and_says_how_to_allow_writes():
    whole = segments((0, 0, 2 * PAGE))
    result = SEGMENTS_TO_MEMFD.match(whole, pb.MemfdMatch(access=READ_WRITE), ctx())
    assert "the exporter offers segments read-only (the default)" in reason(result)
    assert "allow_write=True or Segments(access='read_write')" in reason(result)
    assert SEGMENTS_TO_MEMFD.match(whole, pb.MemfdMatch(access=READ), ctx()) == Matched()


def test_udmabuf_conversion_of_a_default_memfd_offer_names_the_exporters_type():
    available = HostFacts(udmabuf=UdmabufFacts(True, "usable", device="/dev/null"))
    context = MatchContext(0, 0, 2 * PAGE, (2 * PAGE,), (True,), host=available)
    result = MEMFD_TO_UDMABUF.match(pb.MemfdOffer(), pb.UdmabufMatch(access=READ), context)
    assert "the exporter offers memfd read-only (the default)" in reason(result)
    assert "allow_write=True or Memfd(access='read_write')" in reason(result)
    writable = pb.MemfdOffer(max_access=READ_WRITE)
    assert MEMFD_TO_UDMABUF.match(writable, pb.UdmabufMatch(access=READ), context) == Matched()


# --- segments -> memfd by copy ----------------------------------------------------------


def test_copy_is_refused_for_a_read_write_importer():
    result = SEGMENTS_TO_MEMFD_COPY.match(
        segments((0, 0, 10), (0, PAGE, 10)), pb.MemfdMatch(access=READ_WRITE, allow_copy=True), ctx()
    )
    assert reason(result).startswith("a copy is only for read importers")


def test_copy_is_refused_unless_the_importer_allows_it():
    result = SEGMENTS_TO_MEMFD_COPY.match(segments((0, 0, 10)), pb.MemfdMatch(access=READ), ctx())
    assert "the importer did not allow one (bufbroker.Memfd(allow_copy=True))" in reason(result)


def test_copy_is_allowed_for_a_read_importer_that_asks():
    match = pb.MemfdMatch(access=READ, allow_copy=True)
    assert SEGMENTS_TO_MEMFD_COPY.match(segments((0, 0, 10)), match, ctx()) == Matched()


# --- negotiation with the real types ----------------------------------------------------


def negotiate_real(offers: list, accept: list, context: MatchContext):
    offer_specs = [Spec(t, t.check_offer(m, context.fd_sizes, context.buffer_size)) for t, m in offers]
    accept_specs = [Spec(t, t.check_match(m)) for t, m in accept]
    return negotiate(offer_specs, accept_specs, context, CONVERTERS)


def test_split_segments_reach_a_read_importer_as_a_copy_after_every_zero_copy_way_failed():
    result = negotiate_real(
        [(SEGMENTS, segments((0, 0, PAGE), (0, 2 * PAGE, 10)))],
        [(UDMABUF, pb.UdmabufMatch()), (MEMFD, pb.MemfdMatch(allow_copy=True))],
        ctx((3 * PAGE,)),
    )
    assert result.map_type is MEMFD and result.converter is SEGMENTS_TO_MEMFD_COPY
    steps = [(s.verdict, s.converter, s.reason.split(":")[1].strip() if s.converter else "") for s in result.trace]
    assert steps == [
        (TYPE_DIFFERS, "", ""),
        (TYPE_DIFFERS, "", ""),
        (SOFT_MISMATCH, "segments->udmabuf", "udmabuf unavailable"),
        (SOFT_MISMATCH, "segments->memfd", "2 extents are not one whole memfd, so a memfd of them needs a copy"),
        (MATCHED, "segments->memfd-copy", "converted from the exporter's segments offer (a copy at each map)"),
    ]


def test_memfd_offer_for_a_udmabuf_importer_falls_through_with_udmabuf_unavailable():
    with pytest.raises(NoCommonMappingType) as raised:
        negotiate_real([(MEMFD, pb.MemfdOffer())], [(UDMABUF, pb.UdmabufMatch())], ctx())
    last = raised.value.trace[-1]
    assert (last.converter, last.verdict) == ("memfd->udmabuf", SOFT_MISMATCH)
    assert last.reason.startswith("memfd->udmabuf: udmabuf unavailable: /dev/udmabuf does not exist")


def test_a_direct_offer_later_in_the_list_beats_any_conversion():
    result = negotiate_real(
        [(SEGMENTS, segments((0, 0, 2 * PAGE))), (MEMFD, pb.MemfdOffer())], [(MEMFD, pb.MemfdMatch())], ctx()
    )
    assert result.converter is None and result.offer_index == 1


# --- maps on real memfds -----------------------------------------------------------------


@pytest.fixture
def pool():
    """A 3-page writable memfd buffer; page n is filled with the letter 'a'+n."""
    fd = os.memfd_create("test-converters", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, 3 * PAGE)
    for n in range(3):
        os.pwrite(fd, bytes([ord("a") + n]) * PAGE, n * PAGE)
    yield Backing(buffer_id=4, name="", size=3 * PAGE, fds=[BufferFd(fd, 3 * PAGE, True)])
    os.close(fd)


def attached(backing: Backing, converter, offer: pb.SegmentsOffer, match: pb.MemfdMatch):
    """The map parameters of an attachment the converter produced (after checking it matches)."""
    context = ctx(tuple(f.size for f in backing.fds))
    assert converter.match(offer, match, context) == Matched()
    return converter.finish(offer, match, context)


def test_zero_copy_map_sends_the_memfd_itself_read_only_for_a_read_importer(pool):
    params = attached(pool, SEGMENTS_TO_MEMFD, segments((0, 0, 3 * PAGE)), pb.MemfdMatch(access=READ))
    result = SEGMENTS_TO_MEMFD.map(pool, params)
    (fd,) = result.fds
    try:
        assert result.temporary == [fd]
        assert os.fstat(fd).st_ino == os.fstat(pool.fds[0].fd).st_ino  # the same pages
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert result.handle == pb.MemfdHandle(size=3 * PAGE, access=READ)
    finally:
        os.close(fd)


def test_copy_map_sends_a_sealed_read_only_snapshot_of_the_extents_in_order(pool):
    offer = segments((0, 2 * PAGE, 3), (0, 0, 2))
    params = attached(pool, SEGMENTS_TO_MEMFD_COPY, offer, pb.MemfdMatch(access=READ, allow_copy=True))
    result = SEGMENTS_TO_MEMFD_COPY.map(pool, params)
    (fd,) = result.fds
    try:
        assert result.temporary == [fd]
        assert result.handle == pb.MemfdHandle(size=5, access=READ)
        assert os.pread(fd, 16, 0) == b"cccaa"
        assert os.fstat(fd).st_ino != os.fstat(pool.fds[0].fd).st_ino  # a copy
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        os.pwrite(pool.fds[0].fd, b"zz", 0)
        assert os.pread(fd, 16, 0) == b"cccaa"  # a snapshot: a new map copies again
    finally:
        os.close(fd)
