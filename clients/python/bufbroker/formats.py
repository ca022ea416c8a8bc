"""Formats: the pixel-format and modifier vocabulary, and the layouts derived from it.

One table (``FORMATS``) says, for every DRM fourcc bufbroker knows, its
planes (bytes per block, subsampling, numpy dtype and components), its
bits per sample and its names in GStreamer (``video/x-raw,format=...``)
and FFmpeg/PyAV (``pix_fmt``). Everything else derives from it:

- ``derive_layout()``: per-plane offset/stride/size of a LINEAR frame, so
  nobody types a layout by hand;
- ``validate_layout()``: a hand-given layout checked against the format,
  with an error naming the plane and the rule;
- ``plane_views()``: one numpy view per plane over a buffer, no copy;
- modifiers: ``modifier_name()`` / ``parse_modifier()`` for display and
  command lines, ``pair_text()`` and ``gst_drm_format()`` for the
  (format, modifier) pairs negotiation and GStreamer's ``DMA_DRM`` caps use.

Names follow ``drm_fourcc.h``: a DRM format names its components from the
most significant bit of a little-endian word, so ``XRGB8888`` is B, G, R, X
in memory (GStreamer ``BGRx``, FFmpeg ``bgr0``) and ``RGB888`` is B, G, R
(GStreamer ``BGR``, FFmpeg ``bgr24``). GStreamer and FFmpeg name the bytes
in memory order.

numpy is imported only by ``plane_views()``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from numpy.typing import NDArray

LINEAR: int = 0
INVALID: int = 0x00FFFFFFFFFFFFFF  # DRM_FORMAT_MOD_INVALID: "no modifier given", the driver picks (implicit)

_U64 = (1 << 64) - 1


def fourcc_code(chars: str) -> int:
    """The DRM fourcc of four characters, as drm_fourcc.h's ``fourcc_code(a, b, c, d)`` (``"NV12"`` -> 0x3231564E)."""
    if len(chars) != 4 or not chars.isascii():
        raise ValueError(f"a fourcc is 4 ASCII characters (pad with spaces, e.g. 'R8  '), not {chars!r}")
    return ord(chars[0]) | ord(chars[1]) << 8 | ord(chars[2]) << 16 | ord(chars[3]) << 24


def fourcc_chars(code: int) -> str:
    """The four characters of a DRM fourcc code (0x3231564E -> ``"NV12"``; R8 keeps its spaces: ``"R8  "``)."""
    return "".join(chr((code >> shift) & 0xFF) for shift in (0, 8, 16, 24))


# -- the format table ---------------------------------------------------------


@dataclass(frozen=True)
class PlaneFormat:
    """One plane of a format: what a row of it holds and how numpy sees it.

    A row of a ``W``-pixel-wide frame holds ``ceil(ceil(W / hsub) / block_width)``
    blocks of ``bytes_per_block`` bytes; the plane has ``ceil(H / vsub)`` rows.
    The numpy view of a block is ``components`` samples of ``dtype``
    (little-endian), so ``components * itemsize == bytes_per_block``.
    """

    bytes_per_block: int
    hsub: int
    vsub: int
    components: int
    dtype: str
    block_width: int = 1
    role: str = ""  # what the plane holds ("Y", "UV", "BGRX" in memory order): named in errors

    def row_bytes(self, width: int) -> int:
        """Bytes of the pixels of one row of a ``width``-pixel-wide frame (no padding)."""
        return self.blocks(width) * self.bytes_per_block

    def blocks(self, width: int) -> int:
        """Blocks in one row of a ``width``-pixel-wide frame (odd sizes round up)."""
        return _ceil_div(_ceil_div(width, self.hsub), self.block_width)

    def rows(self, height: int) -> int:
        """Rows of this plane in a ``height``-row frame (odd sizes round up)."""
        return _ceil_div(height, self.vsub)


@dataclass(frozen=True)
class Format:
    """A pixel format: its DRM name and fourcc, its planes, and its GStreamer/FFmpeg names (None: none exists)."""

    name: str
    fourcc: int
    planes: tuple[PlaneFormat, ...]
    bits_per_sample: int
    gst: str | None
    av: str | None
    aliases: tuple[str, ...] = ()

    @property
    def fourcc_chars(self) -> str:
        """The fourcc as its four characters (``"XR24"`` for XRGB8888)."""
        return fourcc_chars(self.fourcc)


def _u8(bytes_per_block: int, role: str, *, hsub: int = 1, vsub: int = 1, block_width: int = 1) -> PlaneFormat:
    return PlaneFormat(bytes_per_block, hsub, vsub, bytes_per_block, "uint8", block_width, role)


