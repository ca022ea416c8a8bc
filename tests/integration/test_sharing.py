"""Buffers shared between real exporter and importer processes."""

from __future__ import annotations

import os

import pytest

import bufbroker


def test_importer_reads_what_the_exporter_wrote_through_the_passed_fd(broker):
    exporter, info = broker.exporter(
        "--name", "frames", "--size", "65536", "--offers", "segments,memfd", "--fill", "frame-0042|"
    )
    result = broker.run("importer", "frames", "--accept", "segments,memfd")
    assert result["map_type"] == "segments"
    assert result["length"] == 65536
    assert result["head"].startswith("frame-0042|frame-0042|")
    exporter.stdin.close()
    assert exporter.wait(10) == 0


def test_exporter_order_wins_over_importer_order(broker):
    broker.exporter("--name", "b", "--offers", "memfd,segments")
    result = broker.run("importer", "b", "--accept", "segments,memfd")
    assert result["map_type"] == "memfd"
    assert [(s["offer_index"], s["match_index"], s["verdict"]) for s in result["trace"]] == [
        (0, 0, "type-differs"),
        (0, 1, "matched"),
    ]


def test_read_importer_cannot_map_writable(broker):
    broker.exporter("--name", "ro", "--offers", "memfd,segments")
    for accept in ("memfd", "segments"):
        result = broker.run("importer", "ro", "--accept", accept, "--access", "read")
        assert result["fd_modes"] == ["r"]
        assert result["writable_mmap_refused"] == [True]


def test_read_write_importer_gets_a_writable_fd_and_the_exporter_sees_its_writes(broker):
    with broker.connect() as exp, broker.connect() as imp:
        buffer = exp.export(4096, offers=["memfd"], allow_write=True)
        attachment = imp.attach(buffer.id, accept=["memfd"], access="read_write")
        with attachment.map() as mapping:
            mapping.memoryview()[:6] = b"answer"
            assert bytes(buffer.memoryview()[:6]) == b"answer"
        attachment.detach()


def test_compat_importer_gets_memfd_and_pins_the_buffer(broker):
    broker.exporter("--name", "c", "--offers", "segments,memfd")
    result = broker.run("importer", "c")  # empty accept list
    assert result.get("map_type") == "memfd", result
    assert result["pinned"] is True
    assert result["head"].startswith("bufbroker")


def test_offer_restricted_to_read_falls_through_for_read_write_importer(broker):
    with broker.connect() as exp, broker.connect() as imp:
        buffer = exp.export(4096, offers=[bufbroker.Memfd(access="read"), "segments"], allow_write=True)
        attachment = imp.attach(buffer.id, accept=["memfd", "segments"], access="read_write")
        assert attachment.map_type == "segments"
        assert attachment.trace[0].verdict == "soft-mismatch"
        assert attachment.trace[0].reason.startswith("access")
        attachment.detach()


def test_no_common_type_lists_both_sides_and_creates_no_attachment(broker):
    broker.exporter("--name", "only-memfd", "--offers", "memfd")
    result = broker.run("importer", "only-memfd", "--accept", "segments")
    assert result["error"] == "NoCommonMappingType"
    assert "offers [memfd]" in result["message"] and "accepts [segments]" in result["message"]
    assert [s["verdict"] for s in result["trace"]] == ["type-differs"]
    assert broker.stats().attachments == 0


def test_unknown_buffer_is_not_found(broker):
    with broker.connect() as session:
        with pytest.raises(bufbroker.NotFound, match="no buffer named 'nope'"):
            session.attach("nope", accept=["memfd"])
        with pytest.raises(bufbroker.NotFound, match="with id 999999"):
            session.attach(999999)


def test_segments_carve_frames_from_one_pool_memfd(broker):
    page = os.sysconf("SC_PAGE_SIZE")
    with broker.connect() as exp, broker.connect() as imp:
        fd = os.memfd_create("pool", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 3 * page)
        os.pwrite(fd, b"A" * page + b"B" * page + b"C" * page, 0)
        extents = [bufbroker.Extent(offset=2 * page + 100, length=50), bufbroker.Extent(offset=page, length=page)]
        buffer = exp.export(fd=fd, offers=[bufbroker.Segments(extents=extents)])
        os.close(fd)
        attachment = imp.attach(buffer.id, accept=["segments"], map=True)
        mapping = attachment.mapping
        assert [(e.offset, e.length) for e in mapping.extents] == [(2 * page + 100, 50), (page, page)]
        first, second = mapping.views()
        assert bytes(first) == b"C" * 50 and bytes(second) == b"B" * page
        assert len(mapping.fds) == 1  # one pool memfd, sent once
        mapping.close()
        attachment.detach()


