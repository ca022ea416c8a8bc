"""bufbroker.planes: numpy views of a frame's planes through its layout."""

from __future__ import annotations

import numpy
import pytest

from bufbroker.buffers import layout_to_wire
from bufbroker.planes import layout_from_wire, packed_layout, plane_arrays, plane_shapes


def test_packed_i420_layout_puts_planes_back_to_back_with_half_stride_chroma():
    layout, size = packed_layout("I420", 480, 270, align=64)
    assert layout["planes"] == [
        {"offset": 0, "stride": 512},
        {"offset": 512 * 270, "stride": 256},
        {"offset": 512 * 270 + 256 * 135, "stride": 256},
    ]
    assert size == 512 * 270 + 2 * 256 * 135


def test_packed_nv12_layout_gives_interleaved_chroma_the_luma_stride():
    layout, size = packed_layout("NV12", 100, 50, align=32)
    assert layout["planes"] == [{"offset": 0, "stride": 128}, {"offset": 128 * 50, "stride": 128}]
    assert plane_shapes("NV12", 100, 50) == [(50, 100), (25, 100)]
    assert size == 128 * 75


def test_plane_arrays_follow_offsets_and_strides_without_copying():
    layout, size = packed_layout("I420", 64, 48, align=128)
    memory = bytearray(size)
    y, u, v = plane_arrays(memory, layout)
    assert (y.shape, u.shape, v.shape) == ((48, 64), (24, 32), (24, 32))
    v[1, 2] = 7
    assert memory[layout["planes"][2]["offset"] + 1 * 64 + 2] == 7  # chroma stride: 128 // 2
    assert numpy.shares_memory(y, numpy.frombuffer(memory, numpy.uint8))


def test_plane_arrays_over_a_read_only_buffer_are_read_only():
    layout, size = packed_layout("GREY", 16, 16)
    (grey,) = plane_arrays(memoryview(bytes(size)), layout)
    assert not grey.flags.writeable


def test_layout_that_overruns_the_buffer_is_refused_naming_the_plane():
    layout, size = packed_layout("I420", 64, 48)
    with pytest.raises(ValueError, match=r"I420 64x48 plane 2 ends at byte 4608 but the buffer has 4607"):
        plane_arrays(bytearray(size - 1), layout)


def test_stride_shorter_than_a_row_is_refused():
    layout = {"fourcc": "GREY", "width": 64, "height": 2, "planes": [{"offset": 0, "stride": 32}]}
    with pytest.raises(ValueError, match="stride 32 is shorter than a row"):
        plane_arrays(bytearray(256), layout)


def test_unknown_fourcc_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown fourcc 'RGB3'.*I420"):
        plane_shapes("RGB3", 8, 8)


def test_layout_survives_the_wire_both_ways():
    layout, _ = packed_layout("NV12", 640, 360, align=64)
    assert layout_from_wire(layout_to_wire(layout)) == layout
