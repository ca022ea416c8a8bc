"""memfd: the whole sealed memfd. The compat type every client can use."""

from __future__ import annotations

from typing import Any, Sequence

from bufbroker.v1 import mapping_types_pb2 as pb

from bufbroker_broker.core.mapping_type import MapResult, MatchContext, MatchResult
from bufbroker_broker.mapping_types import _access


class MemfdType:
    name = "memfd"
    description = "the whole sealed memfd (compat: every client can mmap it)"
    offer_message = pb.MemfdOffer
    match_message = pb.MemfdMatch
    handle_message = pb.MemfdHandle

    def check_offer(self, offer: pb.MemfdOffer, fd_sizes: Sequence[int], size: int) -> pb.MemfdOffer:
        _access.check_access_value(offer.max_access, "memfd offer")
        return offer

    def check_match(self, match: pb.MemfdMatch) -> pb.MemfdMatch:
        _access.check_access_value(match.access, "memfd match")
        return match

    def match(self, offer: pb.MemfdOffer, match: pb.MemfdMatch, ctx: MatchContext) -> MatchResult:
        return _access.match_access(offer.max_access, match.access, ctx.fd_writable[0])

    def finish(self, offer: pb.MemfdOffer, match: pb.MemfdMatch, ctx: MatchContext) -> int:
        return _access.requested(match.access)

    def map(self, buffer: Any, attachment: Any) -> MapResult:
        access = attachment.map_params
        fd = buffer.fds[0].fd
        handle = pb.MemfdHandle(size=buffer.size, access=access)
        reopened = _access.fd_for_access(fd, access)
        if reopened is None:
            return MapResult(handle, [fd])
        return MapResult(handle, [reopened], temporary=[reopened])

    def unmap(self, buffer: Any, attachment: Any) -> None:
        """Nothing to release: the importer owns the fd it received."""

    def describe(self) -> str:
        return self.description


MEMFD = MemfdType()
