"""Principals (core/principals.py): who may see a buffer or an offer, by peer credentials."""

from __future__ import annotations

import pytest

from bufbroker_broker.core.errors import InvalidArgument
from bufbroker_broker.core.principals import MAX_PRINCIPALS, describe_peer, parse_principals, principal_allowed

EXPORTER = 1000


@pytest.mark.parametrize("principal", ["any", "same-uid", "uid:0", "gid:44", f"uid:{(1 << 32) - 1}"])
def test_every_form_of_principal_parses(principal):
    assert parse_principals([principal], "allow") == (principal,)


@pytest.mark.parametrize("principal", ["root", "uid:", "uid:-1", "uid:x", "pid:3", f"uid:{1 << 32}", "gid:1:2", ""])
def test_a_malformed_principal_is_invalid_naming_it_and_the_forms(principal):
    with pytest.raises(InvalidArgument, match=rf"allow: {principal!r} is not a principal; use uid:N, gid:N"):
        parse_principals(["any", principal], "allow")


def test_too_many_principals_are_invalid():
    parse_principals(["any"] * MAX_PRINCIPALS, "allow")
    with pytest.raises(InvalidArgument, match=f"{MAX_PRINCIPALS + 1} principals; at most {MAX_PRINCIPALS}"):
        parse_principals(["any"] * (MAX_PRINCIPALS + 1), "allow")


def test_any_allows_everyone():
    assert principal_allowed(["any"], 4242, 4242, EXPORTER)


def test_same_uid_allows_the_exporters_uid_only():
    assert principal_allowed(["same-uid"], EXPORTER, 5, EXPORTER)
    assert not principal_allowed(["same-uid"], 4242, 5, EXPORTER)


def test_uid_and_gid_principals_match_the_peers_credentials():
    assert principal_allowed(["uid:4242"], 4242, 1, EXPORTER)
    assert principal_allowed(["gid:44"], 4242, 44, EXPORTER)
    assert not principal_allowed(["uid:4242", "gid:44"], 4243, 45, EXPORTER)


def test_a_gid_principal_matches_a_supplementary_group():
    assert principal_allowed(["gid:44"], 4242, 1, EXPORTER, groups=(7, 44))
    assert not principal_allowed(["gid:44"], 4242, 1, EXPORTER, groups=(7, 45))
    assert not principal_allowed(["uid:44"], 4242, 1, EXPORTER, groups=(44,))  # a group is never a uid


def test_a_uid_principal_is_not_a_gid_principal():
    assert not principal_allowed(["gid:4242"], 4242, 1, EXPORTER)
    assert not principal_allowed(["uid:44"], 1, 44, EXPORTER)


def test_no_principals_allow_no_one():
    assert not principal_allowed([], EXPORTER, EXPORTER, EXPORTER)


def test_a_peer_is_described_by_uid_and_gid():
    assert describe_peer(1000, 44) == "uid:1000 gid:44"
