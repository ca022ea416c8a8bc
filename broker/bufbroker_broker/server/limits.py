"""Bounded work per request: the caps every transport's requests are checked against.

Negotiation examines offers x accept pairs, and a segments offer's pairs
walk its extents, so an unbounded list lets one request hold the event loop
for seconds. Each cap is a setting (server/settings.py); Operations checks
them before any other work, whichever transport the request came by, and
each refusal names the setting and its value so an operator knows what to
raise.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, fields

from bufbroker.v1 import mapping_types_pb2 as mpb
from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.mapping_types.converters import DEFAULT_MAX_COPY_BYTES as DEFAULT_MAX_COPY_BYTES

# Defaults, shared by the settings' fields and a bare Operations (unit tests).
# Measured (one core, 2026-12): negotiation costs ~10-30 us per (offer, match) pair plus
# ~0.5 us per extent per pair, so the worst request is about max_offers x max_accept_entries
# pairs plus max_accept_entries x max_extents extent steps: with these defaults ~50 ms.
DEFAULT_MAX_OFFERS = 32
DEFAULT_MAX_ACCEPT_ENTRIES = 32
DEFAULT_MAX_EXTENTS = 1024
DEFAULT_MAX_LABELS = 64
DEFAULT_MAX_LABEL_BYTES = 16384
DEFAULT_MAX_NAME_LENGTH = 256
# Copies (segments->memfd-copy maps) run in worker threads, this many at once; one session may
# have this many waiting or running (server/operations.py).
DEFAULT_COPY_WORKERS = 2
DEFAULT_MAX_COPIES_PER_SESSION = 4
# (format, modifier) pairs on one offer or accept entry: a real device lists tens. Each examined
# (offer, match) pair intersects two such lists (a set lookup per offered pair).
DEFAULT_MAX_FORMAT_PAIRS = 64


@dataclass(frozen=True)
class RequestLimits:
    max_offers: int = DEFAULT_MAX_OFFERS
    max_accept_entries: int = DEFAULT_MAX_ACCEPT_ENTRIES
    max_extents: int = DEFAULT_MAX_EXTENTS
    max_labels: int = DEFAULT_MAX_LABELS
    max_label_bytes: int = DEFAULT_MAX_LABEL_BYTES
    max_name_length: int = DEFAULT_MAX_NAME_LENGTH
    copy_workers: int = DEFAULT_COPY_WORKERS
    max_copies_per_session: int = DEFAULT_MAX_COPIES_PER_SESSION
    max_format_pairs: int = DEFAULT_MAX_FORMAT_PAIRS

    @classmethod
    def of(cls, settings: object) -> RequestLimits:
        """The limits of a BrokerSettings (its fields of these names)."""
        return cls(**{f.name: int(getattr(settings, f.name)) for f in fields(cls)})

    def check_offers(self, offers: Sequence[mpb.Offer]) -> None:
        """At most max_offers offers, with at most max_extents extents (segments, udmabuf) in all of them.

        Every (offer, match) pair of a segments offer walks its extents, so
        the bound is on the extents of all offers together, not per offer.
        """
        _at_most(len(offers), self.max_offers, "offers", "max_offers")
        for index, offer in enumerate(offers):
            self.check_format_pairs(offer.formats, f"offer {index}")
        total = 0
        for offer in offers:
            arm = offer.WhichOneof("kind")
            extents = getattr(getattr(offer, arm), "extents", None) if arm and arm != "plugin" else None
            total += len(extents) if extents is not None else 0
        if total > self.max_extents:
            raise InvalidArgument(
                f"{total} extents in the offers; at most {self.max_extents} in all offers together (setting max_extents)"
            )

    def check_accept(self, accept: Sequence[object]) -> None:
        _at_most(len(accept), self.max_accept_entries, "accept entries", "max_accept_entries")
        for index, match in enumerate(accept):
            self.check_format_pairs(getattr(match, "formats", ()), f"match {index}")

    def check_format_pairs(self, pairs: Sized, where: str) -> None:
        """At most max_format_pairs (format, modifier) pairs on one offer, match or stream."""
        _at_most(len(pairs), self.max_format_pairs, f"(format, modifier) pairs on {where}", "max_format_pairs")

    def check_labels(self, labels: Mapping[str, str], what: str = "labels") -> None:
        """At most max_labels labels whose keys and values hold at most max_label_bytes (UTF-8) in all."""
        _at_most(len(labels), self.max_labels, what, "max_labels")
        total = 0
        for key, value in labels.items():
            total += len(key.encode()) + len(value.encode())
        if total > self.max_label_bytes:
            raise InvalidArgument(
                f"{what} hold {total} bytes (keys and values); at most {self.max_label_bytes} (setting max_label_bytes)"
            )

    def check_name(self, name: str, what: str = "buffer name") -> None:
        """A buffer name (or stream or session name, ``what``): at most max_name_length characters,
        no control or format (bidi) characters."""
        if len(name) > self.max_name_length:
            raise InvalidArgument(
                f"{what} is {len(name)} characters; at most {self.max_name_length} (setting max_name_length)"
            )
        for index, char in enumerate(name):
            if unicodedata.category(char) in ("Cc", "Cf"):
                called = unicodedata.name(char, "a control character")
                raise InvalidArgument(
                    f"{what} has U+{ord(char):04X} ({called}) at index {index}: control and format "
                    "(bidi) characters are refused; use printable text"
                )


def _at_most(count: int, limit: int, what: str, setting: str) -> None:
    if count > limit:
        raise InvalidArgument(f"{count} {what}; at most {limit} (setting {setting})")
