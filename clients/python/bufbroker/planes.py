"""Planes: numpy views of a frame's planes through its layout.

A buffer's layout (``export(..., layout=...)``, ``BufferInfo.layout``)
says where each plane starts and how many bytes a row takes. These
helpers turn it into one 2-D ``uint8`` array per plane over the mapped
bytes, without copying, and build packed layouts for exporters.

    layout = bufbroker.planes.layout_from_wire(session.buffers("cam")[0].layout)
    y, u, v = bufbroker.planes.plane_arrays(mapping.memoryview(), layout)

The formats themselves (planes, subsampling, names) are bufbroker.formats'
table; its ``plane_views()`` gives typed views (NV12's UV as
``(h/2, w/2, 2)``, RGB as ``(h, w, 3)``, P010 as uint16) where these give
raw bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from bufbroker import formats
from bufbroker.v1 import broker_pb2 as pb


def _compat_planes(fmt: formats.Format) -> tuple[tuple[int, int, int], ...]:
    # (pixels per row unit, vertical divisor, bytes per unit): ceil(H / v) rows of ceil(W / h) * bytes bytes.
    return tuple((p.hsub * p.block_width, p.vsub, p.bytes_per_block) for p in fmt.planes)


# fourcc -> per plane (horizontal divisor, vertical divisor, bytes per unit), for every name and alias
# bufbroker.formats knows: a read-only view of its table kept for older callers (the table is the truth).
FOURCCS: Mapping[str, tuple[tuple[int, int, int], ...]] = MappingProxyType(
    {
        name: _compat_planes(fmt)
        for fmt in formats.FORMATS.values()
        for name in (fmt.name, *fmt.aliases, *((fmt.gst,) if fmt.gst else ()))
    }
)


def _format(fourcc: str) -> formats.Format:
    try:
        return formats.parse_format(fourcc)
    except ValueError:
        raise ValueError(f"unknown fourcc {fourcc!r}: bufbroker.formats knows {formats.known_format_names()}") from None


def plane_shapes(fourcc: str, width: int, height: int) -> list[tuple[int, int]]:
    """(rows, bytes per row) of each plane of a ``width`` x ``height`` frame (``fourcc``: any name formats knows)."""
    return [(plane.rows(height), plane.row_bytes(width)) for plane in _format(fourcc).planes]


def packed_layout(fourcc: str, width: int, height: int, align: int = 1) -> tuple[dict[str, Any], int]:
    """A layout with planes back to back, and the bytes it needs.

    The luma stride is rounded up to ``align`` (a power of two, e.g. 64 for
    SIMD-friendly rows); chroma planes of I420/YV12 take half the luma
    stride and NV12/NV21 the whole one (``formats.derive_layout(...,
    chroma_from_luma=True)``), the one-array layout PyAV's
    ``VideoFrame.from_numpy_buffer`` wraps without a copy. The dict keeps
    ``fourcc`` as given and leaves out the LINEAR modifier (as the wire
    does); ``formats.derive_layout`` gives the typed Layout.
    """
    layout = formats.derive_layout(_format(fourcc), width, height, align=align, chroma_from_luma=True)
    wire = layout.to_dict()
    wire["fourcc"] = fourcc
    del wire["modifier"]
    return wire, layout.size


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
