"""segments: ordered extents (fd, offset, length) from one or more memfds.

Frames carved from a pool memfd, or one memfd per plane. An importer gets
only the fds its extents use, renumbered in the order they first appear.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing
from bufbroker_broker.core.mapping_type import MapResult, MatchContext, MatchResult, SoftMismatch
from bufbroker_broker.mapping_types import _access
from bufbroker_broker.mapping_types._extents import MAX_EXTENTS, normalise_extents

__all__ = ["MAX_EXTENTS", "SEGMENTS", "SegmentsParams", "SegmentsType"]


class SegmentsParams(NamedTuple):
    """The access the importer gets and the (normalised) offer whose extents it maps."""

    access: pb.Access
    offer: pb.SegmentsOffer


class SegmentsType:
    name = "segments"
    description = "ordered (fd, offset, length) extents of sealed memfds (pools, planes)"
    offer_message = pb.SegmentsOffer
    match_message = pb.SegmentsMatch
    handle_message = pb.SegmentsHandle

    def check_offer(self, offer: pb.SegmentsOffer, fd_sizes: Sequence[int], size: int) -> pb.SegmentsOffer:
        """Validate the extents; fill the default (each fd whole) when empty."""
        _access.check_access_value(offer.max_access, "segments offer")
        normalised = pb.SegmentsOffer(max_access=offer.max_access)
        normalised.extents.extend(normalise_extents(offer.extents, fd_sizes, size, "segments"))
        return normalised

    def check_match(self, match: pb.SegmentsMatch) -> pb.SegmentsMatch:
        _access.check_access_value(match.access, "segments match")
        return match

    def match(self, offer: pb.SegmentsOffer, match: pb.SegmentsMatch, ctx: MatchContext) -> MatchResult:
        used = {e.fd_index for e in offer.extents}
        writable = all(ctx.fd_writable[i] for i in used)
        result = _access.match_access(self.name, offer.max_access, match.access, writable)
        if isinstance(result, SoftMismatch):
            return result
        if match.max_extents and len(offer.extents) > match.max_extents:
            return SoftMismatch(
                f"extents: the offer has {len(offer.extents)}, the importer takes at most {match.max_extents}"
            )
        return result

    def finish(self, offer: pb.SegmentsOffer, match: pb.SegmentsMatch, ctx: MatchContext) -> SegmentsParams:
        return SegmentsParams(_access.requested(match.access), offer)

    def map(self, backing: Backing, params: SegmentsParams) -> MapResult:
        """The fds the extents use (read-only reopens for a read importer), renumbered in first use."""
        access, offer = params
        handle = pb.SegmentsHandle(access=access)
        order: dict[int, int] = {}
        for extent in offer.extents:
            delivered = order.setdefault(extent.fd_index, len(order))
            handle.extents.add(fd_index=delivered, offset=extent.offset, length=extent.length)
        fds: list[int] = []
        temporary: list[int] = []
        try:
            for fd_index in order:
                fd = backing.fds[fd_index].fd
                reopened = _access.fd_for_access(fd, access)
                if reopened is None:
                    fds.append(fd)
                else:
                    fds.append(reopened)
                    temporary.append(reopened)
        except OSError:
            for fd in temporary:
                os.close(fd)
            raise
        return MapResult(handle, fds, temporary)

    def unmap(self, backing: Backing, params: SegmentsParams) -> None:
        """Nothing to release: the importer owns the fds it received."""

    def describe(self) -> str:
        return self.description


SEGMENTS = SegmentsType()
