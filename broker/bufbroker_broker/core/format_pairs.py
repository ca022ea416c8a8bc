"""(format, modifier) pairs in negotiation: checked on the way in, intersected exporter-first.

Wayland's linux-dmabuf feedback, GStreamer's drm-format caps and
PipeWire's format fixation all negotiate pairs, not formats alone: a
modifier changes what the bytes mean (tiled, compressed). The names and
codes come from the SDK's table (bufbroker.formats); this module is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bufbroker.formats import LayoutError, pair_text, parse_format, validate_layout
from bufbroker.v1 import broker_pb2 as pb
from bufbroker_broker.core.errors import InvalidArgument

# A pair as the core keeps it: the DRM format name and the modifier.
Pair = tuple[str, int]

# Planes of one frame: DRM formats have 1 to 4 (drm_fourcc.h's DRM_FORMAT_MAX_PLANES).
MAX_PLANES = 4


def pairs_from_wire(wire: Iterable[object], where: str) -> tuple[Pair, ...]:
    """The pairs of a wire Offer's or Match's ``formats``, names made canonical (aliases -> DRM names).

    ``where`` names the list in errors ("offer 0", "match 1"). Raises
    InvalidArgument for an unknown format or a duplicate; how many pairs
    a list may hold is the server's setting max_format_pairs, checked first.
    """
    pairs: list[Pair] = []
    for index, entry in enumerate(wire):
        name = getattr(entry, "format", "")
        modifier = int(getattr(entry, "modifier", 0))
        if not name:
            raise InvalidArgument(f"{where} formats[{index}] has no format: name one, e.g. NV12")
        try:
            fmt = parse_format(name)
        except ValueError as error:
            raise InvalidArgument(f"{where} formats[{index}]: {error}") from None
        pair = (fmt.name, modifier)
        if pair in pairs:
            raise InvalidArgument(f"{where} formats[{index}] repeats {text(pair)}: list each pair once")
        pairs.append(pair)
    return tuple(pairs)


def choose(offered: Sequence[Pair], accepted: Sequence[Pair]) -> Pair | None:
    """The first offered pair the importer accepts (the exporter's order wins), or None."""
    wanted = set(accepted)
    return next((pair for pair in offered if pair in wanted), None)


def text(pair: Pair) -> str:
    """``NV12:LINEAR``, ``NV12:I915_Y_TILED``, ``NV12:0x...``."""
    return pair_text(pair[0], pair[1])


def list_text(pairs: Sequence[Pair]) -> str:
    return "[" + ", ".join(text(pair) for pair in pairs) + "]"


def mismatch_reason(offered: Sequence[Pair], accepted: Sequence[Pair]) -> str:
    """Why an offer and a match have no pair in common, naming both lists."""
    return (
        f"formats: the exporter offers {list_text(offered)}, the importer accepts {list_text(accepted)}: "
        "no (format, modifier) pair in common"
    )


def check_layout(layout: pb.Layout | None, size: int, fd_count: int = 1) -> None:
    """A buffer's layout against its format's rules (bufbroker.formats.validate_layout); InvalidArgument if broken.

    A layout that lists no planes only names the pixels (format and size)
    and is kept as it is; one with planes must fit the format and ``size``.
    Planes in fds of their own (segments of several memfds) have offsets
    into their own fd, which a Layout does not say: not checked, but no
    layout may list more planes than a DRM format has (4), so a hostile
    one costs the loop nothing to look at.
    """
    if layout is None:
        return
    if len(layout.planes) > MAX_PLANES:
        raise InvalidArgument(
            f"layout: {len(layout.planes)} planes; a frame has at most {MAX_PLANES} (DRM formats have 1 to 4)"
        )
    if not layout.planes or fd_count > 1:
        return
    described = {
        "fourcc": layout.fourcc,
        "width": layout.width,
        "height": layout.height,
        "modifier": layout.modifier,
        "planes": [{"offset": plane.offset, "stride": plane.stride} for plane in layout.planes],
    }
    try:
        validate_layout(described, size)
    except LayoutError as error:
        raise InvalidArgument(f"layout: {error}") from None
