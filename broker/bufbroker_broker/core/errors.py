"""The broker's closed set of errors.

Each class is one kind of expected failure with the status a client sees.
The server maps them to wire statuses in one place (bufbroker_broker/server/);
anything that is not a BrokerError is a bug and
becomes one generic INTERNAL, logged once with its traceback.

Messages name the buffer, the type and what to do, because they are the
only thing a user of a failed call gets to read.
"""

from __future__ import annotations

from bufbroker_broker.core.trace import TraceStep


class BrokerError(Exception):
    """An expected failure reported to the client that caused it.

    ``status`` is the gRPC status name; ``kind`` is a stable machine-readable
    tag the SDK uses to pick its exception class. ``trace`` is set when the
    error came out of a negotiation: the pairs examined up to it.
    """

    status = "UNKNOWN"
    kind = "error"
    trace: tuple[TraceStep, ...] = ()

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

    def __init__(self, message: str, trace: tuple[TraceStep, ...] = ()) -> None:
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