def test_segments_with_one_memfd_per_plane(broker):
    planes = []
    for fill, size in ((b"Y", 8192), (b"U", 4096)):
        fd = os.memfd_create("plane", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        os.pwrite(fd, fill * size, 0)
        planes.append(fd)
    with broker.connect() as exp, broker.connect() as imp:
        buffer = exp.export(
            fd=planes,
            offers=["segments"],
            layout={
                "fourcc": "NV12",
                "width": 64,
                "height": 64,
                "planes": [{"offset": 0, "stride": 64}, {"offset": 0, "stride": 64}],
            },
        )
        attachment = imp.attach(buffer.id, accept=["segments"])
        with attachment.map() as mapping:
            luma, chroma = mapping.views()
            assert bytes(luma) == b"Y" * 8192 and bytes(chroma) == b"U" * 4096
            assert len(mapping.fds) == 2
        info = imp.buffers()[0]
        assert info.layout.fourcc == "NV12" and len(info.layout.planes) == 2
        attachment.detach()
    for fd in planes:
        os.close(fd)


def test_numpy_view_reads_without_copy(broker):
    pytest.importorskip("numpy")
    with broker.connect() as exp, broker.connect() as imp:
        buffer = exp.export(4096, offers=["memfd"])
        buffer.memoryview()[:4] = bytes([1, 2, 3, 4])
        attachment = imp.attach(buffer.id, accept=["memfd"], map=True)
        array = attachment.mapping.numpy("uint8", (64, 64))
        assert array.shape == (64, 64) and list(array[0, :4]) == [1, 2, 3, 4]
        buffer.memoryview()[0] = 9  # a later write by the exporter is seen: no copy
        assert array[0, 0] == 9
        del array
        attachment.detach()


def test_attach_by_name_and_map_in_one_call(broker):
    with broker.connect() as exp, broker.connect() as imp:
        exp.export(4096, name="one-call", offers=["segments"])
        attachment = imp.attach("one-call", accept=["segments"], map=True)
        assert attachment.mapping is not None and attachment.mapping.size == 4096
        attachment.detach()


def test_ending_the_exporter_session_revokes_its_buffers_and_tells_importers(broker):
    import threading

    exporter, info = broker.exporter("--name", "short-lived", "--offers", "memfd")
    with broker.connect() as imp:
        revoked = threading.Event()
        seen = []

        def on_event(event):
            if event.HasField("revoked"):
                seen.append(event.revoked)
                revoked.set()

        imp.add_event_handler(on_event)
        attachment = imp.attach("short-lived", accept=["memfd"], map=True)
        view = attachment.mapping.memoryview()
        exporter.stdin.close()
        assert exporter.wait(10) == 0
        assert revoked.wait(5), "the importer was not told the buffer went away"
        assert seen[0].buffer_id == info["id"] and list(seen[0].attachment_ids) == [attachment.id]
        # The pages stay readable: revocation of CPU mappings is cooperative.
        assert bytes(view[:9]) == b"bufbroker"
        view.release()
        with pytest.raises(bufbroker.NotFound):
            imp.attach("short-lived", accept=["memfd"])
        attachment.detach()  # already gone at the broker: not an error


def test_revoked_buffer_refuses_attach_and_map(broker):
    with broker.connect() as exp, broker.connect() as imp:
        buffer = exp.export(4096, offers=["memfd"])
        attachment = imp.attach(buffer.id, accept=["memfd"])
        buffer.revoke("test")
        with pytest.raises(bufbroker.FailedPrecondition, match="buffer revoked"):
            attachment.map()
        with pytest.raises(bufbroker.FailedPrecondition, match="buffer revoked"):
            imp.attach(buffer.id, accept=["memfd"])
        assert exp.buffers()[0].fd_count == 0  # the broker closed its fds
        attachment.detach()