def _packed(name: str, chars: str, memory_order: str, gst: str | None, av: str | None) -> Format:
    """A one-plane format of 8-bit components, one byte per component in ``memory_order``."""
    return Format(name, fourcc_code(chars), (_u8(len(memory_order), memory_order),), 8, gst, av)


def _yuv(
    name: str,
    chars: str,
    roles: tuple[str, ...],
    hsub: int,
    vsub: int,
    gst: str | None,
    av: str | None,
    aliases: tuple[str, ...] = (),
) -> Format:
    """An 8-bit planar (3 planes) or semi-planar (Y + one interleaved chroma plane) YCbCr format."""
    luma = _u8(1, roles[0])
    chroma = tuple(_u8(len(role), role, hsub=hsub, vsub=vsub) for role in roles[1:])
    return Format(name, fourcc_code(chars), (luma, *chroma), 8, gst, av, aliases)


_TABLE: tuple[Format, ...] = (
    # Greyscale / single channel.
    Format("R8", fourcc_code("R8  "), (_u8(1, "R"),), 8, "GRAY8", "gray", ("GREY", "GRAY8")),
    Format("R16", fourcc_code("R16 "), (PlaneFormat(2, 1, 1, 1, "uint16", role="R"),), 16, "GRAY16_LE", "gray16le"),
    # [15:0] G:R little endian: R first in memory. GStreamer (1.22) and FFmpeg have no such format.
    Format("GR88", fourcc_code("GR88"), (_u8(2, "RG"),), 8, None, None),
    Format("RG88", fourcc_code("RG88"), (_u8(2, "GR"),), 8, None, None),
    # Packed RGB: DRM names from the most significant byte, memory order is the reverse.
    _packed("RGB888", "RG24", "BGR", "BGR", "bgr24"),
    _packed("BGR888", "BG24", "RGB", "RGB", "rgb24"),
    _packed("XRGB8888", "XR24", "BGRX", "BGRx", "bgr0"),
    _packed("XBGR8888", "XB24", "RGBX", "RGBx", "rgb0"),
    _packed("ARGB8888", "AR24", "BGRA", "BGRA", "bgra"),
    _packed("ABGR8888", "AB24", "RGBA", "RGBA", "rgba"),
    # [15:0] R:G:B 5:6:5 little endian: one uint16 per pixel (bits_per_sample: R and B; G has 6).
    Format("RGB565", fourcc_code("RG16"), (PlaneFormat(2, 1, 1, 1, "uint16", role="RGB565"),), 5, "RGB16", "rgb565le"),
    # Semi-planar YCbCr: Y, then one plane of interleaved chroma (NV12: Cb first in memory).
    _yuv("NV12", "NV12", ("Y", "UV"), 2, 2, "NV12", "nv12"),
    _yuv("NV21", "NV21", ("Y", "VU"), 2, 2, "NV21", "nv21"),
    _yuv("NV16", "NV16", ("Y", "UV"), 2, 1, "NV16", "nv16"),
    _yuv("NV61", "NV61", ("Y", "VU"), 2, 1, "NV61", None),
    _yuv("NV24", "NV24", ("Y", "UV"), 1, 1, "NV24", "nv24"),
    # Planar YCbCr: Y, Cb, Cr (YVU: Y, Cr, Cb).
    _yuv("YUV420", "YU12", ("Y", "U", "V"), 2, 2, "I420", "yuv420p", ("I420", "IYUV")),
    _yuv("YVU420", "YV12", ("Y", "V", "U"), 2, 2, "YV12", None, ("YV12",)),
    _yuv("YUV422", "YU16", ("Y", "U", "V"), 2, 1, "Y42B", "yuv422p", ("I422",)),
    _yuv("YUV444", "YU24", ("Y", "U", "V"), 1, 1, "Y444", "yuv444p", ("I444",)),
    # Packed 4:2:2: one 4-byte block per two pixels, in memory Y0 Cb Y1 Cr (YUYV) / Cb Y0 Cr Y1 (UYVY).
    Format("YUYV", fourcc_code("YUYV"), (_u8(4, "YUYV", block_width=2),), 8, "YUY2", "yuyv422", ("YUY2",)),
    Format("UYVY", fourcc_code("UYVY"), (_u8(4, "UYVY", block_width=2),), 8, "UYVY", "uyvy422"),
    # 10-bit semi-planar, each sample in the high 10 bits of a little-endian uint16.
    Format(
        "P010",
        fourcc_code("P010"),
        (
            PlaneFormat(2, 1, 1, 1, "uint16", role="Y"),
            PlaneFormat(4, 2, 2, 2, "uint16", role="UV"),
        ),
        10,
        "P010_10LE",
        "p010le",
    ),
)

FORMATS: dict[str, Format] = {fmt.name: fmt for fmt in _TABLE}

