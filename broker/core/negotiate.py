"""negotiate(): pick one mapping type for an attachment.

This is the kernel RFC's ``dma_buf_match_mapping()`` as a pure function: no
I/O, no broker state, the same answer for the same input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from broker.core.errors import BrokerError, NoCommonMappingType
from broker.core.mapping_type import MappingType, MatchContext, Matched, SoftMismatch
from broker.core.principals import describe_peer, principal_allowed

TYPE_DIFFERS = "type-differs"
SOFT_MISMATCH = "soft-mismatch"
MATCHED = "matched"
ERROR = "error"


@dataclass(frozen=True)
class Spec:
    """One offer or one accept-list entry: its type and its type's message.

    ``restricted_to`` (offers only) lists the principals the offer is
    visible to; empty means everyone.
    """

    type: MappingType
    message: Any
    restricted_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class TraceStep:
    """One examined (offer, match) pair and what came of it."""

    offer_index: int
    offer_type: str
    match_index: int
    match_type: str
    verdict: str
    reason: str = ""


@dataclass(frozen=True)
class Negotiation:
    """The outcome: the chosen pair, the type's map parameters, the trace."""

    map_type: MappingType
    offer_index: int
    match_index: int
    map_params: Any
    trace: tuple[TraceStep, ...]


def negotiate(offers: Sequence[Spec], accept: Sequence[Spec], ctx: MatchContext) -> Negotiation:
    """Choose the mapping type for one attach.

    Args:
        offers: the exporter's offers, in the exporter's order of preference.
        accept: the importer's accept list, in its order. The caller turns an
            empty list (a compat importer) into ``[memfd]`` before calling.
        ctx: what the types' ``match`` may know about the importer.

    Returns the Negotiation of the first pair that matches, examining pairs
    exporter-first: for each offer in order, each match in order. So the
    exporter decides priority; the importer's order only ranks matches of
    the same offer. A pair of different types is skipped (``type-differs``),
    a soft mismatch continues (``soft-mismatch``, with the type's reason);
    a restricted offer is a soft mismatch (reason ``restricted``) for an
    importer that is not one of its principals.

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

            def step(verdict: str, reason: str = "") -> TraceStep:
                return TraceStep(
                    offer_index, offer.type.name, match_index, match.type.name, verdict, reason
                )

            if offer.type is not match.type:
                trace.append(step(TYPE_DIFFERS))
                continue
            if offer.restricted_to and not principal_allowed(
                offer.restricted_to, ctx.importer_uid, ctx.importer_gid, ctx.exporter_uid
            ):
                who = describe_peer(ctx.importer_uid, ctx.importer_gid)
                trace.append(step(SOFT_MISMATCH, f"restricted: this offer is not for {who}"))
                continue
            try:
                result = offer.type.match(offer.message, match.message, ctx)
            except BrokerError as error:
                trace.append(step(ERROR, error.message))
                error.trace = tuple(trace)  # type: ignore[attr-defined]
                raise
            if isinstance(result, SoftMismatch):
                trace.append(step(SOFT_MISMATCH, result.reason))
                continue
            if not isinstance(result, Matched):
                raise TypeError(
                    f"mapping type {offer.type.name!r} match() returned {result!r}; "
                    "it must return Matched or SoftMismatch or raise a BrokerError"
                )
            trace.append(step(MATCHED))
            params = offer.type.finish(offer.message, match.message, ctx)
            return Negotiation(offer.type, offer_index, match_index, params, tuple(trace))
    raise NoCommonMappingType(_no_match_message(offers, accept, trace), tuple(trace))


def _no_match_message(
    offers: Sequence[Spec], accept: Sequence[Spec], trace: list[TraceStep]
) -> str:
    offered = ", ".join(o.type.name for o in offers) or "nothing"
    accepted = ", ".join(m.type.name for m in accept) or "nothing"
    soft = [f"{s.offer_type}: {s.reason}" for s in trace if s.verdict == SOFT_MISMATCH]
    why = f"; same-type pairs refused: {'; '.join(soft)}" if soft else ""
    return (
        f"no common mapping type: the exporter offers [{offered}], "
        f"the importer accepts [{accepted}]{why}. Accept one of the offered types "
        "(an empty accept list gets the compat type memfd)"
    )
