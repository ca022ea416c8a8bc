"""The mapping-type registry, the wire helpers, and the built-in types' rules."""

from __future__ import annotations

import fcntl
import os

import pytest

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing, BufferFd
from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.mapping_type import MappingType, MatchContext, Matched, SoftMismatch, check_mapping_type
from bufbroker_broker.mapping_types import (
    MAPPING_TYPES,
    accept_from_wire,
    load_mapping_types,
    offers_from_wire,
    register_mapping_type,
)
from bufbroker_broker.mapping_types.memfd import MEMFD
from bufbroker_broker.mapping_types.segments import MAX_EXTENTS, SEGMENTS

SIZE = 4096


@pytest.fixture
def registry():
    """The global registry with the built-ins loaded, restored afterwards."""
    saved = dict(MAPPING_TYPES)
    load_mapping_types()
    yield MAPPING_TYPES
    MAPPING_TYPES.clear()
    MAPPING_TYPES.update(saved)


def make_type(name: str, without: str = ""):
    """An instance of a fresh mapping-type class, minus the member ``without``."""
    members = {
        "name": name,
        "description": f"test type {name}",
        "offer_message": pb.MemfdOffer,
        "match_message": pb.MemfdMatch,
        "handle_message": pb.MemfdHandle,
        "check_offer": lambda self, offer, fd_sizes, size: offer,
        "check_match": lambda self, match: match,
        "match": lambda self, offer, match, ctx: Matched(),
        "finish": lambda self, offer, match, ctx: None,
        "map": lambda self, backing, params: None,
        "unmap": lambda self, backing, params: None,
        "describe": lambda self: "test type",
    }
    members.pop(without, None)
    return type(f"Type_{name}", (), members)()


# --- registry ---------------------------------------------------------------------


def test_register_refuses_a_type_without_unmap_naming_the_missing_member(registry):
    with pytest.raises(TypeError, match=r"'half'.*lacks unmap"):
        register_mapping_type(make_type("half", without="unmap"))
    assert "half" not in registry


def test_register_refuses_a_type_without_a_message_class_naming_it(registry):
    with pytest.raises(TypeError, match="lacks handle_message"):
        register_mapping_type(make_type("nohandle", without="handle_message"))


def test_register_refuses_a_second_type_with_an_existing_name(registry):
    with pytest.raises(TypeError, match="two mapping types are named 'memfd'"):
        register_mapping_type(make_type("memfd"))
    assert registry["memfd"] is MEMFD


def test_register_accepts_the_same_type_twice(registry):
    extra = make_type("extra")
    assert register_mapping_type(extra) is extra
    assert register_mapping_type(extra) is extra
    assert registry["extra"] is extra


@pytest.mark.parametrize("builtin", [MEMFD, SEGMENTS], ids=["memfd", "segments"])
def test_check_mapping_type_accepts_the_builtins(builtin):
    check_mapping_type(builtin)  # raises TypeError on an incomplete type
    assert isinstance(builtin, MappingType)


def test_load_mapping_types_registers_memfd_and_segments(registry):
    MAPPING_TYPES.clear()
    loaded = load_mapping_types()
    assert loaded["memfd"] is MEMFD
    assert loaded["segments"] is SEGMENTS


# --- wire helpers ----------------------------------------------------------------


def test_no_offers_is_the_compat_offer_memfd(registry):
    (spec,) = offers_from_wire([], (SIZE,), SIZE)
    assert spec.type is MEMFD
    assert spec.message == pb.MemfdOffer()


def test_empty_accept_list_is_a_compat_memfd_match_with_the_requested_access(registry):
    specs, compat = accept_from_wire([], pb.ACCESS_READ_WRITE)
    assert compat is True
    assert [s.type for s in specs] == [MEMFD]
    assert specs[0].message == pb.MemfdMatch(access=pb.ACCESS_READ_WRITE)


def test_named_accept_list_is_not_compat(registry):
    specs, compat = accept_from_wire([pb.Match(segments=pb.SegmentsMatch())], pb.ACCESS_READ)
    assert compat is False
    assert [s.type for s in specs] == [SEGMENTS]


def test_offer_with_no_arm_set_is_invalid(registry):
    with pytest.raises(InvalidArgument, match="offer 1 is empty"):
        offers_from_wire([pb.Offer(memfd=pb.MemfdOffer()), pb.Offer()], (SIZE,), SIZE)


