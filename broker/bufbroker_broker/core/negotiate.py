"""negotiate(): pick one mapping type for an attachment.

This is the kernel RFC's ``dma_buf_match_mapping()`` as a pure function: no
I/O, no broker state, the same answer for the same input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bufbroker_broker.core import format_pairs
from bufbroker_broker.core.errors import BrokerError, NoCommonMappingType
from bufbroker_broker.core.mapping_type import AnyConverter, AnyMappingType, MatchContext, Matched, SoftMismatch
from bufbroker_broker.core.principals import describe_peer, principal_allowed
from bufbroker_broker.core.trace import TraceStep

__all__ = [
    "ERROR",
    "MATCHED",
    "SOFT_MISMATCH",
    "TYPE_DIFFERS",
    "Negotiation",
    "Spec",
    "TraceStep",
    "negotiate",
]

TYPE_DIFFERS = "type-differs"
SOFT_MISMATCH = "soft-mismatch"
MATCHED = "matched"
ERROR = "error"


@dataclass(frozen=True)
class Spec:
    """One offer or one accept-list entry: its type and its type's message.

    ``restricted_to`` (offers only) lists the principals the offer is
    visible to; empty means everyone. ``formats``: the (format, modifier)
    pairs it offers (exporter order) or accepts; empty means any.
    """

    type: AnyMappingType
    message: object  # the type's offer or match message
    restricted_to: tuple[str, ...] = ()
    formats: tuple[format_pairs.Pair, ...] = ()


@dataclass(frozen=True)
class Negotiation:
    """The outcome: the chosen pair, the type's map parameters, the trace."""

    map_type: AnyMappingType
    offer_index: int
    match_index: int
    map_params: object  # what the type's (or converter's) finish returned; its map reads it
    trace: tuple[TraceStep, ...]
    converter: AnyConverter | None = None  # set when a converter produced the match
    format: format_pairs.Pair | None = None  # the pair chosen, when both sides listed pairs


def negotiate(
    offers: Sequence[Spec], accept: Sequence[Spec], ctx: MatchContext, converters: Sequence[AnyConverter] = ()
) -> Negotiation:
    """Choose the mapping type for one attach.

    Args:
        offers: the exporter's offers, in the exporter's order of preference.
        accept: the importer's accept list, in its order. The caller turns an
            empty list (a compat importer) into ``[memfd]`` before calling.
        ctx: what the types' ``match`` may know about the importer.
        converters: ways to hand an offer out as another type (e.g.
            segments -> udmabuf), tried only when no direct pair matched.

    Returns the Negotiation of the first pair that matches, examining pairs
    exporter-first: for each offer in order, each match in order. So the
    exporter decides priority; the importer's order only ranks matches of
    the same offer. A pair of different types is skipped (``type-differs``),
    a soft mismatch continues (``soft-mismatch``, with the type's reason);
    a restricted offer is a soft mismatch (reason ``restricted``) for an
    importer that is not one of its principals. When the offer and the
    match both list (format, modifier) pairs, they match only if the lists
    intersect (else a soft mismatch whose reason names both lists); the
    first offered pair the importer lists is chosen (``Negotiation.format``).

    Only when every direct pair failed are converters tried: for each offer
    in exporter order, zero-copy converters before copying ones, and for
    each match in importer order, every converter from the offer's type to
    the match's type, in the order given. Their steps carry the converter's
    name; a restricted offer stays restricted when converted.

    Raises:
        BrokerError: a type's match raised it; the whole attach fails with
            it (real errors are never hidden by trying the next pair). The
            error is re-raised with ``.trace`` set, ending with its step.
        NoCommonMappingType: no pair matched; the message lists the offered
            and accepted type names, ``.trace`` holds every examined pair.
    """
    trace: list[TraceStep] = []
    for offer_index, offer in enumerate(offers):
        for match_index, match in enumerate(accept):
            if offer.type is not match.type:
                trace.append(TraceStep(offer_index, offer.type.name, match_index, match.type.name, TYPE_DIFFERS))
                continue
            found = _try_pair(offer, offer_index, match, match_index, ctx, trace, None)
            if found is not None:
                return found
    for offer_index, offer in enumerate(offers):
        for copies in (False, True):  # zero-copy conversions first
            for match_index, match in enumerate(accept):
                for converter in converters:
                    if converter.copies is not copies or converter.source is not offer.type:
                        continue
                    if converter.target is not match.type:
                        continue
                    found = _try_pair(offer, offer_index, match, match_index, ctx, trace, converter)
                    if found is not None:
                        return found
    raise NoCommonMappingType(_no_match_message(offers, accept, trace), tuple(trace))


