"""Offers and accept lists by name, and offers described as plain data: the HTTP and CLI forms.

The protobuf codec itself (wire Offer/Match <-> the core's Spec) is
bufbroker_broker.mapping_types; this module builds wire messages from the
names people type (``memfd``, ``segments:read``) and describes wire offers
for JSON, using that codec's type registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict

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
    """Offers from ``TYPE`` or ``TYPE:read`` / ``TYPE:read_write`` (the most an importer gets)."""
    offers = []
    for entry in names:
        name, _, access = entry.partition(":")
        offers.append(_spec_by_name(mpb.Offer(), name.strip(), "offer_message", "max_access", access_by_name(access)))
    return offers


def accept_by_name(names: Sequence[str], access: int) -> list[mpb.Match]:
    """An accept list from type names, each asking for ``access``."""
    return [_spec_by_name(mpb.Match(), name.strip(), "match_message", "access", access) for name in names]


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
    if arm != "plugin":
        return arm, MessageToDict(getattr(offer, arm), preserving_proto_field_name=True), restricted
    mapping_type = mapping_types.MAPPING_TYPES.get(offer.plugin.type_name)
    options: dict[str, Any] = {}
    if mapping_type is not None:
        message = mapping_type.offer_message()
        if offer.plugin.body.Unpack(message):
            options = MessageToDict(message, preserving_proto_field_name=True)
    return offer.plugin.type_name, options, restricted
