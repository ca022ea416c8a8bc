"""Access rules shared by the memfd and segments types."""

from __future__ import annotations

import os
from typing import Optional

from bufbroker.v1 import mapping_types_pb2 as pb

from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.mapping_type import Matched, MatchResult, SoftMismatch

READ = pb.ACCESS_READ
READ_WRITE = pb.ACCESS_READ_WRITE


def requested(access: int) -> int:
    """An importer that says nothing asks for read."""
    return READ_WRITE if access == READ_WRITE else READ


def check_access_value(access: int, what: str) -> None:
    if access not in (pb.ACCESS_UNSPECIFIED, READ, READ_WRITE):
        raise InvalidArgument(
            f"{what}: access {access} is not one of ACCESS_READ (1) or ACCESS_READ_WRITE (2)"
        )


def match_access(max_access: int, want: int, writable: bool) -> MatchResult:
    """Soft mismatch (reason ``access``) when the importer wants more than offered."""
    allowed = READ if max_access == READ or not writable else READ_WRITE
    if requested(want) == READ_WRITE and allowed == READ:
        why = "the offer allows read only" if writable else "the exporter's fd is read-only"
        return SoftMismatch(f"access: importer wants read_write, {why}")
    return Matched()


def fd_for_access(fd: int, access: int) -> Optional[int]:
    """A new O_RDONLY fd for a read importer, or None to send ``fd`` itself.

    Reopening through /proc gives a new open file description that cannot
    be mapped writable. With the memfd made writable by its owner only
    (broker/fd_inspect.py), an importer of another uid cannot reopen it
    O_RDWR either; within the exporter's uid nothing can stop that.
    """
    if requested(access) == READ_WRITE:
        return None
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