_ITEMSIZE = {"uint8": 1, "uint16": 2}


def _check_table() -> None:
    """The table's own contract, checked once at import (a wrong row fails here, not in a caller's view)."""
    seen: dict[str, str] = {}
    codes: dict[int, str] = {}
    for fmt in _TABLE:
        if fmt.fourcc in codes:
            raise AssertionError(f"{fmt.name} and {codes[fmt.fourcc]} share fourcc {fmt.fourcc_chars!r}")
        codes[fmt.fourcc] = fmt.name
        for name in (fmt.name, *fmt.aliases):
            if seen.setdefault(name, fmt.name) != fmt.name:
                raise AssertionError(f"{name!r} names both {seen[name]} and {fmt.name}")
        for index, plane in enumerate(fmt.planes):
            if plane.components * _ITEMSIZE[plane.dtype] != plane.bytes_per_block:
                raise AssertionError(f"{fmt.name} plane {index}: components x dtype != bytes_per_block")


_check_table()

_BY_GST: dict[str, Format] = {fmt.gst: fmt for fmt in _TABLE if fmt.gst}
_BY_AV: dict[str, Format] = {fmt.av: fmt for fmt in _TABLE if fmt.av}
_BY_CODE: dict[int, Format] = {fmt.fourcc: fmt for fmt in _TABLE}
# Exact spellings: fourcc characters (with or without their padding) and GStreamer names first, so that
# DRM names and aliases, set last, win should one ever spell another format's GStreamer name.
_BY_TEXT: dict[str, Format] = {}
for _fmt in _TABLE:
    for _text in (_fmt.fourcc_chars, _fmt.fourcc_chars.rstrip(), _fmt.gst):
        if _text:
            _BY_TEXT[_text] = _fmt
for _fmt in _TABLE:
    for _text in (*_fmt.aliases, _fmt.name):
        _BY_TEXT[_text] = _fmt
_BY_FOLDED: dict[str, Format] = {name.upper(): fmt for fmt in _TABLE for name in (fmt.name, *fmt.aliases)}


def parse_format(name_or_code: str | int | Format) -> Format:
    """The format a name or code means.

    Accepts a DRM name (``"NV12"``, ``"XRGB8888"``, ``"DRM_FORMAT_NV12"``),
    an alias (``"I420"``, ``"YV12"``, ``"GREY"``), a GStreamer name
    (``"BGRx"``), the four fourcc characters (``"XR24"``), or the fourcc
    as an int. DRM names and aliases also match case-insensitively;
    GStreamer names only exactly (``"RGB"`` and ``"BGR"`` are different
    formats). Raises ValueError listing the known names.
    """
    if isinstance(name_or_code, Format):
        return name_or_code
    if isinstance(name_or_code, int) and not isinstance(name_or_code, bool):
        try:
            return _BY_CODE[name_or_code]
        except KeyError:
            raise ValueError(
                f"unknown fourcc code 0x{name_or_code:08x} ({fourcc_chars(name_or_code & 0xFFFFFFFF)!r}): "
                f"bufbroker.formats knows {known_format_names()}"
            ) from None
    if not isinstance(name_or_code, str):
        raise TypeError(f"a format is a name or a fourcc code, not {type(name_or_code).__name__}")
    text = (name_or_code.strip() or name_or_code).removeprefix("DRM_FORMAT_")
    found = _BY_TEXT.get(text) or _BY_TEXT.get(name_or_code) or _BY_FOLDED.get(text.upper())
    if found is None:
        raise ValueError(f"unknown pixel format {name_or_code!r}: bufbroker.formats knows {known_format_names()}")
    return found


def known_format_names() -> str:
    """The DRM names and their aliases, for error messages."""
    return ", ".join(fmt.name + (f" ({'/'.join(fmt.aliases)})" if fmt.aliases else "") for fmt in _TABLE)


def from_gst(name: str) -> Format:
    """The format of a GStreamer ``video/x-raw`` format name (``"BGRx"`` -> XRGB8888); exact case."""
    try:
        return _BY_GST[name]
    except KeyError:
        raise ValueError(
            f"no DRM format for GStreamer format {name!r}: bufbroker.formats maps {sorted(_BY_GST)}"
        ) from None


def from_av(pix_fmt: str) -> Format:
    """The format of an FFmpeg/PyAV ``pix_fmt`` (``"bgr0"`` -> XRGB8888, ``"yuv420p"`` -> YUV420)."""
    try:
        return _BY_AV[pix_fmt]
    except KeyError:
        raise ValueError(
            f"no DRM format for FFmpeg pix_fmt {pix_fmt!r}: bufbroker.formats maps {sorted(_BY_AV)}"
        ) from None


# -- modifiers ----------------------------------------------------------------