def _try_pair(
    offer: Spec,
    offer_index: int,
    match: Spec,
    match_index: int,
    ctx: MatchContext,
    trace: list[TraceStep],
    converter: AnyConverter | None,
) -> Negotiation | None:
    """Examine one pair (directly, or through ``converter``); record its step.

    Returns the Negotiation when it matched, None when it was a soft
    mismatch; re-raises a BrokerError with ``.trace`` set.
    """
    via = converter.name if converter is not None else ""

    def step(verdict: str, reason: str = "", chosen: str = "") -> TraceStep:
        if via and reason:
            reason = f"{via}: {reason}"
        return TraceStep(offer_index, offer.type.name, match_index, match.type.name, verdict, reason, via, chosen)

    if offer.restricted_to and not principal_allowed(
        offer.restricted_to, ctx.importer_uid, ctx.importer_gid, ctx.exporter_uid, ctx.importer_groups
    ):
        who = describe_peer(ctx.importer_uid, ctx.importer_gid)
        trace.append(step(SOFT_MISMATCH, f"restricted: this offer is not for {who}"))
        return None
    pair = None
    if offer.formats and match.formats:
        pair = format_pairs.choose(offer.formats, match.formats)
        if pair is None:
            trace.append(step(SOFT_MISMATCH, format_pairs.mismatch_reason(offer.formats, match.formats)))
            return None
    chosen = format_pairs.text(pair) if pair is not None else ""
    judge: AnyConverter | AnyMappingType = converter if converter is not None else offer.type
    try:
        result = judge.match(offer.message, match.message, ctx)
    except BrokerError as error:
        trace.append(step(ERROR, error.message))
        error.trace = tuple(trace)
        raise
    if isinstance(result, SoftMismatch):
        trace.append(step(SOFT_MISMATCH, result.reason))
        return None
    if not isinstance(result, Matched):
        raise TypeError(
            f"{'converter' if converter is not None else 'mapping type'} {judge.name!r} match() returned "
            f"{result!r}; it must return Matched or SoftMismatch or raise a BrokerError"
        )
    if converter is None:
        trace.append(step(MATCHED, chosen=chosen))
    else:
        how = "a copy at each map" if converter.copies else "zero-copy"
        trace.append(step(MATCHED, f"converted from the exporter's {offer.type.name} offer ({how})", chosen))
    params = judge.finish(offer.message, match.message, ctx)
    return Negotiation(match.type, offer_index, match_index, params, tuple(trace), converter, pair)


def _no_match_message(offers: Sequence[Spec], accept: Sequence[Spec], trace: list[TraceStep]) -> str:
    offered = ", ".join(o.type.name for o in offers) or "nothing"
    accepted = ", ".join(m.type.name for m in accept) or "nothing"
    # A converter's reason already starts with its name.
    soft = [s.reason if s.converter else f"{s.offer_type}: {s.reason}" for s in trace if s.verdict == SOFT_MISMATCH]
    why = f"; pairs refused: {'; '.join(soft)}" if soft else ""
    if any(s.reason.startswith("formats:") for s in trace if s.verdict == SOFT_MISMATCH):
        advice = "Accept one of the offered (format, modifier) pairs, or one of the offered types"
    else:
        advice = "Accept one of the offered types"
    return (
        f"no common mapping type: the exporter offers [{offered}], "
        f"the importer accepts [{accepted}]{why}. {advice} "
        "(an empty accept list gets the compat type memfd)"
    )
