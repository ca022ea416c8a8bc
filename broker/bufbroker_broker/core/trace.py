"""TraceStep: one examined (offer, match) pair of a negotiation.

Its own module because errors carry the trace of the negotiation that
raised them (``BrokerError.trace``) and negotiate() raises errors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TraceStep:
    """One examined (offer, match) pair and what came of it.

    ``converter`` names the converter tried for the pair (empty for a
    direct pair); its reason then starts with the converter's name too, so
    a reader that ignores the field still sees it. ``format`` is the
    (format, modifier) pair a matched step chose.
    """

    offer_index: int
    offer_type: str
    match_index: int
    match_type: str
    verdict: str
    reason: str = ""
    converter: str = ""
    format: str = ""  # the (format, modifier) pair chosen, as FORMAT:MODIFIER, when both sides listed pairs
