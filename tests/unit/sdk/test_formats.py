"""bufbroker.formats: the format table, derived and validated layouts, plane views, modifiers, the PyAV bridge.

Expected numbers are computed here from each format's definition
(drm_fourcc.h), never with the module's own helpers.
"""

from __future__ import annotations

import json
import mmap
import os
import subprocess
from pathlib import Path

import numpy
import pytest

from bufbroker import formats
from bufbroker.formats import LayoutError, derive_layout, plane_views, validate_layout


def ceil(a: int, b: int) -> int:
    return (a + b - 1) // b


def up(value: int, align: int) -> int:
    return ceil(value, align) * align


# name -> (fourcc characters, [(row bytes of a w-wide frame, rows of an h-high frame) per plane]).
DEFINITIONS = {
    "R8": (b"R8  ", [(lambda w: w, lambda h: h)]),
    "R16": (b"R16 ", [(lambda w: 2 * w, lambda h: h)]),
    "GR88": (b"GR88", [(lambda w: 2 * w, lambda h: h)]),
    "RG88": (b"RG88", [(lambda w: 2 * w, lambda h: h)]),
    "RGB888": (b"RG24", [(lambda w: 3 * w, lambda h: h)]),
    "BGR888": (b"BG24", [(lambda w: 3 * w, lambda h: h)]),
    "XRGB8888": (b"XR24", [(lambda w: 4 * w, lambda h: h)]),
    "XBGR8888": (b"XB24", [(lambda w: 4 * w, lambda h: h)]),
    "ARGB8888": (b"AR24", [(lambda w: 4 * w, lambda h: h)]),
    "ABGR8888": (b"AB24", [(lambda w: 4 * w, lambda h: h)]),
    "RGB565": (b"RG16", [(lambda w: 2 * w, lambda h: h)]),
    "NV12": (b"NV12", [(lambda w: w, lambda h: h), (lambda w: 2 * ceil(w, 2), lambda h: ceil(h, 2))]),
    "NV21": (b"NV21", [(lambda w: w, lambda h: h), (lambda w: 2 * ceil(w, 2), lambda h: ceil(h, 2))]),
    "NV16": (b"NV16", [(lambda w: w, lambda h: h), (lambda w: 2 * ceil(w, 2), lambda h: h)]),
    "NV61": (b"NV61", [(lambda w: w, lambda h: h), (lambda w: 2 * ceil(w, 2), lambda h: h)]),
    "NV24": (b"NV24", [(lambda w: w, lambda h: h), (lambda w: 2 * w, lambda h: h)]),
    "YUV420": (b"YU12", [(lambda w: w, lambda h: h)] + [(lambda w: ceil(w, 2), lambda h: ceil(h, 2))] * 2),
    "YVU420": (b"YV12", [(lambda w: w, lambda h: h)] + [(lambda w: ceil(w, 2), lambda h: ceil(h, 2))] * 2),
    "YUV422": (b"YU16", [(lambda w: w, lambda h: h)] + [(lambda w: ceil(w, 2), lambda h: h)] * 2),
    "YUV444": (b"YU24", [(lambda w: w, lambda h: h)] * 3),
    "YUYV": (b"YUYV", [(lambda w: 4 * ceil(w, 2), lambda h: h)]),
    "UYVY": (b"UYVY", [(lambda w: 4 * ceil(w, 2), lambda h: h)]),
    "P010": (b"P010", [(lambda w: 2 * w, lambda h: h), (lambda w: 4 * ceil(w, 2), lambda h: ceil(h, 2))]),
}
REQUIRED = (
    "R8 GR88 RGB888 BGR888 XRGB8888 XBGR8888 ARGB8888 ABGR8888 RGB565 NV12 NV21 NV16 YUV420 YVU420 YUYV UYVY P010"
)
# name -> (GStreamer video/x-raw format, FFmpeg pix_fmt), from GStreamer's video-info-dma.c map and FFmpeg's names.
NAMES = {
    "R8": ("GRAY8", "gray"),
    "R16": ("GRAY16_LE", "gray16le"),
    "GR88": (None, None),
    "RG88": (None, None),
    "RGB888": ("BGR", "bgr24"),
    "BGR888": ("RGB", "rgb24"),
    "XRGB8888": ("BGRx", "bgr0"),
    "XBGR8888": ("RGBx", "rgb0"),
    "ARGB8888": ("BGRA", "bgra"),
    "ABGR8888": ("RGBA", "rgba"),
    "RGB565": ("RGB16", "rgb565le"),
    "NV12": ("NV12", "nv12"),
    "NV21": ("NV21", "nv21"),
    "NV16": ("NV16", "nv16"),
    "NV61": ("NV61", None),
    "NV24": ("NV24", "nv24"),
    "YUV420": ("I420", "yuv420p"),
    "YVU420": ("YV12", None),
    "YUV422": ("Y42B", "yuv422p"),
    "YUV444": ("Y444", "yuv444p"),
    "YUYV": ("YUY2", "yuyv422"),
    "UYVY": ("UYVY", "uyvy422"),
    "P010": ("P010_10LE", "p010le"),
}
SIZES = [(1, 1), (2, 2), (5, 3), (7, 9), (64, 48), (641, 361), (1920, 1080)]
ALIGNS = [1, 4, 64, 256]


