"""MappingType: one way to hand a buffer out (the kernel's
``struct dma_buf_mapping_type``).

Each type is a singleton object with its own offer, match and handle
protobuf messages. Types are compared by identity, never by name. A type
module under bufbroker_broker/mapping_types/ exports exactly one instance;
the type registry (bufbroker_broker/mapping_types/__init__.py) validates
every type once, at start-up, with :func:`check_mapping_type`, so an
incomplete type is refused before the first RPC rather than on it.

A type is generic in its offer message, its match message and its map
parameters (what ``finish`` fixes and ``map`` reads). The broker holds
types of every kind side by side, as ``AnyMappingType``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from google.protobuf.message import Message

from bufbroker_broker.core.backing import Backing
from bufbroker_broker.core.host_facts import UNPROBED, HostFacts

OfferT = TypeVar("OfferT")
MatchT = TypeVar("MatchT")
ParamsT = TypeVar("ParamsT")
# A converter only reads its offers and matches.
SourceOfferT = TypeVar("SourceOfferT", contravariant=True)
TargetMatchT = TypeVar("TargetMatchT", contravariant=True)


@dataclass(frozen=True)
class Matched:
    """The pair matches; negotiation stops here."""


@dataclass(frozen=True)
class SoftMismatch:
    """The pair cannot be used, for an expected reason; negotiation goes on.

    The kernel's equivalent is a match callback returning -EOPNOTSUPP-like
    codes for things like access mode or p2p distance.
    """

    reason: str


MatchResult = Matched | SoftMismatch


@dataclass(frozen=True)
class MatchContext:
    """What a type's ``match`` may know about the importer, the buffer and the host.

    ``dry_run`` is True for a negotiation against a bare offers list with no
    buffer behind it (``explain`` before registering): the sizes, writability
    and seals are then placeholders, and a type checks only what it can
    without them.
    """

    importer_uid: int
    importer_gid: int
    buffer_size: int
    fd_sizes: tuple[int, ...]
    fd_writable: tuple[bool, ...]
    exporter_uid: int = -1
    # The seals of each fd (F_GET_SEALS at registration; 0 for non-memfds).
    fd_seals: tuple[int, ...] = ()
    # What the broker probed about this host at start: udmabuf, dma-heaps, PCI topology.
    host: HostFacts = UNPROBED
    dry_run: bool = False
    # The importer's supplementary gids (a ``gid:N`` principal matches these too).
    importer_groups: tuple[int, ...] = ()


@dataclass
class MapResult:
    """What ``map`` produces: a handle message and the fds to send.

    ``fds`` are sent in order. ``temporary`` lists the fds among them that
    ``map`` opened for this mapping alone; the caller closes them once they
    are sent (the kernel has then duplicated them into the message).
    ``retained`` lists fds ``map`` opened that the buffer keeps for later
    maps (in ``Backing.kept``, e.g. udmabuf's one dma-buf per buffer); the
    registry adopts them into its ledger and closes them when the backing
    goes away.
    """

    handle: Message
    fds: list[int]
    temporary: list[int] = field(default_factory=list)
    retained: list[int] = field(default_factory=list)


@runtime_checkable
class MappingType(Protocol[OfferT, MatchT, ParamsT]):
    """The contract of a mapping type. Who calls what:

    - ``check_offer`` / ``check_match``: the broker, on RegisterBuffer and
      Attach, before negotiation; raise InvalidArgument on bad input;
      return the (possibly normalised) message.
    - ``match``: :func:`bufbroker_broker.core.negotiate.negotiate`, for each pair of
      this type; return Matched or SoftMismatch, or raise a BrokerError to
      abort the whole attach (a real error must not be hidden). It reads
      only its arguments (the host from ``ctx.host``): no I/O.
    - ``finish``: negotiate, once, on the matched pair; returns the
      attachment's fixed map parameters (``Attachment.map_params``).
    - ``map`` / ``unmap``: the registry, on Map and Unmap (and Unmap for every
      mapping when an attachment goes away), with the buffer's backing and
      the attachment's map parameters. Every map is unmapped.
    - ``describe``: introspection; one line about the type.

    Optional members (looked up with getattr):

    - ``fd_kind``: the kind of fd a buffer offering this type must be
      registered with, ``"memfd"`` (the default) or ``"dmabuf"``; the
      broker validates the exporter's fds accordingly (host/fd_inspect.py).
    - ``host_support(host: HostFacts) -> (bool, reason)``: introspection and
      ``bufbroker doctor``; whether this host can serve the type and, if
      not, why.
    """

    # Read-only members (a plain class attribute satisfies each).
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def offer_message(self) -> type[OfferT]: ...

    @property
    def match_message(self) -> type[MatchT]: ...

    @property
    def handle_message(self) -> type[Message]: ...

    def check_offer(self, offer: OfferT, fd_sizes: Sequence[int], size: int) -> OfferT: ...

    def check_match(self, match: MatchT) -> MatchT: ...

    def match(self, offer: OfferT, match: MatchT, ctx: MatchContext) -> MatchResult: ...

    def finish(self, offer: OfferT, match: MatchT, ctx: MatchContext) -> ParamsT: ...

    def map(self, backing: Backing, params: ParamsT) -> MapResult: ...

    def unmap(self, backing: Backing, params: ParamsT) -> None: ...

    def describe(self) -> str: ...


# Types of every kind, side by side (the type registry, offers, attachments).
AnyMappingType = MappingType[Any, Any, Any]


@runtime_checkable
class Converter(Protocol[SourceOfferT, TargetMatchT, ParamsT]):
    """A way to hand out an offer of type ``source`` as type ``target``.

    The broker tries converters only after every direct (offer, match) pair
    failed (DESIGN.md section 3), so the exporter's own offers always win.
    Who calls what:

    - ``match``: :func:`bufbroker_broker.core.negotiate.negotiate`, for an offer of
      ``source`` and a match of ``target``; same contract as a type's match
      (Matched, SoftMismatch with the reason, or raise to abort; no I/O).
    - ``finish``: negotiate, once, on the matched pair: the map parameters.
    - ``map`` / ``unmap``: the registry, for attachments this converter
      produced (``Attachment.converter``), instead of the target type's;
      ``backing.kept`` is the target type's table.

    ``copies`` is True when a map copies the bytes; such converters are
    tried after every zero-copy one, and their ``map`` (O(size), blocking)
    runs in a worker thread, never on the event loop: it reads only its
    backing's fds (duplicates) and its params, and the registry records the
    result (``Registry.map(attachment, prepared=...)``). ``name`` is what
    traces show, e.g. ``segments->udmabuf``.
    """

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> AnyMappingType: ...

    @property
    def target(self) -> AnyMappingType: ...

    @property
    def copies(self) -> bool: ...

    def match(self, offer: SourceOfferT, match: TargetMatchT, ctx: MatchContext) -> MatchResult: ...

    def finish(self, offer: SourceOfferT, match: TargetMatchT, ctx: MatchContext) -> ParamsT: ...

    def map(self, backing: Backing, params: ParamsT) -> MapResult: ...

    def unmap(self, backing: Backing, params: ParamsT) -> None: ...


AnyConverter = Converter[Any, Any, Any]

REQUIRED_METHODS = ("check_offer", "check_match", "match", "finish", "map", "unmap", "describe")
REQUIRED_ATTRIBUTES = ("name", "description", "offer_message", "match_message", "handle_message")


def check_mapping_type(candidate: object) -> None:
    """Refuse an incomplete mapping type with a message that says what is missing.

    Like the kernel validating an ops table at export time, this runs once
    when the type is registered. A type that can map must also unmap.
    """
    label = getattr(candidate, "name", None) or repr(candidate)
    missing = [a for a in REQUIRED_ATTRIBUTES if not getattr(candidate, a, None)]
    missing += [m for m in REQUIRED_METHODS if not callable(getattr(candidate, m, None))]
    if missing:
        raise TypeError(
            f"mapping type {label!r} is incomplete: it lacks {', '.join(missing)}; "
            "a mapping type needs every member of bufbroker_broker.core.mapping_type.MappingType "
            "(map without unmap is refused)"
        )
    name = getattr(candidate, "name", None)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise TypeError(f"mapping type name {name!r} must be a short identifier like 'memfd'")
