"""`bufbroker ls`: the broker's buffers and streams, one line each, or one JSON document with --json."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bufbroker_broker.cli._args import add_socket_dir

BUFFER_FIELDS = """\
The table: the buffers, then (when there are any) the streams, each with its
consumers on the lines below it. Sessions show as PID (NAME) when they named
themselves (connect(name=...)). A consumer's FPS is measured over one
producer report (ls waits for the next one, at most 0.6 s, when a stream has
consumers); LAG is seqs behind the newest frame, HELD the slots it holds now
(and the longest hold), DROPS its frames dropped (busy + overwritten), and
STALLED marks a consumer holding a slot past the stream's stall timeout.

JSON (--json): one object {"buffers": [...], "streams": [...]}.
buffers: in id order, one object per buffer, with the fields of the HTTP
API's Buffer, plus exporter_name:
  id, name, size (bytes), labels {key: value}, layout (null or {fourcc, width,
  height, modifier, planes: [{offset, stride}]}), offer_types [names, exporter
  order], offers [{type, options, restricted_to}], exporter_pid, exporter_uid,
  exporter_session_id, exporter_name, exporter_gone, on_exporter_exit
  ("revoke" | "keep"), allow [principals], state ("active" | "revoked"),
  generation, attachment_count, pinned, fd_count.
streams: in id order, with the fields of the HTTP API's Stream (/v1/streams):
  id, name, producer_session_id, producer_pid, producer_name,
  slot_buffer_ids, stall_timeout, on_stall, max_held, max_meta_bytes, labels,
  consumers [{link_id, session_id, pid, name, mode, max_held, stalled,
  counters}], producer (counters or null), report_age; counters are
  {published, delivered, dropped_busy, dropped_overwritten, released,
  reclaimed, held_now, longest_hold, lag, last_seq, fps, latency_p50_us,
  latency_p99_us, generation}. A consumer's counters.fps is ls's measurement
  when its producer did not report one.
--name and --label filter the streams as they filter the buffers.
On an error nothing goes to stdout: the message goes to stderr and ls exits 1.
"""

# The SDK reports stream counters every 0.5 s: ls waits at most this long for the next report.
MAX_REPORT_WAIT = 0.6


def label_filter(text: str) -> tuple[str, str]:
    """``key=value`` for --label: the key must not be empty; the value may be."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ls = commands.add_parser(
        "ls",
        help="list registered buffers",
        description="List the broker's buffers and streams (those this uid may see), as a table or as JSON.",
        epilog=BUFFER_FIELDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_socket_dir(ls)
    ls.add_argument("--json", action="store_true", help="print one JSON document ({buffers, streams}) instead")
    ls.add_argument("--name", default=None, metavar="NAME", help="only the buffer (and stream) named NAME")
    ls.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=label_filter,
        default=[],
        metavar="KEY=VALUE",
        help="only buffers and streams with this label (repeatable: every one must match)",
    )


def list_buffers(session: Any, name: str = "") -> list[Any]:
    """Every visible buffer (or the one named ``name``), paging through ListBuffers at its default page size."""
    from bufbroker.v1 import broker_pb2 as pb

    return _every_page(session, "ListBuffers", pb.ListBuffersRequest, "buffers", name)


def _every_page(session: Any, method: str, request: Any, field: str, name: str) -> list[Any]:
    """The ``field`` items of every page of a List call (``after_id`` in, ``next_after_id`` out)."""
    found: list[Any] = []
    after = 0
    while True:
        page = session.call(method, request(name=name, after_id=after))
        found.extend(getattr(page, field))
        if not page.next_after_id:
            return found
        after = page.next_after_id


def matches(info: Any, name: str | None, labels: list[tuple[str, str]]) -> bool:
    if name is not None and info.name != name:
        return False
    return all(key in info.labels and info.labels[key] == value for key, value in labels)


def offer_json(offer: Any) -> dict[str, Any]:
    """An offer as the HTTP API shows it; a plugin's options stay {} (this client loads no plugins)."""
    from google.protobuf.json_format import MessageToDict

    arm = offer.WhichOneof("kind")
    restricted = list(offer.restricted_to)
    if arm is None:
        return {"type": "unknown", "options": {}, "restricted_to": restricted}
    if arm == "plugin":
        return {"type": offer.plugin.type_name, "options": {}, "restricted_to": restricted}
    options = MessageToDict(getattr(offer, arm), preserving_proto_field_name=True)
    return {"type": arm, "options": options, "restricted_to": restricted}


