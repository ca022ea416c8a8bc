"""Prometheus metrics, read from the registry at scrape time.

A collector rather than counters sprinkled through the code: each scrape is
one consistent snapshot of the broker's state, taken on the event loop.
State the registry holds (sessions, buffers, attachments, fds) is counted
from it; what happened (negotiations, moves, revocations) comes from
:class:`bufbroker_broker.server.observe.activity.ActivityCounters`, and RPC timings from the gRPC
interceptor. Names carry the ``bufbroker_`` prefix and base units
(seconds, bytes); counters end in ``_total``.

Beside them, on the same registry (never prometheus_client's global one),
the standard ``process_*`` (resident memory, open fds, CPU seconds, ...) and
``python_*`` (``python_info``, ``python_gc_*``) collectors every Prometheus
user expects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from bufbroker_broker import mapping_types
from bufbroker_broker.core.fd_ledger import FdLedger
from bufbroker_broker.core.registry import ACTIVE, REVOKED, Registry
from bufbroker_broker.server.grpc.timing import RpcTimings
from bufbroker_broker.server.observe.activity import NEGOTIATION_RESULTS, ActivityCounters
from bufbroker_broker.server.observe.introspection import Role, session_role
from bufbroker_broker.server.streams import Streams, link_counters

ROLES: tuple[Role, ...] = ("exporter", "importer", "both", "idle")


class EventClients(Protocol):
    """What the metrics read of the HTTP event stream (server/http/sse.py EventHub)."""

    @property
    def clients(self) -> Sized: ...

    @property
    def dropped(self) -> int: ...


class BrokerCollector(Collector):
    def __init__(
        self,
        registry: Registry,
        ledger: FdLedger,
        activity: ActivityCounters | None = None,
        rpc_timings: RpcTimings | None = None,
        event_clients: EventClients | None = None,
        version: str = "",
        streams: Streams | None = None,
    ) -> None:
        self.streams = streams  # server/streams.py: live streams and what their ends report
        self.registry = registry
        self.ledger = ledger
        self.activity = activity
        self.rpc_timings = rpc_timings
        self.event_clients = event_clients  # bufbroker_broker.server.http.sse.EventHub, when HTTP serves events
        self.version = version

    def collect(self) -> Iterator:
        yield from self._state()
        yield from self._fds()
        if self.activity is not None:
            yield from self._activity(self.activity)
        if self.rpc_timings is not None:
            yield from self._rpcs(self.rpc_timings)
        if self.streams is not None:
            yield from self._streams(self.streams)
        if self.event_clients is not None:
            hub = self.event_clients
            yield GaugeMetricFamily(
                "bufbroker_http_event_clients", "Clients streaming GET /v1/events.", value=len(hub.clients)
            )
            yield CounterMetricFamily(
                "bufbroker_http_event_clients_dropped",
                "Event-stream clients dropped because they read too slowly.",
                value=hub.dropped,
            )
        if self.version:
            # A gauge, as python_info is, not an OpenMetrics info family: promtool, which reads
            # OpenMetrics as the text format, cannot parse `# TYPE ... info`.
            info = GaugeMetricFamily("bufbroker_build_info", "Always 1; the broker's version.", labels=["version"])
            info.add_metric([self.version], 1)
            yield info

    def _state(self) -> Iterator:
        registry = self.registry
        sessions = GaugeMetricFamily("bufbroker_sessions", "Open client sessions, by role.", labels=["role"])
        roles = Counter(session_role(s) for s in registry.sessions.values())
        for role in ROLES:
            sessions.add_metric([role], roles[role])
        yield sessions

        states = sorted({ACTIVE, REVOKED} | {b.state for b in registry.buffers.values()})
        type_names = sorted(
            set(mapping_types.MAPPING_TYPES) | {o.type.name for b in registry.buffers.values() for o in b.offers}
        )
        buffers = GaugeMetricFamily("bufbroker_buffers", "Registered buffers, by state.", labels=["state"])
        size = GaugeMetricFamily("bufbroker_buffer_bytes", "Bytes of registered buffers, by state.", labels=["state"])
        offered = GaugeMetricFamily(
            "bufbroker_offered_buffers",
            "Registered buffers offering each mapping type, by state.",
            labels=["type", "state"],
        )
        offered_bytes = GaugeMetricFamily(
            "bufbroker_offered_bytes",
            "Bytes of registered buffers offering each mapping type, by state.",
            labels=["type", "state"],
        )
        by_state: Counter[str] = Counter()
        bytes_by_state: Counter[str] = Counter()
        by_type: Counter[tuple[str, str]] = Counter()
        bytes_by_type: Counter[tuple[str, str]] = Counter()
        for buffer in registry.buffers.values():
            by_state[buffer.state] += 1
            bytes_by_state[buffer.state] += buffer.size
            for name in {o.type.name for o in buffer.offers}:
                by_type[(name, buffer.state)] += 1
                bytes_by_type[(name, buffer.state)] += buffer.size
        for state in states:
            buffers.add_metric([state], by_state[state])
            size.add_metric([state], bytes_by_state[state])
            for name in type_names:
                offered.add_metric([name, state], by_type[(name, state)])
                offered_bytes.add_metric([name, state], bytes_by_type[(name, state)])
        yield buffers
        yield size
        yield offered
        yield offered_bytes

        attachments = GaugeMetricFamily(
            "bufbroker_attachments", "Attachments, by negotiated type.", labels=["map_type"]
        )
        by_map_type = Counter(a.map_type.name for a in registry.attachments.values())
        for name in sorted(set(mapping_types.MAPPING_TYPES) | set(by_map_type)):
            attachments.add_metric([name], by_map_type[name])
        yield attachments
        yield GaugeMetricFamily(
            "bufbroker_pinned_attachments",
            "Compat attachments, which pin their buffer.",
            value=sum(1 for a in registry.attachments.values() if a.pinned),
        )
        yield GaugeMetricFamily("bufbroker_mappings", "Live mappings.", value=len(registry.mappings))
        yield GaugeMetricFamily(
            "bufbroker_non_compliant_sessions",
            "Sessions that ignored a MoveNotify deadline.",
            value=sum(1 for s in registry.sessions.values() if getattr(s, "non_compliant", False)),
        )
        yield GaugeMetricFamily(
            "bufbroker_non_compliant_attachments",
            "Attachments that did not unmap in time for a move.",
            value=sum(1 for a in registry.attachments.values() if getattr(a, "non_compliant", False)),
        )

    def _fds(self) -> Iterator:
        ledger = self.ledger
        yield GaugeMetricFamily("bufbroker_fds_held", "Client fds the broker holds open.", value=ledger.held)
        for name, value, help_text in (
            ("bufbroker_fds_received", ledger.received, "fds received over the fd channel."),
            ("bufbroker_fds_sent", ledger.sent, "fds sent to importers."),
            ("bufbroker_fds_expired", ledger.expired, "fds closed because no call claimed them in time."),
        ):
            yield CounterMetricFamily(name, help_text, value=value)

    def _activity(self, activity: ActivityCounters) -> Iterator:
        yield CounterMetricFamily(
            "bufbroker_sessions_opened", "Sessions opened since start.", value=activity.sessions_opened
        )
        registered = CounterMetricFamily(
            "bufbroker_buffers_registered", "Buffers registered, by the exporter's preferred type.", labels=["type"]
        )
        registered_bytes = CounterMetricFamily(
            "bufbroker_registered_bytes",
            "Bytes of buffers registered, by the exporter's preferred type.",
            labels=["type"],
        )
        for name in sorted(set(mapping_types.MAPPING_TYPES) | set(activity.buffers_registered)):
            registered.add_metric([name], activity.buffers_registered[name])
            registered_bytes.add_metric([name], activity.bytes_registered[name])
        yield registered
        yield registered_bytes

        attaches = CounterMetricFamily("bufbroker_attaches", "Attaches, by negotiated type.", labels=["map_type"])
        maps = CounterMetricFamily("bufbroker_maps", "Maps, by negotiated type.", labels=["map_type"])
        for name in sorted(set(mapping_types.MAPPING_TYPES) | set(activity.attaches) | set(activity.maps)):
            attaches.add_metric([name], activity.attaches[name])
            maps.add_metric([name], activity.maps[name])
        yield attaches
        yield maps

        negotiations = CounterMetricFamily(
            "bufbroker_negotiations",
            "Negotiations, by result (matched, no-common-type, error), chosen type ('none' when "
            "nothing matched) and whether it was a dry run (explain).",
            labels=["result", "map_type", "dry_run"],
        )
        # Every (result, type) series exists from the start, so rate() sees the first one.
        seen = set(activity.negotiations)
        for dry_run in (False, True):
            seen.update(("matched", name, dry_run) for name in mapping_types.MAPPING_TYPES)
            seen.update((result, "none", dry_run) for result in NEGOTIATION_RESULTS if result != "matched")
        for result, map_type, dry_run in sorted(seen):
            negotiations.add_metric(
                [result, map_type, "true" if dry_run else "false"], activity.negotiations[(result, map_type, dry_run)]
            )
        yield negotiations
        histogram = activity.negotiation_seconds
        duration = HistogramMetricFamily(
            "bufbroker_negotiation_duration_seconds",
            "Seconds from the start of an Attach or explain request to its negotiation verdict.",
        )
        duration.add_metric([], histogram.cumulative(), sum_value=histogram.sum)
        yield duration

        for name, value, help_text in (
            ("bufbroker_moves", activity.moves, "Buffer moves (backing replaced)."),
            (
                "bufbroker_revokes",
                activity.revokes,
                "Buffers revoked (by exporters, operators, shutdown or session end).",
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        converter_uses = CounterMetricFamily(
            "bufbroker_converter_uses", "Attaches served through a converter, by converter.", labels=["converter"]
        )
        known = {str(getattr(c, "name", c)) for c in getattr(self.registry, "converters", ())}
        for name in sorted(known | set(activity.conversions)):
            converter_uses.add_metric([name], activity.conversions[name])
        yield converter_uses

    def _rpcs(self, timings: RpcTimings) -> Iterator:
        duration = HistogramMetricFamily(
            "bufbroker_rpc_duration_seconds",
            "Seconds to serve a unary call, by service and method (gRPC; call channels as bufbroker.v1.CallChannel).",
            labels=["service", "method"],
        )
        for (service, method), histogram in sorted(timings.durations.items()):
            duration.add_metric([service, method], histogram.cumulative(), sum_value=histogram.sum)
        yield duration
        calls = CounterMetricFamily(
            "bufbroker_rpcs",
            "Unary calls served, by service, method and status code (gRPC; call channels as bufbroker.v1.CallChannel).",
            labels=["service", "method", "code"],
        )
        for (service, method, code), count in sorted(timings.codes.items()):
            calls.add_metric([service, method, code], count)
        yield calls

    def _streams(self, streams: Streams) -> Iterator:
        """Live streams, their links, and the counters the producers and consumers last reported."""
        live = streams.listed()
        yield GaugeMetricFamily("bufbroker_streams", "Live streams.", value=len(live))
        yield CounterMetricFamily(
            "bufbroker_stream_stalls",
            "Consumers reported holding a slot past their stream's stall timeout (each stall once).",
            value=streams.stalls_total,
        )
        consumers = GaugeMetricFamily(
            "bufbroker_stream_consumers", "Consumers (links) of each stream.", labels=["stream"]
        )
        published = CounterMetricFamily(
            "bufbroker_stream_frames_published", "Frames published, as the producer reported.", labels=["stream"]
        )
        per_link = ["stream", "link"]
        delivered = CounterMetricFamily(
            "bufbroker_stream_frames_delivered", "Frames sent to each consumer (producer's report).", labels=per_link
        )
        dropped = CounterMetricFamily(
            "bufbroker_stream_frames_dropped",
            "Frames not delivered to a consumer, by reason: busy (latest mode), overwritten (drop=oldest).",
            labels=[*per_link, "reason"],
        )
        released = CounterMetricFamily(
            "bufbroker_stream_frames_released", "Frames each consumer released.", labels=per_link
        )
        reclaimed = CounterMetricFamily(
            "bufbroker_stream_frames_reclaimed", "Slots taken back from a stalled consumer.", labels=per_link
        )
        held = GaugeMetricFamily("bufbroker_stream_held_slots", "Slots each consumer holds now.", labels=per_link)
        lag = GaugeMetricFamily(
            "bufbroker_stream_lag_frames", "Seqs each consumer is behind the newest published frame.", labels=per_link
        )
        stalled = GaugeMetricFamily(
            "bufbroker_stream_stalled", "1 while a consumer holds a slot past the stall timeout.", labels=per_link
        )
        handoff = HistogramMetricFamily(
            "bufbroker_stream_handoff_latency_seconds",
            "Frame hand-off latency (publish to a readable frame at the consumer), as consumers reported it.",
            labels=["stream"],
        )
        for stream in live:
            histogram = stream.handoff_latency
            handoff.add_metric([stream.name], histogram.cumulative(), sum_value=histogram.sum)
            consumers.add_metric([stream.name], len(stream.links))
            totals = stream.producer_counters
            published.add_metric([stream.name], totals.published if totals is not None else 0)
            for link in stream.links.values():
                key = [stream.name, str(link.id)]
                counters = link_counters(link)
                delivered.add_metric(key, counters.delivered)
                dropped.add_metric([*key, "busy"], counters.dropped_busy)
                dropped.add_metric([*key, "overwritten"], counters.dropped_overwritten)
                released.add_metric(key, counters.released)
                reclaimed.add_metric(key, counters.reclaimed)
                held.add_metric(key, counters.held_now)
                lag.add_metric(key, counters.lag)
                stalled.add_metric(key, 1 if link.stalled else 0)
        # A family without a stream to show has no sample: left out, as promtool reads a bare counter
        # family as a sample with no help text.
        families = (consumers, published, delivered, dropped, released, reclaimed, held, lag, stalled, handoff)
        yield from (family for family in families if family.samples)


def make_metrics_registry(
    registry: Registry,
    ledger: FdLedger,
    activity: ActivityCounters | None = None,
    rpc_timings: RpcTimings | None = None,
    event_clients: EventClients | None = None,
    version: str = "",
    streams: Streams | None = None,
) -> CollectorRegistry:
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(BrokerCollector(registry, ledger, activity, rpc_timings, event_clients, version, streams))
    # Each registers itself on the registry it is given; read at scrape time from /proc/self and gc.
    ProcessCollector(registry=metrics)
    PlatformCollector(registry=metrics)
    GCCollector(registry=metrics)
    return metrics
