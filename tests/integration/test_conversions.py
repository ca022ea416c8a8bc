"""Kernel buffer types and converters through a real broker on this host.

This host has no /dev/udmabuf: udmabuf falls through with its reason. The
kernel lane (tests/kernel/) runs the same broker where udmabuf and
dma-heaps exist.
"""

from __future__ import annotations

import fcntl
import mmap
import os

import pytest

import bufbroker

PAGE = mmap.PAGESIZE
NO_UDMABUF = pytest.mark.skipif(
    os.path.exists("/dev/udmabuf"), reason="this host has /dev/udmabuf: the kernel lane covers it"
)


def steps(trace) -> list[tuple]:
    return [(s.offer_index, s.match_index, s.verdict, s.converter) for s in trace]


@NO_UDMABUF
def test_udmabuf_importer_falls_through_to_memfd_with_udmabuf_unavailable(broker):
    broker.exporter("--name", "cam", "--size", str(3 * PAGE), "--offers", "udmabuf,memfd", "--fill", "frame|")
    result = broker.run("importer", "cam", "--accept", "udmabuf,memfd")
    assert result["map_type"] == "memfd"
    assert result["head"].startswith("frame|frame|")
    first, *_ = result["trace"]
    assert (first["offer_type"], first["match_type"], first["verdict"]) == ("udmabuf", "udmabuf", "soft-mismatch")
    assert first["reason"].startswith("udmabuf unavailable: /dev/udmabuf does not exist")
    assert result["trace"][-1]["verdict"] == "matched" and result["trace"][-1]["offer_type"] == "memfd"


@NO_UDMABUF
def test_udmabuf_only_importer_gets_no_common_type_naming_why(broker):
    broker.exporter("--name", "cam", "--offers", "udmabuf,memfd")
    result = broker.run("importer", "cam", "--accept", "udmabuf")
    assert result["error"] == "NoCommonMappingType"
    assert "udmabuf: udmabuf unavailable" in result["message"]
    assert "memfd->udmabuf: udmabuf unavailable" in result["message"]  # the converter was tried too


def test_host_capabilities_are_logged_at_start(broker):
    line = next(line for line in broker.log().splitlines() if "host capabilities:" in line)
    assert "memfd sealing: yes" in line
    expected = "udmabuf: yes" if os.path.exists("/dev/udmabuf") else "udmabuf: no"
    assert expected in line


def test_whole_memfd_segments_reach_a_memfd_importer_without_a_copy(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exported = exp.export(2 * PAGE, offers=["segments"])
        attachment = imp.attach(exported.id, accept=["memfd"])
        assert attachment.map_type == "memfd"
        assert steps(attachment.trace) == [(0, 0, "type-differs", ""), (0, 0, "matched", "segments->memfd")]
        assert "zero-copy" in attachment.trace[-1].reason
        with attachment.map() as mapping:
            assert os.fstat(mapping.fds[0]).st_ino == os.fstat(exported.fd).st_ino  # the exporter's pages
            exported.memoryview()[:5] = b"live!"
            assert bytes(mapping.memoryview()[:5]) == b"live!"
        attachment.detach()


def test_split_segments_reach_a_read_importer_that_allows_it_as_a_sealed_copy(broker):
    with broker.connect() as exp, broker.connect() as imp:
        pool = exp.export(
            3 * PAGE,
            offers=[
                bufbroker.Segments(
                    extents=[
                        bufbroker.Extent(2 * PAGE, 4),
                        bufbroker.Extent(0, 3),
                    ]
                )
            ],
        )
        view = pool.memoryview()
        view[:3], view[2 * PAGE : 2 * PAGE + 4] = b"abc", b"WXYZ"
        attachment = imp.attach(pool.id, accept=[bufbroker.Memfd(allow_copy=True)])
        assert attachment.map_type == "memfd"
        assert [s.converter for s in attachment.trace][-2:] == ["segments->memfd", "segments->memfd-copy"]
        assert attachment.trace[-1].reason.endswith("(a copy at each map)")
        with attachment.map() as mapping:
            assert bytes(mapping.memoryview()) == b"WXYZabc"
            assert fcntl.fcntl(mapping.fds[0], fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
            view[:3] = b"xyz"
            assert bytes(mapping.memoryview()) == b"WXYZabc"  # a snapshot
        with attachment.map() as mapping:
            assert bytes(mapping.memoryview()) == b"WXYZxyz"  # each map copies again
        view.release()
        attachment.detach()


def test_a_copy_is_refused_for_a_read_write_importer(broker):
    with broker.connect() as exp, broker.connect() as imp:
        pool = exp.export(
            2 * PAGE, offers=[bufbroker.Segments(extents=[bufbroker.Extent(0, 10), bufbroker.Extent(PAGE, 10)])]
        )
        with pytest.raises(bufbroker.NoCommonMappingType) as raised:
            imp.attach(pool.id, accept=[bufbroker.Memfd(allow_copy=True)], access="read_write")
        copy_step = raised.value.trace[-1]
        assert (copy_step.converter, copy_step.verdict) == ("segments->memfd-copy", "soft-mismatch")
        assert copy_step.reason.startswith("segments->memfd-copy: a copy is only for read importers")
        assert imp.stats().attachments == 0


def test_a_copy_is_refused_for_a_read_importer_that_did_not_allow_it(broker):
    with broker.connect() as exp, broker.connect() as imp:
        pool = exp.export(
            2 * PAGE, offers=[bufbroker.Segments(extents=[bufbroker.Extent(0, 10), bufbroker.Extent(PAGE, 10)])]
        )
        with pytest.raises(bufbroker.NoCommonMappingType, match=r"bufbroker.Memfd\(allow_copy=True\)"):
            imp.attach(pool.id, accept=["memfd"])


def test_a_converted_attachment_follows_a_move(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exported = exp.export(PAGE, offers=["segments"])
        attachment = imp.attach(exported.id, accept=["memfd"], map=True)
        exported.move(2 * PAGE)
        exported.memoryview()[2 * PAGE - 4 :] = b"tail"
        mapping = attachment.wait_mapped(5)
        assert mapping.size == 2 * PAGE and bytes(mapping.memoryview()[-4:]) == b"tail"
        assert attachment.moves == 1
        attachment.detach()


def test_registering_a_memfd_with_dmabuf_offers_is_refused_without_leaking_it(broker):
    baseline = broker.fd_count()
    with broker.connect() as exp:
        with pytest.raises(bufbroker.InvalidArgument, match="is a memfd, not a dma-buf"):
            exp.export(PAGE, offers=["dmabuf"])
        with pytest.raises(bufbroker.InvalidArgument, match="different kinds of fd"):
            exp.export(PAGE, offers=["dmabuf", "memfd"])
    assert broker.wait_for_fds(baseline) == baseline