VENDORS: dict[int, str] = {
    0x01: "INTEL",
    0x02: "AMD",
    0x03: "NVIDIA",
    0x04: "SAMSUNG",
    0x05: "QCOM",
    0x06: "VIVANTE",
    0x07: "BROADCOM",
    0x08: "ARM",
    0x09: "ALLWINNER",
    0x0A: "AMLOGIC",
    0x0B: "MTK",
    0x0C: "APPLE",
}
_VENDOR_IDS = {name: vendor for vendor, name in VENDORS.items()}


def fourcc_mod_code(vendor: int, value: int) -> int:
    """drm_fourcc.h's ``fourcc_mod_code``: the vendor in the top 8 bits, its own code in the low 56."""
    return (vendor << 56) | (value & 0x00FFFFFFFFFFFFFF)


# AFBC (ARM frame buffer compression) flags, drm_fourcc.h's AFBC_FORMAT_MOD_*.
_AFBC_BLOCKS = {1: "16x16", 2: "32x8", 3: "64x4", 4: "32x8_64x4"}
_AFBC_FLAGS = {
    1 << 4: "YTR",
    1 << 5: "SPLIT",
    1 << 6: "SPARSE",
    1 << 7: "CBR",
    1 << 8: "TILED",
    1 << 9: "SC",
    1 << 10: "DB",
    1 << 11: "BCH",
    1 << 12: "USM",
}


def arm_afbc(block: str = "16x16", *flags: str) -> int:
    """``DRM_FORMAT_MOD_ARM_AFBC(AFBC_FORMAT_MOD_BLOCK_SIZE_<block> | flags...)``."""
    blocks = {name: code for code, name in _AFBC_BLOCKS.items()}
    names = {name: bit for bit, name in _AFBC_FLAGS.items()}
    try:
        value = blocks[block]
        for flag in flags:
            value |= names[flag]
    except KeyError as missing:
        raise ValueError(
            f"unknown AFBC block size or flag {missing}: blocks {sorted(blocks)}, flags {sorted(names)}"
        ) from None
    return fourcc_mod_code(0x08, value)  # ARM, type AFBC (0) in bits 52..55


def nvidia_block_linear_2d(c: int, s: int, g: int, k: int, h: int) -> int:
    """``DRM_FORMAT_MOD_NVIDIA_BLOCK_LINEAR_2D(c, s, g, k, h)``: compression, sector layout, GOB kind, page kind, log2 block height."""
    return fourcc_mod_code(
        0x03, 0x10 | (h & 0xF) | (k & 0xFF) << 12 | (g & 0x3) << 20 | (s & 0x1) << 22 | (c & 0x7) << 23
    )


_GOBS = ("ONE", "TWO", "FOUR", "EIGHT", "SIXTEEN", "THIRTYTWO")

MODIFIER_NAMES: dict[int, str] = {
    LINEAR: "LINEAR",
    INVALID: "INVALID",
    fourcc_mod_code(0x01, 1): "I915_X_TILED",
    fourcc_mod_code(0x01, 2): "I915_Y_TILED",
    fourcc_mod_code(0x01, 3): "I915_Yf_TILED",
    fourcc_mod_code(0x01, 4): "I915_Y_TILED_CCS",
    fourcc_mod_code(0x01, 5): "I915_Yf_TILED_CCS",
    fourcc_mod_code(0x01, 6): "I915_Y_TILED_GEN12_RC_CCS",
    fourcc_mod_code(0x01, 7): "I915_Y_TILED_GEN12_MC_CCS",
    fourcc_mod_code(0x01, 8): "I915_Y_TILED_GEN12_RC_CCS_CC",
    fourcc_mod_code(0x01, 9): "I915_4_TILED",
    fourcc_mod_code(0x01, 10): "I915_4_TILED_DG2_RC_CCS",
    fourcc_mod_code(0x01, 11): "I915_4_TILED_DG2_MC_CCS",
    fourcc_mod_code(0x01, 12): "I915_4_TILED_DG2_RC_CCS_CC",
    fourcc_mod_code(0x01, 13): "I915_4_TILED_MTL_RC_CCS",
    fourcc_mod_code(0x01, 14): "I915_4_TILED_MTL_MC_CCS",
    fourcc_mod_code(0x01, 15): "I915_4_TILED_MTL_RC_CCS_CC",
    fourcc_mod_code(0x01, 16): "I915_4_TILED_LNL_CCS",
    fourcc_mod_code(0x01, 17): "I915_4_TILED_BMG_CCS",
    fourcc_mod_code(0x03, 1): "NVIDIA_TEGRA_TILED",
    **{fourcc_mod_code(0x03, 0x10 | v): f"NVIDIA_16BX2_BLOCK_{gob}_GOB" for v, gob in enumerate(_GOBS)},
    fourcc_mod_code(0x04, 1): "SAMSUNG_64_32_TILE",
    fourcc_mod_code(0x04, 2): "SAMSUNG_16_16_TILE",
    fourcc_mod_code(0x05, 1): "QCOM_COMPRESSED",
    fourcc_mod_code(0x05, 2): "QCOM_TILED2",
    fourcc_mod_code(0x05, 3): "QCOM_TILED3",
    fourcc_mod_code(0x06, 1): "VIVANTE_TILED",
    fourcc_mod_code(0x06, 2): "VIVANTE_SUPER_TILED",
    fourcc_mod_code(0x07, 1): "BROADCOM_VC4_T_TILED",
}
_NAMED_MODIFIERS: dict[str, int] = {name.upper(): code for code, name in MODIFIER_NAMES.items()}

