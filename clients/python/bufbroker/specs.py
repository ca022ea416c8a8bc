"""Typed offers and accept-list entries.

Plain type names ("memfd") work everywhere a spec does; these classes carry
the options of one type. Each builds its own wire message, so an offer of
one type cannot be read as another.

Every built-in spec takes ``formats``: the (format, modifier) pairs the
buffer can be read as through it (an offer: in the exporter's order of
preference) or the importer can use (a match). Each pair is a string,
``"NV12"`` (LINEAR), ``"NV12:I915_Y_TILED"``, ``"NV12:0x0100000000000002"``,
or a tuple ``("NV12", modifier)``; names are bufbroker.formats'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from bufbroker import formats as format_table
from bufbroker.v1 import mapping_types_pb2 as pb

FormatPair = str | tuple[str, int]

_ACCESS: dict[str | None, pb.Access] = {
    "read": pb.ACCESS_READ,
    "read_write": pb.ACCESS_READ_WRITE,
    None: pb.ACCESS_UNSPECIFIED,
}


def access_value(access: str | None) -> pb.Access:
    """The wire Access for "read", "read_write" or None (unspecified); ValueError otherwise."""
    try:
        return _ACCESS[access]
    except KeyError:
        raise ValueError(f"access must be 'read' or 'read_write', not {access!r}") from None


def format_pairs_to_wire(pairs: Sequence[FormatPair]) -> list[pb.FormatPair]:
    """Wire FormatPairs from ``"NV12"``, ``"NV12:LINEAR"`` or ``("NV12", 0)``; ValueError naming a bad one."""
    wire = []
    for pair in pairs:
        if isinstance(pair, str):
            fmt, modifier = format_table.parse_pair(pair)
        else:
            name, modifier_value = pair
            fmt, modifier = format_table.parse_format(name), format_table.parse_modifier(modifier_value)
        wire.append(pb.FormatPair(format=fmt.name, modifier=modifier))
    return wire


@dataclass(frozen=True)
class Extent:
    """``length`` bytes at ``offset`` of the export's fd number ``fd_index``."""

    offset: int
    length: int
    fd_index: int = 0


@dataclass(frozen=True)
class Memfd:
    """The whole memfd. As an offer, ``access`` is the most importers get
    (unset: ``read``, unless the export passes ``allow_write=True``);
    ``restricted_to`` limits the offer to principals (uid:N, gid:N, same-uid, any).
    As a match, ``allow_copy`` lets a read importer take a copy the broker
    makes at each map when the exporter offers only segments that are not
    one whole memfd."""

    access: str | None = None
    restricted_to: Sequence[str] = ()
    allow_copy: bool = False
    formats: Sequence[FormatPair] = ()
    name = "memfd"

    def offer(self) -> pb.Offer:
        return pb.Offer(
            memfd=pb.MemfdOffer(max_access=access_value(self.access)),
            restricted_to=list(self.restricted_to),
            formats=format_pairs_to_wire(self.formats),
        )

    def match(self, default_access: str) -> pb.Match:
        return pb.Match(
            memfd=pb.MemfdMatch(access=access_value(self.access or default_access), allow_copy=self.allow_copy),
            formats=format_pairs_to_wire(self.formats),
        )


@dataclass(frozen=True)
class Segments:
    """Extents of the export's memfd(s). No extents: each fd whole."""

    extents: Sequence[Extent] = field(default_factory=tuple)
    access: str | None = None
    max_extents: int = 0  # as a match: the most extents the importer handles
    restricted_to: Sequence[str] = ()  # as an offer: only these principals see it
    formats: Sequence[FormatPair] = ()
    name = "segments"

    def offer(self) -> pb.Offer:
        return pb.Offer(
            segments=pb.SegmentsOffer(
                extents=[pb.Extent(fd_index=e.fd_index, offset=e.offset, length=e.length) for e in self.extents],
                max_access=access_value(self.access),
            ),
            restricted_to=list(self.restricted_to),
            formats=format_pairs_to_wire(self.formats),
        )

    def match(self, default_access: str) -> pb.Match:
        return pb.Match(
            segments=pb.SegmentsMatch(access=access_value(self.access or default_access), max_extents=self.max_extents),
            formats=format_pairs_to_wire(self.formats),
        )