def expected_planes(name: str, width: int, height: int, align: int) -> list[tuple[int, int, int]]:
    """(offset, stride, size) per plane: every stride its row rounded up to align, planes back to back."""
    planes, offset = [], 0
    for row_bytes, rows in DEFINITIONS[name][1]:
        stride = up(row_bytes(width), align)
        planes.append((offset, stride, stride * rows(height)))
        offset += stride * rows(height)
    return planes


def test_the_table_holds_every_format_the_issue_names_and_nothing_untested():
    assert set(REQUIRED.split()) <= set(formats.FORMATS)
    assert set(formats.FORMATS) == set(DEFINITIONS) == set(NAMES)


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_fourcc_codes_are_drm_fourcc_code_of_their_characters(name):
    chars = DEFINITIONS[name][0]
    assert formats.FORMATS[name].fourcc == chars[0] | chars[1] << 8 | chars[2] << 16 | chars[3] << 24


def test_fourcc_codes_match_the_kernel_header_values():
    # The decimal values drm_fourcc.h's macros expand to.
    assert formats.FORMATS["XRGB8888"].fourcc == 875713112
    assert formats.FORMATS["ARGB8888"].fourcc == 875713089
    assert formats.FORMATS["RGB565"].fourcc == 0x36314752  # 'RG16'; V4L2's RGB565 is 'RGBP' (0x50424752), not this
    assert formats.FORMATS["NV12"].fourcc == 0x3231564E
    assert formats.FORMATS["R8"].fourcc == 0x20203852


@pytest.mark.parametrize("name", sorted(NAMES))
def test_gstreamer_and_ffmpeg_names_name_the_same_bytes(name):
    fmt = formats.FORMATS[name]
    assert (fmt.gst, fmt.av) == NAMES[name]


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
@pytest.mark.parametrize("align", ALIGNS)
def test_derived_layout_matches_the_format_definition(name, align):
    for width, height in SIZES:
        layout = derive_layout(name, width, height, align=align)
        planes = [(p.offset, p.stride, p.size) for p in layout.planes]
        assert planes == expected_planes(name, width, height, align), (name, width, height, align)
        assert layout.size == sum(size for _, _, size in planes)
        assert (layout.format, layout.width, layout.height, layout.modifier) == (name, width, height, 0)
        assert validate_layout(layout, layout.size) == layout


def test_nv12_1920x1080_matches_gstreamers_default_layout():
    layout = derive_layout("NV12", 1920, 1080, align=4)
    assert [p.stride for p in layout.planes] == [1920, 1920]
    assert [p.offset for p in layout.planes] == [0, 2073600]
    assert layout.size == 3110400


def test_i420_1280x720_matches_gstreamers_default_layout():
    layout = derive_layout("I420", 1280, 720, align=4)
    assert layout.format == "YUV420"
    assert [p.stride for p in layout.planes] == [1280, 640, 640]
    assert [p.offset for p in layout.planes] == [0, 921600, 1152000]
    assert layout.size == 1382400


