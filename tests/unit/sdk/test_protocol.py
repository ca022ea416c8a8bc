"""bufbroker.protocol: the wire constants the broker and the SDK share."""

from __future__ import annotations

import ast
from pathlib import Path

import grpc

from bufbroker import errors, fdwire, protocol


def test_metadata_keys_are_the_names_on_the_wire():
    # gRPC metadata keys are lowercase; a binary value's key ends in -bin.
    assert protocol.SESSION_METADATA_KEY == "bufbroker-session"
    assert protocol.ERROR_KIND_KEY == "bufbroker-error-kind"
    assert protocol.TRACE_KEY == "bufbroker-trace-bin" and protocol.TRACE_KEY.endswith("-bin")


def test_the_older_names_are_aliases_of_the_protocol_constants():
    assert fdwire.SESSION_METADATA_KEY is protocol.SESSION_METADATA_KEY
    assert errors.ERROR_KIND_KEY is protocol.ERROR_KIND_KEY
    assert errors.TRACE_KEY is protocol.TRACE_KEY


def test_every_error_kind_has_a_grpc_status():
    kinds = {value for name, value in vars(protocol).items() if name.startswith("KIND_")}
    assert kinds == {
        "not-found",
        "invalid-argument",
        "failed-precondition",
        "no-common-mapping-type",
        "permission-denied",
        "unauthenticated",
        "resource-exhausted",
        "unavailable",
        "internal",
    }
    assert set(protocol.STATUS_BY_KIND) == kinds
    for kind, status in protocol.STATUS_BY_KIND.items():
        assert status in grpc.StatusCode.__members__, kind
    assert protocol.STATUS_BY_KIND[protocol.KIND_NO_COMMON_MAPPING_TYPE] == "FAILED_PRECONDITION"


def test_internal_error_message_names_where_and_says_it_is_a_bug():
    assert protocol.internal_error_message("Attach") == (
        "internal error in Attach; the broker logged the details (this is a bug: please report it)"
    )


def test_protocol_imports_nothing_but_the_standard_library():
    tree = ast.parse(Path(protocol.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "typing"}
