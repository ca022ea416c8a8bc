"""memfd: the whole sealed memfd. The compat type every client can use."""

from __future__ import annotations

from collections.abc import Sequence

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.backing import Backing
from bufbroker_broker.core.mapping_type import MapResult, MatchContext, MatchResult
from bufbroker_broker.mapping_types import _access

# The map parameters: the access the importer gets (ACCESS_READ or ACCESS_READ_WRITE).
MemfdParams = pb.Access


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
        return _access.match_access(self.name, offer.max_access, match.access, ctx.fd_writable[0])

    def finish(self, offer: pb.MemfdOffer, match: pb.MemfdMatch, ctx: MatchContext) -> MemfdParams:
        return _access.requested(match.access)

    def map(self, backing: Backing, params: MemfdParams) -> MapResult:
        """The buffer's memfd: itself for read_write, a new read-only fd of it for read."""
        fd = backing.fds[0].fd
        handle = pb.MemfdHandle(size=backing.size, access=params)
        reopened = _access.fd_for_access(fd, params)
        if reopened is None:
            return MapResult(handle, [fd])
        return MapResult(handle, [reopened], temporary=[reopened])

    def unmap(self, backing: Backing, params: MemfdParams) -> None:
        """Nothing to release: the importer owns the fd it received."""

    def describe(self) -> str:
        return self.description


MEMFD = MemfdType()
