"""Rate-limited logging of undecodable gRPC request bodies.

grpc.aio logs every request whose body does not parse as the method's
message as an ERROR with a traceback (logger ``grpc._cython.cygrpc``), before
any servicer code runs and before the session is authenticated: anyone who
can reach the socket could flood the log. This filter lets one line through
per period, without the traceback, counting the ones it left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError

GRPC_LOGGER = "grpc._cython.cygrpc"
PERIOD = 10.0  # seconds between two lines


class UndecodableRequests(logging.Filter):
    def __init__(self, period: float = PERIOD, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.period = period
        self.clock = clock
        self._last: float | None = None
        self._quiet = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not _undecodable(record):
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.period:
            self._quiet += 1
            return False
        since = f"; {self._quiet} more in the last {now - self._last:.0f} s" if self._last is not None else ""
        self._last, self._quiet = now, 0
        error = record.exc_info[1] if record.exc_info else None
        record.msg = "undecodable gRPC request body (%s), answered UNKNOWN%s; logged at most once per %.0f s"
        record.args = (error or record.getMessage(), since, self.period)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def _undecodable(record: logging.LogRecord) -> bool:
    if record.exc_info and isinstance(record.exc_info[1], DecodeError):
        return True
    return isinstance(record.msg, str) and record.msg.startswith("Unexpected [DecodeError]")


def install() -> UndecodableRequests:
    """Attach the filter to grpc's logger (once); returns it."""
    logger = logging.getLogger(GRPC_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, UndecodableRequests):
            return existing
    undecodable = UndecodableRequests()
    logger.addFilter(undecodable)
    return undecodable
