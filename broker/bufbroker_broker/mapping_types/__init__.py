"""The mapping-type registry and the wire form of offers, matches, handles.

The registry is one dict filled by :func:`register_mapping_type`: the
built-in types, then every entry point in the ``bufbroker.mapping_types``
group (how third parties add a type without touching the core). Each type
is validated when it is registered, so an incomplete one stops the broker
at start-up.

On the wire an offer, match or handle is a oneof with one arm per built-in
type (named after the type) and a ``plugin`` arm (type name + Any) for the
rest; these helpers turn them into :class:`Spec` objects and back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import cast

from google.protobuf.message import Message

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core import format_pairs
from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.host_facts import HostFacts
from bufbroker_broker.core.mapping_type import AnyConverter, AnyMappingType, check_mapping_type
from bufbroker_broker.core.negotiate import Spec
from bufbroker_broker.core.principals import parse_principals

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "bufbroker.mapping_types"

MAPPING_TYPES: dict[str, AnyMappingType] = {}

# Arms of the Offer/Match/Handle oneofs that are built-in types.
_BUILTIN_ARMS = frozenset(f.name for f in pb.Offer.DESCRIPTOR.oneofs_by_name["kind"].fields) - {"plugin"}


def register_mapping_type(mapping_type: AnyMappingType) -> AnyMappingType:
    """Validate and add a type; a second type of the same name is refused."""
    check_mapping_type(mapping_type)
    existing = MAPPING_TYPES.get(mapping_type.name)
    if existing is not None and existing is not mapping_type:
        raise TypeError(f"two mapping types are named {mapping_type.name!r}; names must be unique")
    MAPPING_TYPES[mapping_type.name] = mapping_type
    return mapping_type


def load_mapping_types() -> dict[str, AnyMappingType]:
    """Register the built-ins and every installed entry point (idempotent)."""
    from bufbroker_broker.mapping_types.dmabuf import DMABUF
    from bufbroker_broker.mapping_types.memfd import MEMFD
    from bufbroker_broker.mapping_types.segments import SEGMENTS
    from bufbroker_broker.mapping_types.udmabuf import UDMABUF

    register_mapping_type(MEMFD)
    register_mapping_type(SEGMENTS)
    register_mapping_type(UDMABUF)
    register_mapping_type(DMABUF)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as error:  # a broken plugin must say which one it is
            raise TypeError(
                f"mapping type entry point {entry.name!r} ({entry.value}) failed to load: {error}"
            ) from error
        register_mapping_type(loaded)
    return MAPPING_TYPES


def load_converters(max_copy_bytes: int | None = None) -> tuple[AnyConverter, ...]:
    """The built-in converters (memfd/segments -> udmabuf, segments -> memfd), in trial order.

    ``max_copy_bytes``: the most the copying converter copies at one map (default: its own default).
    """
    from bufbroker_broker.mapping_types.converters import CONVERTERS, SegmentsToMemfdCopy

    if max_copy_bytes is None:
        return CONVERTERS
    return tuple(SegmentsToMemfdCopy(max_copy_bytes) if c.copies else c for c in CONVERTERS)


def offers_fd_kind(offers: Sequence[pb.Offer]) -> str:
    """The kind of fd (``memfd`` or ``dmabuf``) a buffer with these wire offers needs.

    Each type says which it takes (``fd_kind``, default memfd); empty
    offers mean memfd. Offers of different kinds cannot share one buffer.
    Unknown or empty arms are left for :func:`offers_from_wire` to refuse.
    """
    kinds: dict[str, list[str]] = {}
    for wire in offers:
        arm = wire.WhichOneof("kind")
        name = wire.plugin.type_name if arm == "plugin" else arm
        mapping_type = MAPPING_TYPES.get(name or "")
        if mapping_type is not None:
            kinds.setdefault(getattr(mapping_type, "fd_kind", "memfd"), []).append(name)
    if len(kinds) > 1:
        described = "; ".join(f"{', '.join(names)} take a {kind} fd" for kind, names in sorted(kinds.items()))
        raise InvalidArgument(
            f"these offers need different kinds of fd ({described}); register one buffer per kind of fd"
        )
    return next(iter(kinds), "memfd")


def host_support(mapping_type: AnyMappingType, host: HostFacts) -> tuple[bool, str]:
    """Whether this host can serve the type, and why (not): its optional ``host_support(host)``.

    A type without one works anywhere. Introspection and ``bufbroker doctor``
    ask; negotiation does not (a type's match reads ``ctx.host`` itself).
    """
    support = getattr(mapping_type, "host_support", None)
    if not callable(support):
        return True, ""
    supported, reason = support(host)
    return bool(supported), str(reason)


def compat_type() -> AnyMappingType:
    """memfd: what unaware importers accept and unaware exporters offer."""
    return MAPPING_TYPES["memfd"]


def _lookup(name: str, role: str, index: int) -> AnyMappingType:
    mapping_type = MAPPING_TYPES.get(name)
    if mapping_type is None:
        known = ", ".join(sorted(MAPPING_TYPES))
        raise InvalidArgument(f"{role} {index} names unknown mapping type {name!r}; this broker knows [{known}]")
    return mapping_type


def _type_and_message(
    wire: pb.Offer | pb.Match, role: str, message_attr: str, index: int
) -> tuple[AnyMappingType, Message]:
    """The mapping type a wire offer or match names, and its type's message.

    Runs on every Attach: error text is only formatted when it is raised.
    """
    arm = wire.WhichOneof("kind")
    if arm is None:
        raise InvalidArgument(f"{role} {index} is empty: set one mapping type arm (e.g. memfd)")
    if arm != "plugin":
        builtin: Message = getattr(wire, arm)
        return _lookup(arm, role, index), builtin
    mapping_type = _lookup(wire.plugin.type_name, role, index)
    message: Message = getattr(mapping_type, message_attr)()
    # An empty body asks with the type's defaults: a client that knows a
    # plugin type only by name (e.g. `bufbroker explain`) can still name it.
    if wire.plugin.body.type_url and not wire.plugin.body.Unpack(message):
        raise InvalidArgument(
            f"{role} {index}: the plugin body is a {wire.plugin.body.TypeName()!r}, but mapping type "
            f"{mapping_type.name!r} expects {message.DESCRIPTOR.full_name!r}"
        )
    return mapping_type, message


def offers_from_wire(offers: Sequence[pb.Offer], fd_sizes: tuple[int, ...], size: int) -> list[Spec]:
    """Resolve and validate an exporter's offers; empty means ``[memfd]``."""
    if not offers:
        return [Spec(compat_type(), compat_type().check_offer(pb.MemfdOffer(), fd_sizes, size))]
    specs = []
    for index, wire in enumerate(offers):
        mapping_type, message = _type_and_message(wire, "offer", "offer_message", index)
        restricted = parse_principals(wire.restricted_to, f"offer {index} restricted_to")
        pairs = format_pairs.pairs_from_wire(wire.formats, f"offer {index}")
        specs.append(Spec(mapping_type, mapping_type.check_offer(message, fd_sizes, size), restricted, pairs))
    return specs


def accept_from_wire(accept: Sequence[pb.Match], access: int) -> tuple[list[Spec], bool]:
    """Resolve an importer's accept list; returns (specs, is_compat).

    An empty list is a compat importer: it accepts memfd with ``access``
    (an Access value from the wire; check_match refuses any other number).
    """
    if not accept:
        match = pb.MemfdMatch(access=cast("pb.Access", access))
        return [Spec(compat_type(), compat_type().check_match(match))], True
    specs = []
    for index, wire in enumerate(accept):
        mapping_type, message = _type_and_message(wire, "match", "match_message", index)
        pairs = format_pairs.pairs_from_wire(wire.formats, f"match {index}")
        specs.append(Spec(mapping_type, mapping_type.check_match(message), formats=pairs))
    return specs, False


def _wrap(container: pb.Offer | pb.Handle, mapping_type: AnyMappingType, message: Message) -> None:
    if mapping_type.name in _BUILTIN_ARMS:
        arm: Message = getattr(container, mapping_type.name)
        arm.CopyFrom(message)
    else:
        container.plugin.type_name = mapping_type.name
        container.plugin.body.Pack(message)


def handle_to_wire(mapping_type: AnyMappingType, handle: Message) -> pb.Handle:
    wire = pb.Handle()
    _wrap(wire, mapping_type, handle)
    return wire


def offer_to_wire(spec: Spec) -> pb.Offer:
    """An offer as registered (normalised), for introspection; its message must be a protobuf message."""
    if not isinstance(spec.message, Message):
        raise TypeError(
            f"offer of mapping type {spec.type.name!r} holds a {type(spec.message).__name__}, not a message"
        )
    offer = pb.Offer()
    _wrap(offer, spec.type, spec.message)
    offer.restricted_to.extend(spec.restricted_to)
    for name, modifier in spec.formats:
        offer.formats.add(format=name, modifier=modifier)
    return offer
