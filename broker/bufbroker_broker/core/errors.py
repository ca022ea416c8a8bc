"""The broker's closed set of errors.

Each class is one kind of expected failure with the status a client sees.
The gRPC layer maps them to status codes in one place
(broker/api/grpc_errors.py); anything that is not a BrokerError is a bug and
becomes one generic INTERNAL, logged once with its traceback.

Messages name the buffer, the type and what to do, because they are the
only thing a user of a failed call gets to read.
"""

from __future__ import annotations


class BrokerError(Exception):
    """An expected failure reported to the client that caused it.

    ``status`` is the gRPC status name; ``kind`` is a stable machine-readable
    tag the SDK uses to pick its exception class.
    """

    status = "UNKNOWN"
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(BrokerError):
    status = "NOT_FOUND"
    kind = "not-found"


class InvalidArgument(BrokerError):
    status = "INVALID_ARGUMENT"
    kind = "invalid-argument"


class FailedPrecondition(BrokerError):
    status = "FAILED_PRECONDITION"
    kind = "failed-precondition"


class NoCommonMappingType(FailedPrecondition):
    """Negotiation examined every pair and none matched."""

    kind = "no-common-mapping-type"

    def __init__(self, message: str, trace: tuple = ()) -> None:
        super().__init__(message)
        self.trace = trace


class PermissionDenied(BrokerError):
    status = "PERMISSION_DENIED"
    kind = "permission-denied"


class Unauthenticated(BrokerError):
    status = "UNAUTHENTICATED"
    kind = "unauthenticated"


class ResourceExhausted(BrokerError):
    status = "RESOURCE_EXHAUSTED"
    kind = "resource-exhausted"


class Unavailable(BrokerError):
    status = "UNAVAILABLE"
    kind = "unavailable"