def test_match_with_no_arm_set_is_invalid(registry):
    with pytest.raises(InvalidArgument, match="match 0 is empty"):
        accept_from_wire([pb.Match()], pb.ACCESS_READ)


def test_plugin_arm_naming_an_unknown_type_is_invalid(registry):
    wire = pb.Offer(plugin=pb.PluginSpec(type_name="nosuch"))
    with pytest.raises(InvalidArgument, match=r"unknown mapping type 'nosuch'.*memfd, segments"):
        offers_from_wire([wire], (SIZE,), SIZE)


def test_plugin_arm_with_a_body_of_the_wrong_message_is_invalid(registry):
    wire = pb.Match(plugin=pb.PluginSpec(type_name="segments"))
    wire.plugin.body.Pack(pb.MemfdMatch())
    with pytest.raises(InvalidArgument, match=r"expects 'bufbroker\.v1\.SegmentsMatch'"):
        accept_from_wire([wire], pb.ACCESS_READ)


# --- segments offers ------------------------------------------------------------


def extents(offer: pb.SegmentsOffer) -> list[tuple[int, int, int]]:
    return [(e.fd_index, e.offset, e.length) for e in offer.extents]


def test_segments_default_extents_cover_fd0_to_the_declared_size_and_other_fds_whole():
    offer = SEGMENTS.check_offer(pb.SegmentsOffer(), (8192, 3000, 100), 5000)
    assert extents(offer) == [(0, 0, 5000), (1, 0, 3000), (2, 0, 100)]


def test_segments_extent_past_the_end_of_its_fd_is_invalid():
    offer = pb.SegmentsOffer(extents=[pb.Extent(fd_index=0, offset=4000, length=200)])
    with pytest.raises(InvalidArgument, match=r"extent 0 ends at byte 4200, past the end of fd 0 \(4096 bytes\)"):
        SEGMENTS.check_offer(offer, (SIZE,), SIZE)


def test_segments_extent_naming_a_missing_fd_is_invalid():
    offer = pb.SegmentsOffer(extents=[pb.Extent(fd_index=0, length=1), pb.Extent(fd_index=2, length=1)])
    with pytest.raises(InvalidArgument, match=r"extent 1 names fd 2, but only 2 fd\(s\)"):
        SEGMENTS.check_offer(offer, (SIZE, SIZE), SIZE)


def test_segments_zero_length_extent_is_invalid():
    offer = pb.SegmentsOffer(extents=[pb.Extent(fd_index=0, offset=16, length=0)])
    with pytest.raises(InvalidArgument, match="extent 0 has length 0"):
        SEGMENTS.check_offer(offer, (SIZE,), SIZE)


def test_segments_more_than_max_extents_is_invalid():
    offer = pb.SegmentsOffer(extents=[pb.Extent(fd_index=0, length=1)] * (MAX_EXTENTS + 1))
    with pytest.raises(InvalidArgument, match=f"{MAX_EXTENTS + 1} extents; at most {MAX_EXTENTS}"):
        SEGMENTS.check_offer(offer, (SIZE,), SIZE)


def test_segments_valid_extents_are_kept_in_order():
    given = [pb.Extent(fd_index=1, offset=0, length=10), pb.Extent(fd_index=0, offset=4086, length=10)]
    offer = SEGMENTS.check_offer(pb.SegmentsOffer(extents=given), (SIZE, 10), SIZE)
    assert extents(offer) == [(1, 0, 10), (0, 4086, 10)]


def test_segments_match_with_fewer_max_extents_than_offered_is_an_extents_soft_mismatch():
    offer = pb.SegmentsOffer(extents=[pb.Extent(fd_index=0, offset=i * 16, length=16) for i in range(3)])
    ctx = MatchContext(0, 0, SIZE, (SIZE,), (True,))
    result = SEGMENTS.match(offer, pb.SegmentsMatch(max_extents=2), ctx)
    assert isinstance(result, SoftMismatch)
    assert result.reason.startswith("extents")
    assert SEGMENTS.match(offer, pb.SegmentsMatch(max_extents=3), ctx) == Matched()


# --- memfd map on a real memfd --------------------------------------------------------


@pytest.fixture
def memfd_buffer():
    fd = os.memfd_create("test-mapping-types", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, SIZE)
        yield Backing(buffer_id=2, name="", size=SIZE, fds=[BufferFd(fd, SIZE, True)])
    finally:
        os.close(fd)


