"""Access rules shared by the built-in mapping types.

The one place that decides what an offer grants: an offer whose
``max_access`` is unspecified grants read only (:func:`offered`), whichever
client registered it (the Python SDK, another language's client, a raw gRPC
call, or a registration with no offers at all, which is the compat memfd
offer). Write is granted only by an explicit ``ACCESS_READ_WRITE``.
"""

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


def offered(max_access: int) -> pb.Access:
    """An exporter that says nothing offers read: write must be granted explicitly."""
    return READ_WRITE if max_access == READ_WRITE else READ


def check_access_value(access: int, what: str) -> None:
    if access not in (pb.ACCESS_UNSPECIFIED, READ, READ_WRITE):
        raise InvalidArgument(f"{what}: access {access} is not one of ACCESS_READ (1) or ACCESS_READ_WRITE (2)")


def read_only_offer(type_name: str, max_access: int, purpose: str = "let importers write") -> str:
    """Why an offer grants only read, and how the exporter grants write (for soft-mismatch reasons)."""
    spec = f"{type_name.capitalize()}(access='read_write')"
    if max_access == READ:
        return (
            f"the offer allows read only (the exporter offers {type_name} with access='read'); to {purpose} "
            f"it must offer {spec}"
        )
    return (
        f"the exporter offers {type_name} read-only (the default); to {purpose} it must export with "
        f"allow_write=True or {spec} (on the wire: max_access ACCESS_READ_WRITE)"
    )


def match_access(type_name: str, max_access: int, want: int, writable: bool) -> MatchResult:
    """Soft mismatch (reason ``access``) when the importer wants more than offered."""
    if requested(want) != READ_WRITE:
        return Matched()
    if not writable:
        return SoftMismatch("access: importer wants read_write, the exporter's fd is read-only")
    if offered(max_access) == READ:
        return SoftMismatch(f"access: importer wants read_write, {read_only_offer(type_name, max_access)}")
    return Matched()


def fd_for_access(fd: int, access: int) -> int | None:
    """A new O_RDONLY fd for a read importer (host/fds.py), or None to send ``fd`` itself."""
    if requested(access) == READ_WRITE:
        return None
    return reopen_read_only(fd)