def test_chroma_from_luma_gives_chroma_the_luma_stride_scaled_by_subsampling():
    i420 = derive_layout("YUV420", 480, 270, align=64, chroma_from_luma=True)
    assert [(p.offset, p.stride) for p in i420.planes] == [(0, 512), (512 * 270, 256), (512 * 270 + 256 * 135, 256)]
    nv12 = derive_layout("NV12", 100, 50, align=32, chroma_from_luma=True)
    assert [(p.offset, p.stride) for p in nv12.planes] == [(0, 128), (128 * 50, 128)]
    p010 = derive_layout("P010", 100, 50, align=256, chroma_from_luma=True)
    assert [p.stride for p in p010.planes] == [256, 256]
    odd = derive_layout("YUV420", 5, 5, chroma_from_luma=True)  # half of 5 would not hold 3 chroma samples
    assert [p.stride for p in odd.planes] == [5, 3, 3]


def test_derive_layout_refuses_a_tiled_modifier_and_a_bad_align():
    with pytest.raises(ValueError, match=r"LINEAR layouts only: the driver decides a NV12:I915_Y_TILED layout"):
        derive_layout("NV12", 64, 64, modifier=formats.parse_modifier("I915_Y_TILED"))
    with pytest.raises(ValueError, match="align must be a power of two, not 48"):
        derive_layout("NV12", 64, 64, align=48)


GST_LAYOUTS = """
import json, sys
import gi
gi.require_version("Gst", "1.0"); gi.require_version("GstVideo", "1.0")
from gi.repository import Gst, GstVideo
Gst.init(None)
out = []
for name, width, height in json.loads(sys.argv[1]):
    info = GstVideo.VideoInfo()
    info.set_format(GstVideo.VideoFormat.from_string(name), width, height)
    planes = info.finfo.n_planes
    out.append([list(info.offset[:planes]), list(info.stride[:planes]), info.size])
print(json.dumps(out))
"""