def attach_memfd(backing: Backing, access: int):
    """The map parameters negotiation fixes for a memfd importer asking for ``access``."""
    ctx = MatchContext(0, 0, backing.size, tuple(f.size for f in backing.fds), (True,))
    return MEMFD.finish(pb.MemfdOffer(), pb.MemfdMatch(access=access), ctx)


def test_memfd_map_for_read_sends_a_new_read_only_fd_of_the_same_memfd(memfd_buffer):
    result = MEMFD.map(memfd_buffer, attach_memfd(memfd_buffer, pb.ACCESS_READ))
    try:
        (fd,) = result.fds
        assert result.temporary == [fd]
        assert fd != memfd_buffer.fds[0].fd
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert os.fstat(fd).st_ino == os.fstat(memfd_buffer.fds[0].fd).st_ino
        assert result.handle == pb.MemfdHandle(size=SIZE, access=pb.ACCESS_READ)
    finally:
        for fd in result.temporary:
            os.close(fd)


def test_memfd_map_for_read_write_sends_the_buffers_own_fd(memfd_buffer):
    result = MEMFD.map(memfd_buffer, attach_memfd(memfd_buffer, pb.ACCESS_READ_WRITE))
    assert result.fds == [memfd_buffer.fds[0].fd]
    assert result.temporary == []
    assert result.handle == pb.MemfdHandle(size=SIZE, access=pb.ACCESS_READ_WRITE)


def _reopen_as_nobody(fd: int, flags: int) -> str:
    """Try to reopen ``fd`` through /proc from a child running as uid 65534."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.close(os.open(f"/proc/self/fd/{fd}", flags))
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "opened", 1: "refused"}.get(os.waitstatus_to_exitcode(status), "error")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_memfd_read_attachment_cannot_gain_write_access_from_another_uid(memfd_buffer):
    from bufbroker_broker.host.fd_inspect import inspect_memfd

    inspect_memfd(memfd_buffer.fds[0].fd, 0)  # what registration does
    result = MEMFD.map(memfd_buffer, attach_memfd(memfd_buffer, pb.ACCESS_READ))
    try:
        (fd,) = result.fds
        assert _reopen_as_nobody(fd, os.O_RDWR) == "refused"
        assert _reopen_as_nobody(fd, os.O_RDONLY) == "opened"
    finally:
        for fd in result.temporary:
            os.close(fd)


# --- which kind of fd a registration needs -----------------------------------------------


def test_offers_say_which_kind_of_fd_the_buffer_needs(registry):
    from bufbroker_broker.mapping_types import offers_fd_kind

    assert offers_fd_kind([]) == "memfd"
    assert offers_fd_kind([pb.Offer(udmabuf=pb.UdmabufOffer()), pb.Offer(segments=pb.SegmentsOffer())]) == "memfd"
    assert offers_fd_kind([pb.Offer(dmabuf=pb.DmabufOffer())]) == "dmabuf"


def test_offers_needing_different_kinds_of_fd_are_invalid(registry):
    from bufbroker_broker.mapping_types import offers_fd_kind

    with pytest.raises(InvalidArgument, match="dmabuf take a dmabuf fd; memfd take a memfd fd"):
        offers_fd_kind([pb.Offer(memfd=pb.MemfdOffer()), pb.Offer(dmabuf=pb.DmabufOffer())])


def test_host_support_is_the_types_verdict_on_the_host_facts_or_yes_without_one(registry):
    from bufbroker_broker.core.host_facts import HostFacts, UdmabufFacts
    from bufbroker_broker.mapping_types import host_support

    missing = HostFacts(udmabuf=UdmabufFacts(False, "no device here"))
    assert host_support(registry["udmabuf"], missing) == (False, "no device here")
    assert host_support(registry["memfd"], missing) == (True, "")  # memfd has no host_support


def test_load_mapping_types_registers_udmabuf_and_dmabuf(registry):
    from bufbroker_broker.mapping_types.dmabuf import DMABUF
    from bufbroker_broker.mapping_types.udmabuf import UDMABUF

    assert registry["udmabuf"] is UDMABUF and registry["dmabuf"] is DMABUF
    for mapping_type in (UDMABUF, DMABUF):
        check_mapping_type(mapping_type)
