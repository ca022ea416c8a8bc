"""Prometheus metrics, read from the registry at scrape time.

A collector rather than counters sprinkled through the code: each scrape is
one consistent snapshot of the broker's state, taken on the event loop.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.core.registry import Registry
from broker.fd_ledger import FdLedger


class BrokerCollector(Collector):
    def __init__(self, registry: Registry, ledger: FdLedger) -> None:
        self.registry = registry
        self.ledger = ledger

    def collect(self) -> Iterator:
        registry, ledger = self.registry, self.ledger
        yield GaugeMetricFamily("bufbroker_sessions", "Open client sessions.", value=len(registry.sessions))
        buffers = GaugeMetricFamily("bufbroker_buffers", "Registered buffers.", labels=["state"])
        size = GaugeMetricFamily("bufbroker_buffer_bytes", "Bytes of registered buffers.", labels=["state"])
        by_state = Counter(b.state for b in registry.buffers.values())
        bytes_by_state = Counter()
        for buffer in registry.buffers.values():
            bytes_by_state[buffer.state] += buffer.size
        for state in ("active", "revoked"):
            buffers.add_metric([state], by_state[state])
            size.add_metric([state], bytes_by_state[state])
        yield buffers
        yield size
        attachments = GaugeMetricFamily("bufbroker_attachments", "Attachments by negotiated type.", labels=["map_type"])
        for map_type, count in sorted(Counter(a.map_type.name for a in registry.attachments.values()).items()):
            attachments.add_metric([map_type], count)
        yield attachments
        yield GaugeMetricFamily("bufbroker_mappings", "Live mappings.", value=len(registry.mappings))
        yield GaugeMetricFamily("bufbroker_fds_held", "Client fds the broker holds open.", value=ledger.held)
        for name, value, help_text in (
            ("bufbroker_fds_received", ledger.received, "fds received over the fd channel."),
            ("bufbroker_fds_sent", ledger.sent, "fds sent to importers."),
            ("bufbroker_fds_expired", ledger.expired, "fds closed because no call claimed them in time."),
        ):
            yield CounterMetricFamily(name, help_text, value=value)


def make_metrics_registry(registry: Registry, ledger: FdLedger) -> CollectorRegistry:
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(BrokerCollector(registry, ledger))
    return metrics