_AFBC_TEXT = re.compile(r"ARM_AFBC\(([A-Z0-9_x,| ]*)\)", re.IGNORECASE)
_NVIDIA_BL_TEXT = re.compile(r"NVIDIA_BLOCK_LINEAR_2D\((\d+),(\d+),(\d+),(\d+),(\d+)\)", re.IGNORECASE)
_VENDOR_TEXT = re.compile(r"([A-Z]+):(0X[0-9A-F]+)", re.IGNORECASE)


def _afbc_name(modifier: int) -> str | None:
    value = modifier & 0x00FFFFFFFFFFFFFF
    if modifier >> 56 != 0x08 or value >> 52 != 0:  # ARM, type AFBC
        return None
    block = _AFBC_BLOCKS.get(value & 0xF)
    rest = value & ~0xF
    flags = [name for bit, name in _AFBC_FLAGS.items() if rest & bit]
    if block is None or rest & ~sum(_AFBC_FLAGS):
        return None  # bits this table does not know: print it as hex
    return f"ARM_AFBC({','.join([block, *flags])})"


def _nvidia_name(modifier: int) -> str | None:
    value = modifier & 0x00FFFFFFFFFFFFFF
    if modifier >> 56 != 0x03 or value & ~0x3FFFFFF or not value & 0x10 or value & 0xE0 or value & 0xF00:
        return None
    h, k, g, s, c = value & 0xF, (value >> 12) & 0xFF, (value >> 20) & 0x3, (value >> 22) & 0x1, (value >> 23) & 0x7
    return f"NVIDIA_BLOCK_LINEAR_2D({c},{s},{g},{k},{h})"


def modifier_name(modifier: int) -> str:
    """A display name for a modifier, which ``parse_modifier()`` reads back.

    Known ones by name (``"LINEAR"``, ``"I915_Y_TILED"``), ARM AFBC and
    NVIDIA block-linear ones decoded (``"ARM_AFBC(16x16,YTR)"``,
    ``"NVIDIA_BLOCK_LINEAR_2D(0,1,2,6,4)"``), other vendor codes as
    ``"AMD:0x0200000000000001"``, the rest as ``"0x%016x"``.
    """
    if not 0 <= modifier <= _U64:
        raise ValueError(f"a modifier is a u64, not {modifier}")
    named = MODIFIER_NAMES.get(modifier) or _afbc_name(modifier) or _nvidia_name(modifier)
    if named:
        return named
    vendor = VENDORS.get(modifier >> 56)
    return f"{vendor}:0x{modifier:016x}" if vendor else f"0x{modifier:016x}"


def parse_modifier(text: str | int) -> int:
    """The modifier a name or number means: ``"LINEAR"``, any ``modifier_name()``, kernel spellings
    (``"DRM_FORMAT_MOD_LINEAR"``, ``"I915_FORMAT_MOD_Y_TILED"``), ``"0x..."``, decimal, or an int."""
    if isinstance(text, int) and not isinstance(text, bool):
        if not 0 <= text <= _U64:
            raise ValueError(f"a modifier is a u64 (0 .. 2**64-1), not {text}")
        return text
    if not isinstance(text, str):
        raise TypeError(f"a modifier is a name or a number, not {type(text).__name__}")
    spelled = text.strip()
    key = spelled.upper().removeprefix("DRM_FORMAT_MOD_").replace("I915_FORMAT_MOD_", "I915_")
    if key in _NAMED_MODIFIERS:
        return _NAMED_MODIFIERS[key]
    if match := _AFBC_TEXT.fullmatch(spelled):
        block, *flags = (part.strip().upper() for part in re.split(r"[,|]", match.group(1)))
        return arm_afbc(block.lower(), *flags)
    if match := _NVIDIA_BL_TEXT.fullmatch(spelled):
        return nvidia_block_linear_2d(*(int(part) for part in match.groups()))
    if match := _VENDOR_TEXT.fullmatch(spelled):
        vendor, number = match.group(1).upper(), int(match.group(2), 16)
        if _VENDOR_IDS.get(vendor) != number >> 56:
            raise ValueError(f"modifier {text!r}: 0x{number:016x} is not a {vendor} modifier (its vendor byte differs)")
        return number
    try:
        number = int(spelled, 16) if spelled.lower().startswith("0x") else int(spelled, 10)
    except ValueError:
        raise ValueError(
            f"unknown modifier {text!r}: give a name (LINEAR, I915_X_TILED, I915_Y_TILED, I915_4_TILED, "
            "ARM_AFBC(16x16), ...), a 0x hex number or a decimal one"
        ) from None
    return parse_modifier(number)