def test_derived_layouts_match_gstreamers_video_info_where_gstreamer_is_installed():
    """Cross-check (optional): GstVideoInfo's offsets/strides/size, GStreamer's 4-byte default row alignment."""
    system_python = Path("/usr/bin/python3")
    probe = (
        subprocess.run(
            [str(system_python), "-c", "import gi; gi.require_version('GstVideo', '1.0')"], capture_output=True
        )
        if system_python.exists()
        else None
    )
    if probe is None or probe.returncode:
        pytest.skip("GStreamer's Python bindings (python3-gst-1.0 for /usr/bin/python3) are not installed")
    # Even heights: GStreamer pads an odd height to even before placing chroma; FFmpeg and derive_layout do not.
    cases = [
        (fmt.gst, fmt.name, w, h)
        for fmt in formats.FORMATS.values()
        if fmt.gst
        for w, h in [*SIZES, (5, 4), (7, 2), (641, 360)]
        if h % 2 == 0
    ]
    run = subprocess.run(
        [str(system_python), "-c", GST_LAYOUTS, json.dumps([[gst, w, h] for gst, _, w, h in cases])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for (gst, name, width, height), (offsets, strides, size) in zip(cases, json.loads(run.stdout), strict=True):
        layout = derive_layout(name, width, height, align=4)
        assert ([p.offset for p in layout.planes], [p.stride for p in layout.planes], layout.size) == (
            offsets,
            strides,
            size,
        ), (gst, width, height)


# -- validation ------------------------------------------------------------------


def nv12(width=64, height=32, planes=None, modifier=0):
    return {
        "fourcc": "NV12",
        "width": width,
        "height": height,
        "modifier": modifier,
        "planes": planes
        if planes is not None
        else [{"offset": 0, "stride": width}, {"offset": width * height, "stride": width}],
    }


def test_validate_accepts_a_derived_layout_as_a_dict_with_an_alias():
    layout = derive_layout("YUV420", 64, 48, align=64).to_dict()
    layout["fourcc"] = "I420"
    assert validate_layout(layout, 64 * 48 + 2 * 64 * 24).planes == derive_layout("YUV420", 64, 48, align=64).planes


def test_validate_names_the_plane_whose_stride_is_too_small():
    with pytest.raises(
        LayoutError, match=r"NV12 64x32: plane 1 \(UV\): stride too small: 48 is shorter than a row .*64 bytes"
    ):
        validate_layout(nv12(planes=[{"offset": 0, "stride": 64}, {"offset": 2048, "stride": 48}]))


def test_validate_names_overlapping_planes():
    with pytest.raises(
        LayoutError,
        match=r"plane 1 \(UV\) overlaps plane 0 \(Y\): it starts at byte 1024, before plane 0 \(Y\) ends at byte 2048",
    ):
        validate_layout(nv12(planes=[{"offset": 0, "stride": 64}, {"offset": 1024, "stride": 64}]))


def test_validate_names_the_plane_that_ends_past_the_buffer():
    with pytest.raises(
        LayoutError, match=r"plane 1 \(UV\) ends past the end of the buffer: at byte 3072, the buffer has 3071"
    ):
        validate_layout(nv12(), 3071)
    assert validate_layout(nv12(), 3072)  # the last row needs no padding after its last pixel


def test_validate_names_a_wrong_plane_count():
    with pytest.raises(
        LayoutError, match=r"wrong plane count: NV12:LINEAR has 2 planes \(Y, UV\), this layout gives 1"
    ):
        validate_layout(nv12(planes=[{"offset": 0, "stride": 64}]))


def test_validate_of_a_tiled_layout_checks_only_plane_count_and_that_planes_start_in_the_buffer():
    y_tiled = formats.parse_modifier("I915_Y_TILED_CCS")
    ccs = [
        {"offset": 0, "stride": 128},
        {"offset": 8192, "stride": 128},
        {"offset": 12288, "stride": 16},
        {"offset": 12800, "stride": 16},
    ]
    assert len(validate_layout(nv12(planes=ccs, modifier=y_tiled), 16384).planes) == 4  # CCS adds planes
    with pytest.raises(LayoutError, match=r"at least 2 planes"):
        validate_layout(nv12(planes=ccs[:1], modifier=y_tiled))
    with pytest.raises(
        LayoutError, match=r"plane 3 \(extra\) starts at byte 12800, past the end of the 12800-byte buffer"
    ):
        validate_layout(nv12(planes=ccs, modifier=y_tiled), 12800)


def test_plane_views_refuse_a_tiled_layout():
    layout = nv12(modifier=formats.parse_modifier("I915_Y_TILED"))
    with pytest.raises(
        LayoutError, match=r"NV12 64x32 is tiled \(modifier I915_Y_TILED\): its bytes are opaque to the CPU"
    ):
        plane_views(bytearray(4096), layout)


def test_unknown_format_in_a_layout_is_a_layout_error_listing_the_known_ones():
    with pytest.raises(LayoutError, match=r"unknown pixel format 'RGB3'.*YUV420 \(I420/IYUV\)"):
        validate_layout({"fourcc": "RGB3", "width": 8, "height": 8, "planes": []})


# -- plane views -------------------------------------------------------------------


def test_nv12_views_are_y_and_interleaved_uv():
    layout = derive_layout("NV12", 6, 4)
    memory = bytearray(layout.size)
    y, uv = plane_views(memory, layout)
    assert (y.shape, y.strides, y.dtype) == ((4, 6), (6, 1), numpy.uint8)
    assert (uv.shape, uv.strides) == ((2, 3, 2), (6, 2, 1))
    uv[1, 2, 1] = 200  # V of the last chroma pair of the second chroma row
    assert memory[24 + 1 * 6 + 2 * 2 + 1] == 200
    assert numpy.shares_memory(y, numpy.frombuffer(memory, numpy.uint8))


def test_rgb888_view_is_b_g_r_in_memory():
    layout = derive_layout("RGB888", 3, 2)
    memory = bytearray(layout.size)
    (rgb,) = plane_views(memory, layout)
    assert (rgb.shape, rgb.strides) == ((2, 3, 3), (9, 3, 1))
    rgb[1, 2] = (1, 2, 3)
    assert memory[9 + 6 : 9 + 9] == b"\x01\x02\x03"


def test_xrgb8888_view_has_four_components_and_honours_padded_rows():
    layout = derive_layout("XRGB8888", 5, 3, align=64)  # 20-byte rows padded to 64
    memory = bytearray(layout.size)
    (pixels,) = plane_views(memory, layout)
    assert (pixels.shape, pixels.strides) == ((3, 5, 4), (64, 4, 1))
    pixels[2, 4, 2] = 9  # R of the last pixel (B, G, R, X in memory)
    assert memory[2 * 64 + 4 * 4 + 2] == 9
    pixels[:] = 255
    assert memory[20:64] == bytes(44)  # row padding untouched


def test_yuyv_view_is_one_four_byte_block_per_two_pixels():
    layout = derive_layout("YUYV", 5, 2)
    memory = bytearray(layout.size)
    (blocks,) = plane_views(memory, layout)
    assert (blocks.shape, blocks.strides) == ((2, 3, 4), (12, 4, 1))
    blocks[1, 0] = (10, 20, 30, 40)  # Y0 Cb Y1 Cr
    assert memory[12:16] == bytes([10, 20, 30, 40])


def test_p010_views_are_little_endian_uint16():
    layout = derive_layout("P010", 4, 2)
    memory = bytearray(layout.size)
    y, uv = plane_views(memory, layout)
    assert (y.shape, y.strides, y.dtype.itemsize) == ((2, 4), (8, 2), 2)
    assert (uv.shape, uv.strides) == ((1, 2, 2), (8, 4, 2))
    y[1, 2] = 0x3FF << 6  # 10 bits in the high bits
    assert memory[8 + 4 : 8 + 6] == (0xFFC0).to_bytes(2, "little")
    uv[0, 1, 1] = 0x0102
    assert memory[16 + 4 + 2 : 16 + 4 + 4] == b"\x02\x01"


def test_views_follow_a_hand_given_strided_layout_over_a_memfd():
    # NV12 with 32-byte luma rows, 48-byte chroma rows, a gap between the planes: a real mapped memfd.
    layout = nv12(width=20, height=4, planes=[{"offset": 0, "stride": 32}, {"offset": 160, "stride": 48}])
    fd = os.memfd_create("formats-test")
    try:
        os.ftruncate(fd, 160 + 48 + 20)
        with mmap.mmap(fd, 160 + 48 + 20) as memory:
            y, uv = plane_views(memory, layout)
            assert (y.shape, y.strides, uv.shape, uv.strides) == ((4, 20), (32, 1), (2, 10, 2), (48, 2, 1))
            y[3, 19] = 7
            uv[1, 9] = (8, 9)
            assert (memory[3 * 32 + 19], memory[160 + 48 + 18], memory[160 + 48 + 19]) == (7, 8, 9)
            del y, uv
    finally:
        os.close(fd)


def test_views_of_a_read_only_buffer_are_read_only():
    layout = derive_layout("R8", 4, 4)
    (grey,) = plane_views(memoryview(bytes(16)), layout)
    assert grey.shape == (4, 4) and not grey.flags.writeable


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEFINITIONS))
def test_every_spelling_of_a_format_parses_back_to_it(name):
    fmt = formats.FORMATS[name]
    spellings = [name, name.lower(), f"DRM_FORMAT_{name}", DEFINITIONS[name][0].decode(), fmt.fourcc, *fmt.aliases]
    assert {formats.parse_format(spelling).name for spelling in spellings} == {name}
    if fmt.gst:
        assert formats.from_gst(fmt.gst) is fmt
        assert formats.parse_format(fmt.gst) is fmt
    if fmt.av:
        assert formats.from_av(fmt.av) is fmt


