"""Access rules shared by the memfd and segments types."""

from __future__ import annotations

from bufbroker.v1 import mapping_types_pb2 as pb
from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.mapping_type import Matched, MatchResult, SoftMismatch
from bufbroker_broker.host.fds import reopen_read_only

READ = pb.ACCESS_READ
READ_WRITE = pb.ACCESS_READ_WRITE


def requested(access: int) -> pb.Access:
    """An importer that says nothing asks for read."""
    return READ_WRITE if access == READ_WRITE else READ


def check_access_value(access: int, what: str) -> None:
    if access not in (pb.ACCESS_UNSPECIFIED, READ, READ_WRITE):
        raise InvalidArgument(f"{what}: access {access} is not one of ACCESS_READ (1) or ACCESS_READ_WRITE (2)")


def match_access(max_access: int, want: int, writable: bool) -> MatchResult:
    """Soft mismatch (reason ``access``) when the importer wants more than offered."""
    allowed = READ if max_access == READ or not writable else READ_WRITE
    if requested(want) == READ_WRITE and allowed == READ:
        why = "the offer allows read only" if writable else "the exporter's fd is read-only"
        return SoftMismatch(f"access: importer wants read_write, {why}")
    return Matched()


def fd_for_access(fd: int, access: int) -> int | None:
    """A new O_RDONLY fd for a read importer (host/fds.py), or None to send ``fd`` itself."""
    if requested(access) == READ_WRITE:
        return None
    return reopen_read_only(fd)