@dataclass(frozen=True)
class Udmabuf:
    """A kernel dma-buf the broker builds from the export's memfd(s) (/dev/udmabuf).

    As an offer, ``extents`` (default: each fd whole) must start on page
    boundaries; a udmabuf is always mappable writable, so it matches only
    when the offer allows writes (``access="read_write"`` or the export's
    ``allow_write=True``): read-only offers, the default, never match. As a match, ``access`` is what the importer asks for.
    """

    extents: Sequence[Extent] = field(default_factory=tuple)
    access: str | None = None
    restricted_to: Sequence[str] = ()
    formats: Sequence[FormatPair] = ()
    name = "udmabuf"

    def offer(self) -> pb.Offer:
        return pb.Offer(
            udmabuf=pb.UdmabufOffer(
                extents=[pb.Extent(fd_index=e.fd_index, offset=e.offset, length=e.length) for e in self.extents],
                max_access=access_value(self.access),
            ),
            restricted_to=list(self.restricted_to),
            formats=format_pairs_to_wire(self.formats),
        )

    def match(self, default_access: str) -> pb.Match:
        return pb.Match(
            udmabuf=pb.UdmabufMatch(access=access_value(self.access or default_access)),
            formats=format_pairs_to_wire(self.formats),
        )


@dataclass(frozen=True)
class Dmabuf:
    """A dma-buf fd the exporter made (``bufbroker.dmabuf.heap_alloc`` or a driver).

    As an offer, ``device`` is the PCI address whose memory backs it and
    ``requires_p2p`` says only a peer device can reach it. As a match,
    ``device`` is the importing PCI device (empty: the CPU) and
    ``accepts_p2p`` whether it can do peer-to-peer DMA.
    """

    access: str | None = None
    device: str = ""
    requires_p2p: bool = False  # as an offer
    accepts_p2p: bool = False  # as a match
    restricted_to: Sequence[str] = ()
    formats: Sequence[FormatPair] = ()
    name = "dmabuf"

    def offer(self) -> pb.Offer:
        return pb.Offer(
            dmabuf=pb.DmabufOffer(
                max_access=access_value(self.access), device=self.device, requires_p2p=self.requires_p2p
            ),
            restricted_to=list(self.restricted_to),
            formats=format_pairs_to_wire(self.formats),
        )

    def match(self, default_access: str) -> pb.Match:
        return pb.Match(
            dmabuf=pb.DmabufMatch(
                access=access_value(self.access or default_access), device=self.device, accepts_p2p=self.accepts_p2p
            ),
            formats=format_pairs_to_wire(self.formats),
        )


@dataclass(frozen=True)
class Plugin:
    """A third-party mapping type: its name and its own protobuf message."""

    type_name: str
    message: Any
    name = "plugin"

    def offer(self) -> pb.Offer:
        offer = pb.Offer()
        offer.plugin.type_name = self.type_name
        offer.plugin.body.Pack(self.message)
        return offer

    def match(self, default_access: str) -> pb.Match:
        match = pb.Match()
        match.plugin.type_name = self.type_name
        match.plugin.body.Pack(self.message)
        return match


Spec = str | Memfd | Segments | Udmabuf | Dmabuf | Plugin


class _SpecObject(Protocol):
    def offer(self) -> pb.Offer: ...
    def match(self, default_access: str) -> pb.Match: ...


_BY_NAME: dict[str, type[_SpecObject]] = {"memfd": Memfd, "segments": Segments, "udmabuf": Udmabuf, "dmabuf": Dmabuf}
# The built-in types' names, for clients that build accept lists from text (`bufbroker explain`).
TYPE_NAMES: tuple[str, ...] = tuple(_BY_NAME)