def test_gstreamer_names_are_case_sensitive_where_case_means_another_format():
    assert formats.parse_format("RGB").name == "BGR888"
    assert formats.parse_format("BGR").name == "RGB888"
    assert formats.from_gst("BGRx").name == "XRGB8888"
    with pytest.raises(ValueError, match=r"no DRM format for GStreamer format 'bgrx'"):
        formats.from_gst("bgrx")
    with pytest.raises(ValueError, match=r"no DRM format for FFmpeg pix_fmt 'yvu420p'"):
        formats.from_av("yvu420p")


def test_layout_dict_round_trip_keeps_the_drm_name():
    layout = derive_layout("YUV420", 64, 48, align=64)
    assert formats.Layout.from_dict(layout.to_dict()) == layout
    assert layout.to_dict()["planes"][1] == {"offset": 64 * 48, "stride": 64}


# -- modifiers -------------------------------------------------------------------------

KNOWN_MODIFIERS = {
    "LINEAR": 0,
    "INVALID": 0x00FFFFFFFFFFFFFF,
    "I915_X_TILED": 0x0100000000000001,
    "I915_Y_TILED": 0x0100000000000002,
    "I915_Yf_TILED": 0x0100000000000003,
    "I915_Y_TILED_CCS": 0x0100000000000004,
    "I915_4_TILED": 0x0100000000000009,
    "NVIDIA_16BX2_BLOCK_FOUR_GOB": 0x0300000000000012,
    "QCOM_COMPRESSED": 0x0500000000000001,
    "BROADCOM_VC4_T_TILED": 0x0700000000000001,
    "ARM_AFBC(16x16)": 0x0800000000000001,
    "ARM_AFBC(16x16,YTR,SPARSE)": 0x0800000000000051,
    "NVIDIA_BLOCK_LINEAR_2D(0,1,2,6,4)": 0x0300000000606014,
}


