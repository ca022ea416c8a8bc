"""Planes: numpy views of a frame's planes through its layout.

A buffer's layout (``export(..., layout=...)``, ``BufferInfo.layout``)
says where each plane starts and how many bytes a row takes. These
helpers turn it into one 2-D ``uint8`` array per plane over the mapped
bytes, without copying, and build packed layouts for exporters.

    layout = bufbroker.planes.layout_from_wire(session.buffers("cam")[0].layout)
    y, u, v = bufbroker.planes.plane_arrays(mapping.memoryview(), layout)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bufbroker.v1 import broker_pb2 as pb

# fourcc -> per plane (horizontal divisor, vertical divisor, bytes per sample):
# a plane of a W x H frame has ceil(H / v) rows of ceil(W / h) * bytes bytes.
FOURCCS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "I420": ((1, 1, 1), (2, 2, 1), (2, 2, 1)),  # Y, U, V
    "YV12": ((1, 1, 1), (2, 2, 1), (2, 2, 1)),  # Y, V, U
    "NV12": ((1, 1, 1), (2, 2, 2)),  # Y, interleaved UV
    "NV21": ((1, 1, 1), (2, 2, 2)),  # Y, interleaved VU
    "GREY": ((1, 1, 1),),
}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def plane_shapes(fourcc: str, width: int, height: int) -> list[tuple[int, int]]:
    """(rows, bytes per row) of each plane of a ``width`` x ``height`` frame."""
    try:
        planes = FOURCCS[fourcc]
    except KeyError:
        raise ValueError(f"unknown fourcc {fourcc!r}: bufbroker.planes knows {sorted(FOURCCS)}") from None
    return [(_ceil_div(height, v), _ceil_div(width, h) * size) for h, v, size in planes]


def packed_layout(fourcc: str, width: int, height: int, align: int = 1) -> tuple[dict[str, Any], int]:
    """A layout with planes back to back, and the bytes it needs.

    The luma stride is rounded up to ``align`` (a power of two, e.g. 64 for
    SIMD-friendly rows); chroma planes of I420/YV12 take half the luma
    stride and NV12/NV21 the whole one, which is how FFmpeg lays out a
    frame in one allocation (``av_image_fill_pointers``), so an encoder
    can wrap the buffer as it is.
    """
    if align < 1 or align & (align - 1):
        raise ValueError(f"align must be a power of two, not {align}")
    shapes = plane_shapes(fourcc, width, height)
    luma_stride = _ceil_div(shapes[0][1], align) * align
    planes: list[dict[str, int]] = []
    offset = 0
    for (rows, row_bytes), (h, _, size) in zip(shapes, FOURCCS[fourcc], strict=True):
        stride = luma_stride // h * size if h > 1 else luma_stride
        stride = max(stride, row_bytes)
        planes.append({"offset": offset, "stride": stride})
        offset += stride * rows
    return {"fourcc": fourcc, "width": width, "height": height, "planes": planes}, offset


def layout_bytes(layout: Mapping[str, Any]) -> int:
    """The bytes a frame of ``layout`` takes: the end of its last plane (planes as ``export(layout=...)``)."""
    shapes = plane_shapes(layout["fourcc"], layout["width"], layout["height"])
    planes = layout.get("planes") or []
    if len(planes) != len(shapes):
        raise ValueError(f"a {layout['fourcc']} layout needs {len(shapes)} planes, this one has {len(planes)}")
    ends: list[int] = [
        int(plane.get("offset", 0)) + int(plane.get("stride", 0)) * (rows - 1) + row_bytes
        for (rows, row_bytes), plane in zip(shapes, planes, strict=True)
    ]
    return max(ends)


def layout_to_wire(layout: Mapping[str, Any]) -> pb.Layout:
    """A Layout from a dict: fourcc, width, height, modifier, planes=[{offset, stride}]."""
    known = {"fourcc", "width", "height", "modifier", "planes"}
    unknown = set(layout) - known
    if unknown:
        raise ValueError(f"unknown layout keys {sorted(unknown)}; use {sorted(known)}")
    wire = pb.Layout(
        fourcc=layout.get("fourcc", ""),
        width=layout.get("width", 0),
        height=layout.get("height", 0),
        modifier=layout.get("modifier", 0),
    )
    for plane in layout.get("planes", ()):
        wire.planes.add(offset=plane.get("offset", 0), stride=plane.get("stride", 0))
    return wire


def layout_from_wire(wire: pb.Layout) -> dict[str, Any]:
    """A layout dict from a ``bufbroker.v1.Layout`` (the inverse of what export() sends)."""
    layout: dict[str, Any] = {
        "fourcc": wire.fourcc,
        "width": wire.width,
        "height": wire.height,
        "planes": [{"offset": p.offset, "stride": p.stride} for p in wire.planes],
    }
    if wire.modifier:
        layout["modifier"] = wire.modifier
    return layout


def plane_arrays(buffer: Any, layout: Mapping[str, Any]) -> list[Any]:
    """One 2-D uint8 array (rows x bytes per row) per plane, sharing ``buffer``'s memory.

    ``buffer`` is anything with the buffer protocol (a mapping's
    ``memoryview()``, an exporter's ``memoryview()``, a bytearray); the
    arrays are read-only when it is. Raises ValueError naming the plane
    when the layout does not fit the buffer. The arrays keep the memory
    mapped: drop them before the mapping is closed or moved.
    """
    import numpy

    fourcc, width, height = layout["fourcc"], layout["width"], layout["height"]
    shapes = plane_shapes(fourcc, width, height)
    planes = layout.get("planes") or []
    if len(planes) != len(shapes):
        raise ValueError(f"a {fourcc} layout needs {len(shapes)} planes, this one has {len(planes)}")
    size = memoryview(buffer).nbytes
    arrays: list[Any] = []
    for index, ((rows, row_bytes), plane) in enumerate(zip(shapes, planes, strict=True)):
        offset, stride = plane.get("offset", 0), plane.get("stride", 0)
        if stride < row_bytes:
            raise ValueError(f"{fourcc} plane {index}: stride {stride} is shorter than a row ({row_bytes} bytes)")
        end = offset + stride * (rows - 1) + row_bytes
        if end > size:
            raise ValueError(
                f"{fourcc} {width}x{height} plane {index} ends at byte {end} but the buffer has {size}: "
                "the layout does not match this buffer (was it moved?)"
            )
        arrays.append(numpy.ndarray((rows, row_bytes), numpy.uint8, buffer, offset, (stride, 1)))
    return arrays