def _resolve(spec: Spec) -> _SpecObject:
    if isinstance(spec, str):
        cls = _BY_NAME.get(spec)
        if cls is None:
            raise ValueError(
                f"unknown mapping type {spec!r}: use one of {sorted(_BY_NAME)} or a spec object "
                "(bufbroker.Memfd(), bufbroker.Segments(), bufbroker.Udmabuf(), bufbroker.Dmabuf(), "
                "bufbroker.Plugin(...))"
            )
        return cls()
    if isinstance(spec, Memfd | Segments | Udmabuf | Dmabuf | Plugin):
        return spec
    raise TypeError(f"expected a mapping type name or spec, got {spec!r}")


def spec_from_text(text: str) -> Spec:
    """A spec from ``TYPE``, ``TYPE:ACCESS`` and optionally ``/PAIR+PAIR``: ``memfd:read/NV12+XRGB8888:LINEAR``.

    A name that is not built in stays a name (a plugin type's, given alone).
    """
    typed, _, listed = text.strip().partition("/")
    name, _, access = (part.strip() for part in typed.partition(":"))
    pairs = [pair.strip() for pair in listed.split("+") if pair.strip()]
    if name not in _BY_NAME:
        if access or pairs:
            raise ValueError(f"{text!r}: access and formats are for the built-in types {sorted(_BY_NAME)}")
        return name
    spec = spec_by_name(name, pairs)
    if access:
        access_value(access)
        spec = replace(spec, access=access)
    return spec


def spec_by_name(name: str, formats: Sequence[FormatPair] = ()) -> Memfd | Segments | Udmabuf | Dmabuf:
    """The built-in spec named ``name`` with ``formats`` (ValueError for a name that is not built in)."""
    builtin: dict[str, type[Memfd | Segments | Udmabuf | Dmabuf]] = {
        "memfd": Memfd,
        "segments": Segments,
        "udmabuf": Udmabuf,
        "dmabuf": Dmabuf,
    }
    cls = builtin.get(name)
    if cls is None:
        raise ValueError(f"unknown mapping type {name!r}: use one of {sorted(builtin)}")
    return cls(formats=tuple(formats))


def with_formats(specs: Sequence[Spec] | None, pairs: Sequence[FormatPair]) -> list[Spec]:
    """``specs`` (None: ``["memfd"]``) with ``pairs`` on each built-in entry that lists no formats of its own."""
    result: list[Spec] = []
    for spec in specs or ("memfd",):
        resolved = _resolve(spec)
        if isinstance(resolved, Memfd | Segments | Udmabuf | Dmabuf) and not resolved.formats:
            result.append(replace(resolved, formats=tuple(pairs)))
        else:
            result.append(spec)
    return result


def without_formats(specs: Sequence[Spec]) -> list[Spec]:
    """``specs`` with the built-in entries' formats dropped (a move to another format re-tags them)."""
    result: list[Spec] = []
    for spec in specs:
        resolved = _resolve(spec)
        if isinstance(resolved, Memfd | Segments | Udmabuf | Dmabuf) and resolved.formats:
            result.append(replace(resolved, formats=()))
        else:
            result.append(spec)
    return result


def offers_to_wire(offers: Sequence[Spec] | None, allow_write: bool = False) -> list[pb.Offer]:
    """The wire offers for an exporter's ordered list (names or spec objects); None is empty.

    An offer that leaves ``access`` unset grants importers read only (the
    broker's default). ``allow_write`` makes those offers ``read_write``
    (names and specs without an access; an explicit ``access="read"`` stays
    read) and turns no offers into ``[Memfd(access="read_write")]``.
    """
    if not allow_write:
        return [_resolve(s).offer() for s in offers or ()]
    return [_writable(_resolve(s)).offer() for s in offers or ("memfd",)]


def _writable(spec: _SpecObject) -> _SpecObject:
    if isinstance(spec, Memfd | Segments | Udmabuf | Dmabuf) and spec.access is None:
        return replace(spec, access="read_write")
    return spec


def accept_to_wire(accept: Sequence[Spec] | None, access: str) -> list[pb.Match]:
    """The wire accept list for an importer's ordered list; entries without an access get ``access``."""
    access_value(access)
    return [_resolve(s).match(access) for s in accept or ()]
