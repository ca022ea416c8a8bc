"""PyAV frames over bufbroker buffers: ``to_av()`` wraps a frame's bytes as an ``av.VideoFrame``.

PyAV (``pip install -e '.[video]'``) is optional: it is imported when
``to_av()`` is called, not with this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bufbroker import formats

if TYPE_CHECKING:
    import av

# Single-plane pix_fmts PyAV 18's VideoFrame.from_numpy_buffer wraps as they are, at any row stride:
# the view's samples must be C-contiguous within a row, which plane_views() always gives.
_WRAPPED_PACKED = frozenset({"gray", "gray16le", "bgr24", "rgb24", "bgra", "rgba"})
# Multi-plane pix_fmts it wraps only as one (height * 3/2, stride) array: chroma right after luma,
# with half the luma stride (yuv420p) or the luma stride (nv12).
_WRAPPED_ONE_ARRAY = frozenset({"yuv420p", "nv12"})
# DRM formats that are an FFmpeg format with the planes in another order.
_REORDERED = {"YVU420": ("yuv420p", (0, 2, 1))}


def _av_target(fmt: formats.Format) -> tuple[str, tuple[int, ...]]:
    """The pix_fmt a format becomes and the order its planes take there."""
    if fmt.name in _REORDERED:
        return _REORDERED[fmt.name]
    if fmt.av is None:
        known = sorted(f.name for f in formats.FORMATS.values() if f.av or f.name in _REORDERED)
        raise ValueError(f"{fmt.name} has no FFmpeg pixel format, so no PyAV frame: PyAV takes {known}")
    return fmt.av, tuple(range(len(fmt.planes)))


def copy_reason(layout: formats.Layout | Mapping[str, Any], buffer_size: int) -> str | None:
    """Why ``to_av()`` copies a frame of ``layout`` in a ``buffer_size``-byte buffer, or None if it wraps it.

    PyAV 18 wraps R8 (gray), R16 (gray16le), RGB888 (bgr24), BGR888
    (rgb24), ARGB8888 (bgra) and ABGR8888 (rgba) at any stride; NV12 and
    YUV420 only in the one-array layout (``derive_layout(...,
    chroma_from_luma=True)`` or ``planes.packed_layout``) with a height
    that is a multiple of 4 (PyAV derives the height as rows // 6 * 4)
    and an even stride. Every other format copies: XRGB8888/XBGR8888
    (PyAV cannot wrap bgr0/rgb0), RGB565, NV21, NV16, NV24, YUV422,
    YUV444, YVU420 (into yuv420p, planes reordered), YUYV, UYVY, P010.
    """
    result = formats.as_layout(layout)
    pix_fmt, order = _av_target(formats.FORMATS[result.format])
    if pix_fmt in _WRAPPED_PACKED and order == (0,):
        return None
    if pix_fmt not in _WRAPPED_ONE_ARRAY or result.format in _REORDERED:
        return f"PyAV 18 cannot wrap {pix_fmt} ({result.format}) without a copy"
    planes, height = result.planes, result.height
    stride, base = planes[0].stride, planes[0].offset
    chroma_stride = stride // 2 if pix_fmt == "yuv420p" else stride
    expected = [base + stride * height]
    if pix_fmt == "yuv420p":
        expected.append(expected[0] + chroma_stride * (height // 2))
    if height % 4:
        return f"the height {height} is not a multiple of 4 (PyAV derives it as rows // 6 * 4)"
    if stride % 2:
        return f"the luma stride {stride} is odd"
    if [p.offset for p in planes[1:]] != expected or any(p.stride != chroma_stride for p in planes[1:]):
        return (
            f"the planes are not one array (chroma at {expected} with stride {chroma_stride}, as "
            "derive_layout(..., chroma_from_luma=True) lays them out)"
        )
    if base + stride * height * 3 // 2 > buffer_size:
        return "the buffer ends before the last chroma row's padding, which the one array spans"
    return None


def to_av(buffer: Any, layout: formats.Layout | Mapping[str, Any]) -> av.VideoFrame:
    """An ``av.VideoFrame`` of the frame ``layout`` describes in ``buffer``; no copy where PyAV allows.

    ``buffer``: a mapping's ``memoryview()``, an ``mmap``, a
    ``bytearray``. Wrapped without a copy (the frame's planes are the
    buffer's bytes, so later writes to the buffer show in the frame):
    R8, R16, RGB888, BGR888, ARGB8888, ABGR8888 at any stride, and NV12
    and YUV420 laid out as one array with a height that is a multiple of
    4 (``copy_reason()`` says why any other layout copies). Copied into a
    frame PyAV allocates: XRGB8888, XBGR8888, RGB565, NV21, NV16, NV24,
    YUV422, YUV444, YVU420 (as yuv420p, planes reordered), YUYV, UYVY,
    P010, and NV12/YUV420 in other layouts. GR88, RG88 and NV61 have no
    FFmpeg format (ValueError); a tiled modifier is refused (LayoutError).

    A wrapped frame keeps the buffer exported: drop it before the
    mapping is closed or moved (an ``mmap`` refuses to close meanwhile).
    """
    try:
        import av
        import numpy
    except ImportError as error:
        raise ImportError(
            f"bufbroker.av_frames.to_av() needs PyAV and numpy ({error.name} is missing): pip install -e '.[video]'"
        ) from error

    views = formats.plane_views(buffer, layout)  # validates, refuses tiled layouts
    result = formats.as_layout(layout)
    pix_fmt, order = _av_target(formats.FORMATS[result.format])
    if copy_reason(result, memoryview(buffer).nbytes) is None:
        if pix_fmt in _WRAPPED_PACKED:
            return av.VideoFrame.from_numpy_buffer(views[0], format=pix_fmt, width=result.width)
        stride = result.planes[0].stride
        rows = result.height * 3 // 2
        array = numpy.ndarray((rows, stride), numpy.uint8, buffer, result.planes[0].offset, (stride, 1))
        return av.VideoFrame.from_numpy_buffer(array, format=pix_fmt, width=result.width)
    frame = av.VideoFrame(result.width, result.height, pix_fmt)
    spec = formats.FORMATS[result.format]
    for target_index, source_index in enumerate(order):
        plane, source = result.planes[source_index], spec.planes[source_index]
        rows, row_bytes = source.rows(result.height), source.row_bytes(result.width)
        source_bytes = numpy.ndarray((rows, row_bytes), numpy.uint8, buffer, plane.offset, (plane.stride, 1))
        target = frame.planes[target_index]
        target_rows = numpy.frombuffer(memoryview(target), numpy.uint8).reshape(-1, target.line_size)
        target_rows[:rows, :row_bytes] = source_bytes
    return frame
