"""Wire constants the broker and the SDK share, defined once.

The protobuf messages are the wire contract (``bufbroker.v1``); these are the
few names that travel beside them: the gRPC metadata keys and the error kinds
a failed call carries. The broker imports them from here, so both sides
spell them the same. The module imports only the standard library.
"""

from __future__ import annotations

from typing import Final

# --- gRPC metadata ------------------------------------------------------------------

SESSION_METADATA_KEY: Final = "bufbroker-session"
"""Request metadata: the session token the broker sent in HELLO on the fd channel."""

PROOF_METADATA_KEY: Final = "bufbroker-proof"
"""Request metadata beside the token: a proof the session sent first as ``Vouch`` on its fd channel (once per call)."""

ERROR_KIND_KEY: Final = "bufbroker-error-kind"
"""Trailing metadata of a failed call: one of the error kinds below."""

TRACE_KEY: Final = "bufbroker-trace-bin"
"""Trailing metadata of a failed attach: a serialized ExplainResponse with the negotiation trace."""

# --- error kinds ----------------------------------------------------------------------
# A stable, machine-readable tag for each broker error. The SDK picks its
# exception class by kind (a kind is finer than a status: no-common-mapping-type
# is a FAILED_PRECONDITION).

KIND_NOT_FOUND: Final = "not-found"
KIND_INVALID_ARGUMENT: Final = "invalid-argument"
KIND_FAILED_PRECONDITION: Final = "failed-precondition"
KIND_NO_COMMON_MAPPING_TYPE: Final = "no-common-mapping-type"
KIND_PERMISSION_DENIED: Final = "permission-denied"
KIND_UNAUTHENTICATED: Final = "unauthenticated"
KIND_RESOURCE_EXHAUSTED: Final = "resource-exhausted"
KIND_UNAVAILABLE: Final = "unavailable"
KIND_INTERNAL: Final = "internal"

STATUS_BY_KIND: Final[dict[str, str]] = {
    KIND_NOT_FOUND: "NOT_FOUND",
    KIND_INVALID_ARGUMENT: "INVALID_ARGUMENT",
    KIND_FAILED_PRECONDITION: "FAILED_PRECONDITION",
    KIND_NO_COMMON_MAPPING_TYPE: "FAILED_PRECONDITION",
    KIND_PERMISSION_DENIED: "PERMISSION_DENIED",
    KIND_UNAUTHENTICATED: "UNAUTHENTICATED",
    KIND_RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    KIND_UNAVAILABLE: "UNAVAILABLE",
    KIND_INTERNAL: "INTERNAL",
}
"""The gRPC status name (``grpc.StatusCode`` member) that goes with each kind."""


def internal_error_message(where: str) -> str:
    """The text a client gets for a broker bug in ``where`` (an RPC or call name).

    The broker logs the traceback; the client learns only that it was a bug
    and where, never the broker's internals.
    """
    return f"internal error in {where}; the broker logged the details (this is a bug: please report it)"