def pair_text(fmt: str | Format, modifier: int) -> str:
    """A (format, modifier) pair as text: ``"NV12:LINEAR"``, ``"NV12:I915_Y_TILED"``, ``"NV12:0x0123..."``."""
    return f"{parse_format(fmt).name}:{modifier_name(modifier)}"


def parse_pair(text: str) -> tuple[Format, int]:
    """The inverse of ``pair_text()``; a bare format name means LINEAR."""
    name, _, modifier = text.partition(":")
    return parse_format(name), parse_modifier(modifier) if modifier else LINEAR


def gst_drm_format(fmt: str | Format, modifier: int) -> str:
    """GStreamer's ``DMA_DRM`` ``drm-format`` string: the four fourcc characters, then ``:0x%016x`` unless LINEAR.

    GStreamer spells the fourcc, not its own format name: XRGB8888 is
    ``"XR24"``, R8 ``"R8  "`` (the padding is part of it).
    """
    if parse_modifier(modifier) == INVALID:
        raise ValueError("GStreamer's drm-format cannot carry DRM_FORMAT_MOD_INVALID: fix the modifier first")
    modifier = parse_modifier(modifier)
    chars = parse_format(fmt).fourcc_chars
    return chars if modifier == LINEAR else f"{chars}:0x{modifier:016x}"


def parse_gst_drm_format(text: str) -> tuple[Format, int]:
    """The (format, modifier) of a GStreamer ``drm-format`` string (``"NV12:0x0100000000000002"``)."""
    chars, colon, modifier = text.partition(":")
    if len(chars) != 4 or (colon and not modifier.lower().startswith("0x")):
        raise ValueError(
            f"{text!r} is not a drm-format string: 4 fourcc characters, optionally ':0x' and 16 hex digits"
        )
    return parse_format(fourcc_code(chars)), int(modifier, 16) if colon else LINEAR


# -- layouts --------------------------------------------------------------------


@dataclass(frozen=True)
class PlaneLayout:
    """Where one plane is in the buffer: its first byte, the bytes from one row to the next, and the bytes it spans."""

    offset: int
    stride: int
    size: int  # stride * rows


