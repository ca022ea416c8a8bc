"""Offers and accept lists by name, and offers described as plain data: the HTTP and CLI forms.

A name is ``TYPE``, ``TYPE:ACCESS`` (read, read_write) and optionally
``/PAIR+PAIR...``: the (format, modifier) pairs of the entry, each
``FORMAT`` or ``FORMAT:MODIFIER`` (``memfd/NV12+XRGB8888``,
``dmabuf:read/NV12:I915_Y_TILED+NV12:LINEAR``).

The protobuf codec itself (wire Offer/Match <-> the core's Spec) is
bufbroker_broker.mapping_types; this module builds wire messages from the
names people type (``memfd``, ``segments:read``) and describes wire offers
for JSON, using that codec's type registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict

from bufbroker import formats
from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker import mapping_types
from bufbroker_broker.core.errors import InvalidArgument


def _spec_by_name(container: Any, name: str, message_attr: str, access_field: str, access: int) -> Any:
    """Fill one Offer or Match oneof for a type given by name, with its access."""
    arms = {f.name for f in container.DESCRIPTOR.oneofs_by_name["kind"].fields} - {"plugin"}
    if name in arms:
        message = getattr(container, name)
        message.SetInParent()
        if access and access_field in message.DESCRIPTOR.fields_by_name:
            setattr(message, access_field, access)
        return container
    container.plugin.type_name = name
    mapping_type = mapping_types.MAPPING_TYPES.get(name)
    if mapping_type is not None:  # unknown names are left for the broker to refuse, with its list
        message = getattr(mapping_type, message_attr)()
        if access and access_field in message.DESCRIPTOR.fields_by_name:
            setattr(message, access_field, access)
        container.plugin.body.Pack(message)
    return container


def offers_by_name(names: Sequence[str]) -> list[mpb.Offer]:
    """Offers from ``TYPE`` or ``TYPE:read`` / ``TYPE:read_write`` (the most an importer gets), then ``/PAIRS``."""
    offers = []
    for entry in names:
        typed, pairs = _split_pairs(entry)
        name, _, access = typed.partition(":")
        offer = _spec_by_name(mpb.Offer(), name.strip(), "offer_message", "max_access", access_by_name(access))
        offer.formats.extend(pairs)
        offers.append(offer)
    return offers


def accept_by_name(names: Sequence[str], access: int) -> list[mpb.Match]:
    """An accept list from type names (each maybe with ``/PAIRS``), each asking for ``access``."""
    accept = []
    for entry in names:
        name, pairs = _split_pairs(entry)
        match = _spec_by_name(mpb.Match(), name.strip(), "match_message", "access", access)
        match.formats.extend(pairs)
        accept.append(match)
    return accept


def _split_pairs(entry: str) -> tuple[str, list[mpb.FormatPair]]:
    """``TYPE[:ACCESS]/F[:M]+F[:M]`` -> the part before the slash, and the pairs after it."""
    typed, slash, listed = entry.partition("/")
    if not slash:
        return entry, []
    pairs = []
    for text in listed.split("+"):
        try:
            fmt, modifier = formats.parse_pair(text.strip())
        except ValueError as error:
            raise InvalidArgument(f"{entry!r}: {error}") from None
        pairs.append(mpb.FormatPair(format=fmt.name, modifier=modifier))
    return typed, pairs


def access_by_name(name: str) -> int:
    values = {"": mpb.ACCESS_UNSPECIFIED, "read": mpb.ACCESS_READ, "read_write": mpb.ACCESS_READ_WRITE}
    if name not in values:
        raise InvalidArgument(f"access {name!r} is not one of read, read_write")
    return values[name]


def offer_description(offer: mpb.Offer) -> tuple[str, dict[str, Any], list[str]]:
    """An offer as (type name, its options as a dict, restricted_to): what JSON shows."""
    arm = offer.WhichOneof("kind")
    restricted = list(offer.restricted_to)
    if arm is None:
        return "unknown", {}, restricted
    options: dict[str, Any] = {}
    if arm != "plugin":
        type_name = arm
        options = MessageToDict(getattr(offer, arm), preserving_proto_field_name=True)
    else:
        type_name = offer.plugin.type_name
        mapping_type = mapping_types.MAPPING_TYPES.get(type_name)
        if mapping_type is not None:
            message = mapping_type.offer_message()
            if offer.plugin.body.Unpack(message):
                options = MessageToDict(message, preserving_proto_field_name=True)
    if offer.formats:  # the (format, modifier) pairs, as FORMAT:MODIFIER
        options["formats"] = [formats.pair_text(pair.format, pair.modifier) for pair in offer.formats]
    return type_name, options, restricted