@pytest.mark.parametrize(("name", "value"), sorted(KNOWN_MODIFIERS.items()))
def test_modifier_names_are_drm_fourcc_values_and_parse_back(name, value):
    assert formats.modifier_name(value) == name
    assert formats.parse_modifier(name) == value
    assert formats.parse_modifier(name.lower()) == value
    assert formats.parse_modifier(f"0x{value:x}") == formats.parse_modifier(str(value)) == value


def test_every_named_and_unnamed_modifier_round_trips():
    unnamed = [0x0200000000000123, 0x0C00000000000001, 0x7700000000000001, 0x00000000000000FF, 0x08F0000000000001]
    for modifier in [*formats.MODIFIER_NAMES, *unnamed]:
        assert formats.parse_modifier(formats.modifier_name(modifier)) == modifier
    assert formats.modifier_name(0x0200000000000123) == "AMD:0x0200000000000123"
    assert formats.modifier_name(0x7700000000000001) == "0x7700000000000001"


def test_kernel_spellings_of_modifiers_are_accepted():
    assert formats.parse_modifier("DRM_FORMAT_MOD_LINEAR") == 0
    assert formats.parse_modifier("I915_FORMAT_MOD_Y_TILED") == 0x0100000000000002


def test_bad_modifiers_say_what_is_accepted():
    with pytest.raises(ValueError, match=r"unknown modifier 'TILED_PLEASE': give a name"):
        formats.parse_modifier("TILED_PLEASE")
    with pytest.raises(ValueError, match=r"0x0100000000000002 is not a NVIDIA modifier"):
        formats.parse_modifier("NVIDIA:0x0100000000000002")
    with pytest.raises(ValueError, match=r"a modifier is a u64"):
        formats.parse_modifier(1 << 64)


def test_pairs_as_text_and_as_gstreamer_drm_format():
    y_tiled = 0x0100000000000002
    assert formats.pair_text("NV12", 0) == "NV12:LINEAR"
    assert formats.pair_text("I420", y_tiled) == "YUV420:I915_Y_TILED"
    assert formats.pair_text("NV12", 0xFF) == "NV12:0x00000000000000ff"
    assert formats.parse_pair("NV12:I915_Y_TILED") == (formats.FORMATS["NV12"], y_tiled)
    assert formats.gst_drm_format("NV12", y_tiled) == "NV12:0x0100000000000002"
    assert formats.gst_drm_format("NV12", 0) == "NV12"
    assert formats.gst_drm_format("XRGB8888", 0) == "XR24"  # the fourcc, not GStreamer's "BGRx"
    assert formats.gst_drm_format("R8", 0) == "R8  "
    for fmt in formats.FORMATS.values():
        for modifier in (0, y_tiled):
            assert formats.parse_gst_drm_format(formats.gst_drm_format(fmt, modifier)) == (fmt, modifier)
    with pytest.raises(ValueError, match="cannot carry DRM_FORMAT_MOD_INVALID"):
        formats.gst_drm_format("NV12", formats.INVALID)


# -- PyAV ----------------------------------------------------------------------------------

av = pytest.importorskip("av", reason="PyAV is not installed (pip install -e '.[video]')")
from bufbroker.av_frames import copy_reason, to_av  # noqa: E402

