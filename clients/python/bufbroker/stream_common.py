"""What a stream's producer and consumer sides share: settings, wire values, fence waits, reports, views.

See bufbroker.streams for how streams work.
"""

from __future__ import annotations

import bisect
import logging
import select
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import grpc

from bufbroker import errors, formats
from bufbroker.streamlink import (
    HANDOFF_LATENCY_BOUNDS_US,
)
from bufbroker.transport import Transport
from bufbroker.v1 import broker_pb2 as pb
from bufbroker.v1 import stream_pb2 as link_pb

log = logging.getLogger("bufbroker")

StallAction = Literal["reclaim", "report"]
STALL_POLICIES: dict[str, pb.StallPolicy] = {"reclaim": pb.STALL_POLICY_RECLAIM, "report": pb.STALL_POLICY_REPORT}
MODES: dict[str, link_pb.ConsumerMode] = {"queue": link_pb.CONSUMER_MODE_QUEUE, "latest": link_pb.CONSUMER_MODE_LATEST}
DEFAULT_STALL_TIMEOUT = 2.0  # the broker's default (setting stream_stall_timeout), if it sends none
STALL_CHECK = 0.05  # seconds between the producer's stall checks
HANDOVER_CHECK = 0.01  # seconds: how soon the pump reads the links again once no acquire() waits on them
REPORT_PERIOD = 0.5  # seconds between counter reports to the broker (at most 2/s)
REPORT_TIMEOUT = 1.0  # a report never holds its thread longer than this
FIRST_GENERATION = 1  # slot buffers start at generation 1; each Stream.move adds one
MOVE_DRAIN_TIMEOUT = 5.0  # Stream.move's default wait for every slot to come back before moving
REMAP_TIMEOUT = 5.0  # a consumer's longest wait for a moved slot's new mapping (the broker's move deadline is 2 s)
LATENCY_SAMPLES = 4096  # most hand-off latencies kept per report period


def fence_tuple(fence: int | Sequence[int] | None) -> tuple[int, ...]:
    if fence is None:
        return ()
    if isinstance(fence, int):
        return (fence,)
    return tuple(fence)


def wait_readable(fds: Sequence[int], timeout: float | None) -> bool:
    """Wait until every fd in ``fds`` is readable (a signalled fence); False after ``timeout`` seconds."""
    if not fds:
        return True
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    waiting = set(fds)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        ready = poller.poll(None if left is None else max(0, int(left * 1000) + (left > 0)))
        for fd, _ in ready:
            if fd in waiting:
                waiting.discard(fd)
                poller.unregister(fd)
        if not waiting:
            return True
        if left is not None and left <= 0:
            return False


if TYPE_CHECKING:
    ReportCall = grpc.Future[Any]  # a ReportStreamStats in flight (its result is not used)
else:
    ReportCall = grpc.Future  # not subscriptable at run time


def report_stats(transport: Transport, request: pb.ReportStreamStatsRequest) -> ReportCall | None:
    """Start one ReportStreamStats without waiting for its answer; the call, or None if not sent.

    Counters are best effort: a refusal (rate limit, a broker restart, an
    old broker) is logged at debug level and the next period tries again.
    The call is not waited for (gRPC's own threads carry it, for at most
    REPORT_TIMEOUT): it is sent from the threads that move frames (the
    producer's pump, the consumer's ``receive``), and a round trip to the
    broker there would hold up the frame that arrives meanwhile.
    """
    if transport.closed or not transport.wait_connected(0):
        return None
    link = transport.link
    try:
        call: ReportCall = link.stub.ReportStreamStats.future(
            request, metadata=link.call_metadata(), timeout=REPORT_TIMEOUT
        )
    except grpc.RpcError as error:
        log.debug("bufbroker: stream %d stats not reported: %s", request.stream_id, errors.from_rpc_error(error))
        return None
    except errors.BrokerError as error:
        log.debug("bufbroker: stream %d stats not reported: %s", request.stream_id, error)
        return None
    stream_id = request.stream_id

    def done(call: ReportCall) -> None:
        try:
            error = call.exception()
        except grpc.FutureCancelledError:
            return
        if error is not None:
            reason = errors.from_rpc_error(error) if isinstance(error, grpc.RpcError) else error
            log.debug("bufbroker: stream %d stats not reported: %s", stream_id, reason)

    call.add_done_callback(done)
    for observer in transport.call_observers:
        observer("ReportStreamStats", request, None)
    return call


def reporting(call: ReportCall | None) -> bool:
    """Whether an earlier report is still on its way (the next one waits for its period then)."""
    return call is not None and not call.done()


def needs_layout(layout: dict[str, Any] | None, verb: str) -> dict[str, Any]:
    if layout is None:
        raise ValueError(f"{verb}() needs the stream's layout: create the stream with layout=")
    return layout


def layout_pair(layout: Mapping[str, Any] | None) -> str | None:
    """The layout's (format, modifier) pair as ``FORMAT:MODIFIER``, or None (no layout, or a format not in the table)."""
    if not layout or not layout.get("fourcc"):
        return None
    try:
        fmt = formats.parse_format(layout["fourcc"])
    except ValueError:
        return None
    return formats.pair_text(fmt, int(layout.get("modifier") or formats.LINEAR))


def latency_histogram(sorted_ns: Sequence[int]) -> list[int]:
    """Counts (not cumulative) of ``sorted_ns`` latencies per HANDOFF_LATENCY_BOUNDS_US bucket, then above the last."""
    counts, start = [], 0
    for bound_us in HANDOFF_LATENCY_BOUNDS_US:
        end = bisect.bisect_right(sorted_ns, bound_us * 1000, lo=start)
        counts.append(end - start)
        start = end
    counts.append(len(sorted_ns) - start)
    return counts


def mode_value(mode: str) -> link_pb.ConsumerMode:
    """The wire ConsumerMode for ``"queue"`` or ``"latest"``."""
    try:
        return MODES[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}") from None


def stall_value(on_stall: str) -> pb.StallPolicy:
    """The wire StallPolicy for ``"reclaim"`` or ``"report"``."""
    try:
        return STALL_POLICIES[on_stall]
    except KeyError:
        raise ValueError(f"on_stall must be one of {', '.join(STALL_POLICIES)}, not {on_stall!r}") from None


def cached_array(cache: list[Any], slot: int, view: Callable[[], memoryview], dtype: Any, shape: Any) -> Any:
    """A numpy view of a slot, kept in ``cache[slot]`` while dtype and shape stay the same (frames reuse it)."""
    cached = cache[slot]
    if cached is not None and cached[0] == dtype and cached[1] == shape:
        return cached[2]
    try:
        import numpy
    except ImportError:
        raise ImportError("frame.numpy() needs numpy: pip install 'bufbroker[numpy]'") from None
    array = numpy.frombuffer(view(), dtype=dtype)
    if shape is not None:
        array = array.reshape(shape)
    cache[slot] = (dtype, shape, array)
    return array
