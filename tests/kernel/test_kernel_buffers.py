"""Real kernel dma-bufs through a real broker: udmabuf, dma-heap dmabuf, p2p.

Marked ``kernel``: they run in the VM lane (tests/kernel/run_lane.py, driven
by test_lane.py), whose kernel has /dev/udmabuf and /dev/dma_heap/system,
and are skipped elsewhere. A udmabuf is always mappable writable and a
dma-buf cannot be reopened read-only, so the exports here allow writes
(``allow_write=True``; the default offers read only and would match none of
these importers: tests/integration/test_default_access.py and
tests/unit/mapping_types). Python under TCG is slow, so each test covers
several rules with one broker; the broker fixture checks at teardown that
its fd count is back at its baseline and its ledger holds nothing.
"""

from __future__ import annotations

import mmap
import os
import re

import pytest

import bufbroker
from bufbroker import dmabuf
from bufbroker.buffers import make_memfd
from tests.unit.host.test_pci import GPU, NIC, REMOTE, build_sysfs

pytestmark = pytest.mark.kernel

PAGE = mmap.PAGESIZE


def exp_name(fd: int) -> str:
    return dmabuf.fdinfo(fd).get("exp_name", "")


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def test_udmabuf_importer_reads_what_the_exporter_writes_through_its_memfd(udmabuf, broker):
    size = 3 * PAGE + 100  # not whole pages: the SDK's memfd is, so the udmabuf can be
    with broker.connect() as exp, broker.connect() as imp:
        exported = exp.export(size, name="cam", offers=["udmabuf", "memfd"], allow_write=True)
        exported.memoryview()[:10] = b"frame-0001"

        # A separate importer process: negotiates udmabuf, gets a real dma-buf.
        result = broker.run("importer", "cam", "--accept", "udmabuf,memfd")
        assert result["map_type"] == "udmabuf", result
        assert result["exp_names"] == ["udmabuf"]
        assert (result["length"], result["head"][:10]) == (size, "frame-0001")
        assert [s["verdict"] for s in result["trace"]] == ["matched"]

        # In this process: writes through the exporter's memfd show through the dma-buf's mmap.
        attachment = imp.attach("cam", accept=["udmabuf", "memfd"])
        with attachment.map() as mapping:
            (fd,) = mapping.fds
            assert exp_name(fd) == "udmabuf"
            assert int(dmabuf.fdinfo(fd)["size"]) == 4 * PAGE
            exported.memoryview()[PAGE : PAGE + 5] = b"later"
            with mapping.cpu_access() as view:
                assert len(view) == size
                assert bytes(view[PAGE : PAGE + 5]) == b"later"
            with attachment.map() as again:  # one udmabuf per buffer, kept across maps
                assert inode(again.fds[0]) == inode(fd)
            assert exp.stats().fds_held == 2  # the memfd and its one udmabuf
        attachment.detach()
        exported.revoke()  # closes the memfd and the udmabuf
        assert exp.stats().fds_held == 0

        # Without allow_write the offer is read-only (the default), and a udmabuf is always writable.
        exp.export(size, name="cam-read-only", offers=["udmabuf", "memfd"])
        fallback = imp.attach("cam-read-only", accept=["udmabuf", "memfd"])
        assert fallback.map_type == "memfd"
        assert "read-only (the default)" in fallback.trace[0].reason and "allow_write=True" in fallback.trace[0].reason
        fallback.detach()


def test_several_extents_become_one_udmabuf_with_create_list(udmabuf, broker):
    with broker.connect() as exp, broker.connect() as imp:
        luma, chroma = make_memfd("luma", 2 * PAGE), make_memfd("chroma", PAGE)
        os.pwrite(luma, b"Y" * 2 * PAGE, 0)
        os.pwrite(chroma, b"U" * PAGE, 0)
        planes = bufbroker.Udmabuf(extents=[bufbroker.Extent(0, 2 * PAGE, 0), bufbroker.Extent(0, PAGE, 1)])
        exported = exp.export(fd=[luma, chroma], offers=[planes], allow_write=True)
        os.close(luma)
        os.close(chroma)
        attachment = imp.attach(exported.id, accept=["udmabuf"])
        with attachment.map() as mapping:
            assert exp_name(mapping.fds[0]) == "udmabuf"
            with mapping.cpu_access() as view:
                assert bytes(view) == b"Y" * 2 * PAGE + b"U" * PAGE

        # The same through a converter: a pool's segments, for an importer that takes only udmabuf.
        pool = exp.export(
            3 * PAGE,
            offers=[
                bufbroker.Segments(
                    extents=[
                        bufbroker.Extent(2 * PAGE, PAGE),
                        bufbroker.Extent(0, PAGE),
                    ]
                )
            ],
            allow_write=True,
        )
        view = pool.memoryview()
        view[:3], view[2 * PAGE : 2 * PAGE + 3] = b"one", b"two"
        view.release()
        converted = imp.attach(pool.id, accept=["udmabuf"])
        assert converted.map_type == "udmabuf"
        assert converted.trace[-1].converter == "segments->udmabuf" and converted.trace[-1].verdict == "matched"
        with converted.map() as mapping, mapping.cpu_access() as data:
            assert bytes(data[:3]) == b"two" and bytes(data[PAGE : PAGE + 3]) == b"one"
        converted.detach()
        attachment.detach()