def session_names(session: Any) -> dict[int, str]:
    """Session id -> the name it gave itself (connect(name=...)), for the named ones."""
    from bufbroker.v1 import broker_pb2 as pb

    return {s.id: s.name for s in session.call("ListSessions", pb.ListSessionsRequest()).sessions if s.name}


def who(pid: int, name: str) -> str:
    """A pid with the session's name beside it, when it has one."""
    return f"{pid} ({name})" if name else str(pid)


def list_streams(session: Any, name: str = "") -> list[Any]:
    """Every visible stream (or the one named ``name``), as StreamInfo, page after page."""
    from bufbroker.v1 import broker_pb2 as pb

    return _every_page(session, "ListStreams", pb.ListStreamsRequest, "streams", name)


def report_time(stream: Any, at: float) -> float | None:
    """When (on the monotonic clock of ``at``, the sample's time) the stream's producer last reported."""
    return at - stream.report_age if stream.report_age >= 0 else None


def link_rates(
    before: list[Any], before_at: float, now: list[Any], now_at: float, previous: dict[int, float] | None = None
) -> dict[int, float]:
    """link id -> frames delivered per second between two samples' producer reports.

    Link counters are what the producer last reported, so the rate is the
    change of ``delivered`` over the time between the two reports; a link
    whose producer has not reported since keeps its ``previous`` rate.
    """
    earlier: dict[int, tuple[float, int]] = {}
    for stream in before:
        at = report_time(stream, before_at)
        if at is not None:
            for c in stream.consumers:
                earlier[c.link_id] = (at, c.counters.delivered)
    rates: dict[int, float] = {}
    for stream in now:
        at = report_time(stream, now_at)
        for c in stream.consumers:
            seen = earlier.get(c.link_id)
            if at is not None and seen is not None and at - seen[0] > 0.05:
                rates[c.link_id] = max(0.0, (c.counters.delivered - seen[1]) / (at - seen[0]))
            elif previous and c.link_id in previous:
                rates[c.link_id] = previous[c.link_id]
    return rates


def consumer_fps(consumer: Any, rates: dict[int, float]) -> float | None:
    """The consumer's fps as reported, else as measured; None when neither is known."""
    if consumer.counters.fps > 0:
        return float(consumer.counters.fps)
    return rates.get(consumer.link_id)


def sample_streams(session: Any, name: str = "") -> tuple[list[Any], dict[int, float]]:
    """The streams and their consumers' measured rates: two ListStreams a producer report apart.

    One ListStreams when no stream has consumers (nothing to measure).
    """
    first_at = time.monotonic()
    first = list_streams(session, name)
    with_links = [s for s in first if s.consumers]
    if not with_links:
        return first, {}
    # The SDK reports every 0.5 s: wait until just past the next report of the stalest stream.
    ages = [s.report_age if s.report_age >= 0 else 0.0 for s in with_links]
    time.sleep(min(MAX_REPORT_WAIT, max(0.05, 0.55 - min(ages))))
    now_at = time.monotonic()
    now = list_streams(session, name)
    return now, link_rates(first, first_at, now, now_at)


def stream_json(info: Any, rates: dict[int, float] | None = None) -> dict[str, Any]:
    """A StreamInfo as a JSON object: the HTTP API's Stream; consumers' fps measured when not reported."""
    from bufbroker_broker.server.http.models import stream_model

    shown = stream_model(info).model_dump(mode="json")
    for consumer, c in zip(shown["consumers"], info.consumers, strict=True):
        fps = consumer_fps(c, rates or {})
        consumer["counters"]["fps"] = round(fps, 2) if fps is not None else 0.0
    return shown


def drops(counters: Any) -> int:
    return int(counters.dropped_busy + counters.dropped_overwritten)