ZERO_COPY = {"R8", "R16", "RGB888", "BGR888", "ARGB8888", "ABGR8888", "NV12", "YUV420"}


def filled(layout: formats.Layout) -> bytearray:
    return bytearray(
        numpy.random.default_rng(len(layout.planes) + layout.width).integers(0, 256, layout.size, numpy.uint8)
    )


def frame_plane_rows(frame, index: int, rows: int, row_bytes: int) -> bytes:
    plane = frame.planes[index]
    return numpy.frombuffer(memoryview(plane), numpy.uint8).reshape(-1, plane.line_size)[:rows, :row_bytes].tobytes()


def input_plane_rows(memory: bytearray, layout: formats.Layout, index: int, name: str) -> tuple[bytes, int, int]:
    row_bytes, rows = DEFINITIONS[name][1][index]
    rows_, width = rows(layout.height), row_bytes(layout.width)
    plane = layout.planes[index]
    data = b"".join(
        memory[plane.offset + r * plane.stride : plane.offset + r * plane.stride + width] for r in range(rows_)
    )
    return data, rows_, width


@pytest.mark.parametrize("name", sorted(n for n, f in formats.FORMATS.items() if f.av or n == "YVU420"))
def test_to_av_gives_a_frame_whose_planes_are_the_input_and_wraps_where_it_says(name):
    layout = derive_layout(name, 64, 48, align=64, chroma_from_luma=True)
    memory = filled(layout)
    frame = to_av(memory, layout)
    assert (frame.width, frame.height) == (64, 48)
    assert frame.format.name == (formats.FORMATS[name].av or "yuv420p")
    order = (0, 2, 1) if name == "YVU420" else range(len(layout.planes))
    for target, source in enumerate(order):
        data, rows, width = input_plane_rows(memory, layout, source, name)
        assert frame_plane_rows(frame, target, rows, width) == data, (name, target)
    wrapped = copy_reason(layout, len(memory)) is None
    assert wrapped == (name in ZERO_COPY)
    memory[0] ^= 0xFF  # a write to the input after to_av() shows in the frame only if it wraps the input
    assert (frame_plane_rows(frame, 0, 1, 1) == bytes(memory[:1])) == wrapped


def test_to_av_copies_layouts_pyav_cannot_wrap_and_says_why():
    apart = derive_layout("YUV420", 64, 48, align=64)  # chroma rows rounded to 64 on their own: not half the luma's
    assert "not one array" in copy_reason(apart, apart.size)
    short = derive_layout("NV12", 64, 46)
    assert "not a multiple of 4" in copy_reason(short, short.size)
    for layout in (apart, short):
        memory = filled(layout)
        frame = to_av(memory, layout)
        for index in range(len(layout.planes)):
            data, rows, width = input_plane_rows(memory, layout, index, layout.format)
            assert frame_plane_rows(frame, index, rows, width) == data
        memory[0] ^= 0xFF
        assert frame_plane_rows(frame, 0, 1, 1) != bytes(memory[:1])


def test_to_av_wraps_a_mapped_memfd_and_sees_writes_made_after():
    layout = derive_layout("NV12", 320, 240, align=64, chroma_from_luma=True)
    fd = os.memfd_create("formats-av-test")
    try:
        os.ftruncate(fd, layout.size)
        with mmap.mmap(fd, layout.size) as memory:
            frame = to_av(memory, layout)
            y, uv = plane_views(memory, layout)
            y[10, 20], uv[5, 6] = 99, (1, 2)
            assert frame.to_ndarray()[10, 20] == 99  # nv12 to_ndarray: (h * 3/2, w), UV rows after Y
            assert tuple(frame.to_ndarray()[240 + 5, 12:14]) == (1, 2)
            del frame, y, uv  # the frame keeps the mmap exported until it is gone
    finally:
        os.close(fd)


def test_to_av_refuses_formats_ffmpeg_lacks_and_tiled_layouts():
    with pytest.raises(ValueError, match=r"GR88 has no FFmpeg pixel format"):
        to_av(bytearray(64), derive_layout("GR88", 4, 4))
    with pytest.raises(LayoutError, match="is tiled"):
        to_av(bytearray(4096), nv12(modifier=0x0100000000000002))