def test_a_move_and_a_revoke_close_the_udmabuf_of_the_old_backing(udmabuf, broker):
    with broker.connect() as exp, broker.connect() as imp:
        exported = exp.export(PAGE, offers=["memfd"], allow_write=True)
        attachment = imp.attach(exported.id, accept=["udmabuf"], map=True)
        assert attachment.trace[-1].converter == "memfd->udmabuf"
        first = inode(attachment.mapping.fds[0])
        assert exp.stats().fds_held == 2
        exported.move(2 * PAGE)  # the SDK unmaps, then maps the new backing
        exported.memoryview()[PAGE : PAGE + 4] = b"next"
        mapping = attachment.wait_mapped(10)
        assert inode(mapping.fds[0]) != first and exp_name(mapping.fds[0]) == "udmabuf"
        with mapping.cpu_access() as view:
            assert len(view) == 2 * PAGE and bytes(view[PAGE : PAGE + 4]) == b"next"
        assert exp.stats().fds_held == 2  # the old memfd and udmabuf are closed
        exported.revoke()
        assert exp.stats().fds_held == 0
        attachment.detach()


def test_dma_heap_exporter_is_imported_with_sync_and_p2p_is_decided_by_the_topology(
    broker_factory, system_heap, tmp_path
):
    broker = broker_factory("--sysfs-root", build_sysfs(tmp_path / "sys"))
    with broker.connect() as exp, broker.connect() as imp:
        fd = dmabuf.heap_alloc(2 * PAGE, system_heap)
        offers = [bufbroker.Dmabuf(device=GPU, requires_p2p=True), "dmabuf"]
        exported = exp.export(fd=fd, name="vram", offers=offers, allow_write=True)
        os.close(fd)  # the SDK keeps a copy
        with exported.cpu_access(write=True) as view:
            view[:9] = b"from-heap"

        # A CPU importer process: the p2p offer is refused, the plain one matches.
        result = broker.run("importer", "vram", "--accept", "dmabuf")
        assert result["map_type"] == "dmabuf" and result["exp_names"] == ["system"]
        assert result["head"].startswith("from-heap")
        refused, matched = result["trace"]
        assert refused["verdict"] == "soft-mismatch" and "the importer names no device" in refused["reason"]
        assert (matched["offer_index"], matched["verdict"]) == (1, "matched")

        # A device under the same switch takes the p2p offer.
        peer = imp.attach("vram", accept=[bufbroker.Dmabuf(device=NIC, accepts_p2p=True)])
        assert [s.verdict for s in peer.trace] == ["matched"]
        with peer.map() as mapping:
            assert mapping.handle.dmabuf.p2p and mapping.handle.dmabuf.exporter_device == GPU
            with mapping.cpu_access() as view:
                assert bytes(view[:9]) == b"from-heap"
        peer.detach()

        # A device under another host bridge cannot: it falls through to the plain offer.
        remote = imp.attach("vram", accept=[bufbroker.Dmabuf(device=REMOTE, accepts_p2p=True)])
        assert "different host bridges" in remote.trace[0].reason
        assert remote.trace[-1].offer_index == 1
        remote.detach()


def test_doctor_finds_udmabuf_and_the_system_heap(udmabuf, system_heap):
    from bufbroker_broker.cli.doctor import doctor_report

    lines, status = doctor_report()
    text = "\n".join(lines)
    print(text)  # the lane's log shows what doctor says in the guest
    assert re.search(r"^  ok +udmabuf +/dev/udmabuf \(buffers up to \d+ MiB", text, re.M), text
    assert re.search(r"^  ok +dma-heaps +system in /dev/dma_heap", text, re.M), text
    assert re.search(r"^  udmabuf +yes", text, re.M), text
    assert status == 0, text