@dataclass(frozen=True)
class Layout:
    """A frame's format, size, modifier and planes, as the SDK's layout dict says them."""

    format: str
    width: int
    height: int
    modifier: int
    planes: tuple[PlaneLayout, ...]

    @property
    def size(self) -> int:
        """The bytes a buffer of this layout takes: the end of its last plane, its last row's padding included."""
        return max((plane.offset + plane.size for plane in self.planes), default=0)

    @property
    def extent(self) -> int:
        """The byte after the last pixel of the furthest plane (LINEAR): the least size a buffer may have.

        Smaller than ``size`` by the last row's padding; it is what
        ``validate_layout()`` checks a buffer against.
        """
        fmt = FORMATS[self.format]
        return max(
            (
                _plane_end(plane.offset, plane.stride, spec.rows(self.height), spec.row_bytes(self.width))
                for plane, spec in zip(self.planes, fmt.planes, strict=False)
            ),
            default=0,
        )

    def to_dict(self) -> dict[str, Any]:
        """The SDK's layout dict: ``{"fourcc", "width", "height", "modifier", "planes": [{"offset", "stride"}]}``."""
        return {
            "fourcc": self.format,
            "width": self.width,
            "height": self.height,
            "modifier": self.modifier,
            "planes": [{"offset": plane.offset, "stride": plane.stride} for plane in self.planes],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Layout:
        """A Layout from the SDK's layout dict (``fourcc`` may be an alias: ``"I420"``, ``"GREY"``); not validated."""
        try:
            fmt = parse_format(d["fourcc"])
            width, height = int(d["width"]), int(d["height"])
        except KeyError as missing:
            raise LayoutError(f"a layout needs fourcc, width, height and planes; this one has no {missing}") from None
        except ValueError as error:
            raise LayoutError(str(error)) from None
        try:
            modifier = parse_modifier(d.get("modifier") or LINEAR)
        except ValueError as error:
            raise LayoutError(str(error)) from None
        planes = []
        for index, plane in enumerate(d.get("planes") or ()):
            offset, stride = int(plane.get("offset", 0)), int(plane.get("stride", 0))
            rows = fmt.planes[index].rows(height) if index < len(fmt.planes) else 0
            planes.append(PlaneLayout(offset, stride, stride * rows))
        return cls(fmt.name, width, height, modifier, tuple(planes))


def as_layout(layout: Layout | Mapping[str, Any]) -> Layout:
    """``layout`` as a Layout (a dict goes through ``Layout.from_dict``)."""
    return layout if isinstance(layout, Layout) else Layout.from_dict(layout)


def derive_layout(
    fmt: str | Format,
    width: int,
    height: int,
    *,
    modifier: int = LINEAR,
    align: int = 1,
    chroma_from_luma: bool = False,
) -> Layout:
    """The LINEAR layout of a ``width`` x ``height`` frame of ``fmt``, planes back to back.

    Each plane has ``ceil(height / vsub)`` rows of ``ceil(width / hsub)``
    samples (odd sizes round up) and its stride is its row's bytes rounded
    up to ``align`` (a power of two), plane by plane, as FFmpeg's
    ``av_image_fill_arrays()`` and GStreamer's defaults (``align=4``) do:
    1920x1080 NV12 is strides 1920/1920, offsets 0/2073600, 3110400 bytes;
    1280x720 I420 strides 1280/640/640, offsets 0/921600/1152000.
    (GStreamer pads an odd height to even before placing the chroma
    planes; this does not, as FFmpeg does not.)

    ``chroma_from_luma=True``: only the first plane's stride is rounded
    up; the others take the stride that plane would have at the padded
    width (I420: half the luma stride, NV12: the luma stride), the layout
    of one contiguous array PyAV's ``VideoFrame.from_numpy_buffer`` wraps
    without a copy and ``bufbroker.planes.packed_layout`` gives.

    A non-LINEAR ``modifier`` raises ValueError: the driver decides a
    tiled or compressed layout, and the exporter that allocated it must
    give its offsets and strides.
    """
    spec = parse_format(fmt)
    modifier = parse_modifier(modifier)
    if modifier != LINEAR:
        raise ValueError(
            f"derive_layout() derives LINEAR layouts only: the driver decides a {pair_text(spec, modifier)} "
            "layout, so the exporter that allocated it must give its offsets and strides (and validate_layout() checks them)"
        )
    if align < 1 or align & (align - 1):
        raise ValueError(f"align must be a power of two, not {align}")
    if width < 1 or height < 1:
        raise ValueError(f"a frame is at least 1x1 pixels, not {width}x{height}")
    planes: list[PlaneLayout] = []
    offset = 0
    padded_width = width
    for index, plane in enumerate(spec.planes):
        row_bytes = plane.row_bytes(width)
        if index == 0 or not chroma_from_luma:
            stride = _round_up(row_bytes, align)
            if index == 0:
                # The width the luma stride gives room for (its samples per row).
                padded_width = stride // plane.bytes_per_block * plane.block_width * plane.hsub
        else:
            stride = max(plane.row_bytes(padded_width), row_bytes)
        size = stride * plane.rows(height)
        planes.append(PlaneLayout(offset, stride, size))
        offset += size
    return Layout(spec.name, width, height, LINEAR, tuple(planes))


class LayoutError(ValueError):
    """A layout that does not fit its format or its buffer; the message names the plane and the rule."""


def _plane_label(fmt: Format, index: int) -> str:
    role = fmt.planes[index].role if index < len(fmt.planes) else "extra"
    return f"plane {index} ({role})"


def _plane_end(offset: int, stride: int, rows: int, row_bytes: int) -> int:
    """The byte after the last pixel of a plane (its last row needs no padding)."""
    return offset + stride * (rows - 1) + row_bytes if rows else offset


def validate_layout(layout: Layout | Mapping[str, Any], size: int | None = None) -> Layout:
    """Check a hand-given layout against its format (and a buffer of ``size`` bytes); return it as a Layout.

    Rules, each named in the LayoutError: the plane count is the format's
    (a non-LINEAR modifier may add planes, e.g. the CCS planes of
    compressed Intel layouts, so there it is at least the format's); for
    LINEAR: every offset is >= 0, every stride holds a row (stride >= the
    row's bytes), no two planes overlap, and every plane ends within
    ``size`` (its last row's padding may be missing, as ``numpy`` and
    ``export(layout=...)`` allow). A non-LINEAR layout's bytes are the
    driver's: only its plane count and that its planes start within
    ``size`` are checked.
    """
    result = as_layout(layout)
    fmt = FORMATS[result.format]
    what = f"{result.format} {result.width}x{result.height}"
    if result.width < 1 or result.height < 1:
        raise LayoutError(f"{what}: a frame is at least 1x1 pixels")
    linear = result.modifier == LINEAR
    count, needed = len(result.planes), len(fmt.planes)
    if count != needed and (linear or count < needed):
        roles = ", ".join(plane.role for plane in fmt.planes)
        rule = "" if linear else "at least "
        raise LayoutError(
            f"{what}: wrong plane count: {pair_text(fmt, result.modifier)} has {rule}{needed} planes ({roles}), "
            f"this layout gives {count}"
        )
    if not linear:
        for index, plane in enumerate(result.planes):
            if plane.offset < 0 or (size is not None and plane.offset >= size):
                raise LayoutError(
                    f"{what}: {_plane_label(fmt, index)} starts at byte {plane.offset}, past the end of the "
                    f"{size}-byte buffer"
                )
        return result
    ends: list[tuple[int, int, int]] = []  # (offset, end, index)
    for index, (plane, spec) in enumerate(zip(result.planes, fmt.planes, strict=True)):
        label = _plane_label(fmt, index)
        row_bytes = spec.row_bytes(result.width)
        if plane.offset < 0:
            raise LayoutError(f"{what}: {label} has a negative offset ({plane.offset})")
        if plane.stride < row_bytes:
            raise LayoutError(
                f"{what}: {label}: stride too small: {plane.stride} is shorter than a row "
                f"({spec.blocks(result.width)} x {spec.bytes_per_block} = {row_bytes} bytes)"
            )
        end = _plane_end(plane.offset, plane.stride, spec.rows(result.height), row_bytes)
        if size is not None and end > size:
            raise LayoutError(
                f"{what}: {label} ends past the end of the buffer: at byte {end}, the buffer has {size} "
                "(is the layout for another size, or was the buffer moved?)"
            )
        ends.append((plane.offset, end, index))
    ends.sort()
    for (_, end, first), (offset, _, second) in itertools.pairwise(ends):
        if offset < end:
            raise LayoutError(
                f"{what}: {_plane_label(fmt, second)} overlaps {_plane_label(fmt, first)}: it starts at byte "
                f"{offset}, before {_plane_label(fmt, first)} ends at byte {end}"
            )
    return result


def plane_views(buffer: Any, layout: Layout | Mapping[str, Any]) -> list[NDArray[Any]]:
    """One numpy view per plane over ``buffer``, no copy, strides honoured.

    ``buffer``: anything with the buffer protocol (a mapping's
    ``memoryview()``, an ``mmap``, a ``bytearray``); the views are
    read-only when it is. Shapes: NV12 Y ``(h, w)`` uint8 and UV
    ``(ceil(h/2), ceil(w/2), 2)``; RGB888 ``(h, w, 3)`` (B, G, R);
    XRGB8888 ``(h, w, 4)`` (B, G, R, X); R8 ``(h, w)``; YUYV
    ``(h, ceil(w/2), 4)``; P010 uint16 ``(h, w)`` and
    ``(ceil(h/2), ceil(w/2), 2)``; I420 Y, U, V 2-D. Multi-byte samples
    are little-endian. The layout is validated first (LayoutError); a
    non-LINEAR modifier is refused, its bytes being the driver's. The
    views keep the memory mapped: drop them before the mapping is closed
    or moved.
    """
    import numpy

    size = memoryview(buffer).nbytes
    result = as_layout(layout)
    if result.modifier != LINEAR:
        raise LayoutError(
            f"{result.format} {result.width}x{result.height} is tiled (modifier {modifier_name(result.modifier)}): "
            "its bytes are opaque to the CPU; map it through the driver (GStreamer, Vulkan, VA-API) or ask the "
            "exporter for LINEAR"
        )
    validate_layout(result, size)
    fmt = FORMATS[result.format]
    views: list[NDArray[Any]] = []
    for plane, spec in zip(result.planes, fmt.planes, strict=True):
        dtype = numpy.dtype(spec.dtype).newbyteorder("<")
        rows, blocks = spec.rows(result.height), spec.blocks(result.width)
        if spec.components == 1:
            shape: tuple[int, ...] = (rows, blocks)
            strides: tuple[int, ...] = (plane.stride, spec.bytes_per_block)
        else:
            shape = (rows, blocks, spec.components)
            strides = (plane.stride, spec.bytes_per_block, dtype.itemsize)
        views.append(numpy.ndarray(shape, dtype, buffer, plane.offset, strides))
    return views


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(value: int, align: int) -> int:
    return _ceil_div(value, align) * align