def print_streams(streams: list[Any], rates: dict[int, float]) -> None:
    """The streams section of the table: a line per stream, a line per consumer below it."""
    from bufbroker.v1 import broker_pb2 as pb
    from bufbroker.v1 import stream_pb2 as spb

    print()
    print(f"{'STREAM':<24} {'PRODUCER (NAME)':<30} {'SLOTS':>5} {'FPS':>8}  {'CONSUMERS':>9}  STALL POLICY")
    for s in streams:
        fps = f"{s.producer.fps:.1f}" if s.HasField("producer") else "-"
        policy = "report" if s.on_stall == pb.STALL_POLICY_REPORT else "reclaim"
        print(
            f"{s.name:<24} {who(s.producer_pid, s.producer_name):<30} {len(s.slot_buffer_ids):>5} {fps:>8}  "
            f"{len(s.consumers):>9}  {policy} after {s.stall_timeout:g} s"
        )
        if s.consumers:
            print(
                f"  {'LINK':>6} {'CONSUMER (NAME)':<28} {'MODE':<6} {'FPS':>8} {'LAG':>6} {'HELD':>12} "
                f"{'DROPS':>7}  STALLED"
            )
        for c in s.consumers:
            k = c.counters
            mode = "latest" if c.mode == spb.CONSUMER_MODE_LATEST else "queue"
            measured = consumer_fps(c, rates)
            held = f"{k.held_now}/{c.max_held} {k.longest_hold:.1f}s"
            print(
                f"  {c.link_id:>6} {who(c.pid, c.name):<28} {mode:<6} "
                f"{f'{measured:.1f}' if measured is not None else '-':>8} {k.lag:>6} {held:>12} {drops(k):>7}  "
                f"{'STALLED' if c.stalled else 'no'}"
            )


def buffer_json(info: Any, names: dict[int, str] | None = None) -> dict[str, Any]:
    """A BufferInfo as a JSON object: the field names of the HTTP API's Buffer, plus exporter_name (from ``names``)."""
    from bufbroker.v1 import broker_pb2 as pb

    layout = None
    if info.HasField("layout"):
        layout = {
            "fourcc": info.layout.fourcc,
            "width": info.layout.width,
            "height": info.layout.height,
            "modifier": info.layout.modifier,
            "planes": [{"offset": p.offset, "stride": p.stride} for p in info.layout.planes],
        }
    return {
        "id": info.id,
        "name": info.name,
        "size": info.size,
        "labels": dict(info.labels),
        "layout": layout,
        "offer_types": list(info.offer_types),
        "offers": [offer_json(o) for o in info.offers],
        "exporter_pid": info.exporter_pid,
        "exporter_uid": info.exporter_uid,
        "exporter_session_id": info.exporter_session_id,
        "exporter_name": (names or {}).get(info.exporter_session_id, ""),
        "exporter_gone": info.exporter_gone,
        "on_exporter_exit": "keep" if info.on_exporter_exit == pb.EXPORTER_EXIT_POLICY_KEEP else "revoke",
        "allow": list(info.allow),
        "state": "active" if info.state == pb.BUFFER_STATE_ACTIVE else "revoked",
        "generation": info.generation,
        "attachment_count": info.attachment_count,
        "pinned": bool(info.pinned_by),
        "fd_count": info.fd_count,
    }


def run(args: argparse.Namespace) -> int:
    import bufbroker
    from bufbroker.v1 import broker_pb2 as pb

    try:
        with bufbroker.connect(args.socket_dir) as session:
            buffers = [b for b in list_buffers(session, args.name or "") if matches(b, args.name, args.labels)]
            streams, rates = sample_streams(session, args.name or "")
            streams = [s for s in streams if matches(s, args.name, args.labels)]
            names = session_names(session)
    except bufbroker.BrokerError as error:
        print(f"bufbroker ls: {error.message}", file=sys.stderr)
        return 1
    if args.json:
        document = {
            "buffers": [buffer_json(b, names) for b in buffers],
            "streams": [stream_json(s, rates) for s in streams],
        }
        print(json.dumps(document, indent=2))
        return 0
    print(f"{'ID':>6}  {'NAME':<24} {'PID (NAME)':<22} {'SIZE':>12}  {'STATE':<8} {'OFFERS':<20} {'ATTACHMENTS':>11}")
    for b in buffers:
        state = "active" if b.state == pb.BUFFER_STATE_ACTIVE else "revoked"
        exporter = who(b.exporter_pid, names.get(b.exporter_session_id, ""))
        print(
            f"{b.id:>6}  {b.name or '-':<24} {exporter:<22} {b.size:>12}  {state:<8} "
            f"{','.join(b.offer_types):<20} {b.attachment_count:>11}"
        )
    if not buffers:
        print("(no buffers registered)" if args.name is None and not args.labels else "(no buffers match)")
    if streams:
        print_streams(streams, rates)
    return 0
