"""Principals: who may see a buffer or an offer, by peer credentials.

A principal is ``uid:N``, ``gid:N``, ``same-uid`` (the exporter's uid) or
``any``. They are checked against the uid and gid the kernel reported for
the importer's connection (SO_PEERCRED) and its supplementary groups
(SO_PEERGROUPS, read by the transport), never against what a client says:
``gid:N`` matches the primary gid or any supplementary one.
"""

from __future__ import annotations

from collections.abc import Iterable

from bufbroker_broker.core.errors import InvalidArgument

SAME_UID = "same-uid"
ANY = "any"
MAX_PRINCIPALS = 64


def parse_principals(principals: Iterable[str], what: str) -> tuple[str, ...]:
    """Validate a principal list; raise InvalidArgument naming the bad entry."""
    parsed = tuple(principals)
    if len(parsed) > MAX_PRINCIPALS:
        raise InvalidArgument(f"{what}: {len(parsed)} principals; at most {MAX_PRINCIPALS} are allowed")
    for principal in parsed:
        if principal in (SAME_UID, ANY):
            continue
        kind, _, number = principal.partition(":")
        if kind not in ("uid", "gid") or not number.isdigit() or int(number) >= 1 << 32:
            raise InvalidArgument(f"{what}: {principal!r} is not a principal; use uid:N, gid:N, same-uid or any")
    return parsed


def principal_allowed(
    principals: Iterable[str], uid: int, gid: int, exporter_uid: int, groups: Iterable[int] = ()
) -> bool:
    """True when a peer with ``uid``, primary ``gid`` and supplementary ``groups`` is one of ``principals``."""
    as_uid = ""  # "uid:N", formatted once, when first needed
    as_gids: frozenset[str] = frozenset()
    for principal in principals:
        if principal == ANY:
            return True
        if principal == SAME_UID:
            if uid == exporter_uid:
                return True
            continue
        if not as_uid:
            as_uid = f"uid:{uid}"
            as_gids = frozenset(f"gid:{g}" for g in (gid, *groups))
        if principal == as_uid or principal in as_gids:
            return True
    return False


def describe_peer(uid: int, gid: int) -> str:
    """How messages name a peer: ``uid:1000 gid:1000``."""
    return f"uid:{uid} gid:{gid}"
