"""GStreamer video caps <-> bufbroker layouts, through the format table (``bufbroker.formats``).

A stream's slots are laid out by ``derive_layout(..., align=4)`` (rows
rounded up to 4 bytes, planes back to back), which is how GStreamer lays
out a frame by default, so a buffer from upstream copies into a slot in
one piece and a slot read by bufbrokersrc is a buffer any element can
read, even one that ignores ``GstVideoMeta``. One exception: for an odd
height with vertically subsampled chroma (NV12, I420 ... at 33x17)
GStreamer pads the luma plane to an even number of rows and
derive_layout does not; the sink then copies plane by plane and the
source adds a ``GstVideoMeta`` (or copies, if downstream takes none).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import Gst, GstVideo  # noqa: E402

from bufbroker import formats  # noqa: E402

GST_ALIGN = 4  # GStreamer's default row alignment (GstVideoInfo)


def _gst_format(name: str) -> GstVideo.VideoFormat:
    return GstVideo.VideoFormat.from_string(name)


def gst_planes(fmt: formats.Format, width: int, height: int) -> list[tuple[int, int]] | None:
    """GStreamer's default (offset, stride) per plane for this format and size; None if it has no such format."""
    if fmt.gst is None:
        return None
    gst_format = _gst_format(fmt.gst)
    info = GstVideo.VideoInfo.new()
    if gst_format == GstVideo.VideoFormat.UNKNOWN or not info.set_format(gst_format, width, height):
        return None
    return [(int(info.offset[i]), int(info.stride[i])) for i in range(info.finfo.n_planes)]


def _layout_matches_gst(fmt: formats.Format, width: int, height: int) -> bool:
    """Whether derive_layout(align=4) gives GstVideoInfo's offsets and strides for this format and size."""
    layout = formats.derive_layout(fmt, width, height, align=GST_ALIGN)
    return gst_planes(fmt, width, height) == [(plane.offset, plane.stride) for plane in layout.planes]


def supported_formats() -> list[formats.Format]:
    """The table's formats GStreamer knows and lays out as derive_layout(align=4) does (checked at two even sizes)."""
    found = []
    for fmt in formats.FORMATS.values():
        if fmt.gst is None or _gst_format(fmt.gst) == GstVideo.VideoFormat.UNKNOWN:
            continue
        if _layout_matches_gst(fmt, 1280, 720) and _layout_matches_gst(fmt, 34, 18):
            found.append(fmt)
    return found


def template_caps() -> Gst.Caps:
    """video/x-raw with every supported format, any size and framerate."""
    names = ", ".join(sorted({fmt.gst for fmt in supported_formats() if fmt.gst}))
    return Gst.Caps.from_string(
        f"video/x-raw, format=(string){{ {names} }}, width=(int)[1, 32767], height=(int)[1, 32767], "
        "framerate=(fraction)[0/1, 2147483647/1]"
    )


def layout_for_caps(caps: Gst.Caps) -> tuple[formats.Layout, GstVideo.VideoInfo]:
    """The slot layout for fixed video caps, and GStreamer's VideoInfo of them; ValueError if not video/x-raw."""
    info = GstVideo.VideoInfo.new_from_caps(caps)
    if info is None:
        raise ValueError(f"not fixed video/x-raw caps: {caps.to_string()}")
    name = GstVideo.VideoFormat.to_string(info.finfo.format)
    fmt = formats.from_gst(name)
    return formats.derive_layout(fmt, info.width, info.height, align=GST_ALIGN), info


def input_planes(buffer: Gst.Buffer, info: GstVideo.VideoInfo) -> list[tuple[int, int]]:
    """(offset, stride) of each plane of an upstream buffer: its GstVideoMeta's, else the caps' defaults."""
    meta = GstVideo.buffer_get_video_meta(buffer)
    planes = info.finfo.n_planes
    if meta is not None:
        return [(int(meta.offset[i]), int(meta.stride[i])) for i in range(planes)]
    return [(int(info.offset[i]), int(info.stride[i])) for i in range(planes)]


def layout_of(layout: Mapping[str, Any] | formats.Layout) -> formats.Layout:
    """A Layout from the SDK's layout dict (or a Layout)."""
    return layout if isinstance(layout, formats.Layout) else formats.Layout.from_dict(layout)


def caps_for_layout(layout: formats.Layout, framerate: tuple[int, int] | None) -> Gst.Caps:
    """Fixed video/x-raw caps for a stream's layout; ValueError when GStreamer has no such format."""
    fmt = formats.parse_format(layout.format)
    if fmt.gst is None or _gst_format(fmt.gst) == GstVideo.VideoFormat.UNKNOWN:
        raise ValueError(f"the stream's format {fmt.name} has no GStreamer video/x-raw equivalent")
    if layout.modifier != formats.LINEAR:
        raise ValueError(
            f"the stream's layout is tiled ({formats.modifier_name(layout.modifier)}): "
            "bufbrokersrc produces only linear video/x-raw"
        )
    info = GstVideo.VideoInfo.new()
    info.set_format(_gst_format(fmt.gst), layout.width, layout.height)
    if framerate is not None:
        info.fps_n, info.fps_d = framerate
    return info.to_caps()


def is_gst_default(layout: formats.Layout) -> bool:
    """Whether the layout is GStreamer's default for its format and size (no GstVideoMeta needed to read it)."""
    fmt = formats.parse_format(layout.format)
    return gst_planes(fmt, layout.width, layout.height) == [(p.offset, p.stride) for p in layout.planes]


def gst_video_format(layout: formats.Layout) -> GstVideo.VideoFormat:
    fmt = formats.parse_format(layout.format)
    assert fmt.gst is not None
    return _gst_format(fmt.gst)
