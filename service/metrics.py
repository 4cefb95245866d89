"""Prometheus metrics of the worker and the API; the names are the ones deploy/ and the README use.

Event counts are not incremented on the hot path: the worker's `Stats` already counts them,
and a collector reads those counts when Prometheus scrapes. Histograms are observed once per
batch or per Redis round trip; gauges are refreshed by a periodic task of the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .stats import Stats

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

EVENT_OUTCOMES = ("consumed", "applied", "duplicate", "dead_lettered", "late_after_end", "no_state")

BATCH_SIZE = Histogram(
    "sessionpulse_batch_size",
    "Records per batch the worker applied (fetched batches merged while Redis was busy).",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 50000, 100000),
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "sessionpulse_batch_seconds",
    "Time to apply one batch in Redis, up to its offset commit (decoding runs before, beside the previous batch).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
REDIS_SCRIPT_SECONDS = Histogram(
    "sessionpulse_redis_script_seconds",
    "Round trip of one pipeline of calls to one Lua script.",
    ["script"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "sessionpulse_consumer_lag",
    "Records behind the high watermark, per assigned partition of this worker.",
    ["topic", "partition"],
    registry=REGISTRY,
)
OUTBOX_DEPTH = Gauge(
    "sessionpulse_outbox_depth", "Sessions with an outbound message due.", ["outbox"], registry=REGISTRY
)
LIVE_SESSIONS = Gauge("sessionpulse_live_sessions", "Sessions that are LIVE.", ["kind"], registry=REGISTRY)
WEBHOOKS = Counter(
    "sessionpulse_webhooks", "Webhook deliveries by answer.", ["provider", "status"], registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "sessionpulse_http_requests",
    "Read-API requests by route and status.",
    ["route", "status"],
    registry=REGISTRY,
)


class StatsCollector(Collector):
    """`sessionpulse_events_total` and `sessionpulse_published_total` from a worker's Stats."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "sessionpulse_events", "Inbound records by topic and outcome.", labels=["topic", "outcome"]
        )
        published = CounterMetricFamily(
            "sessionpulse_published", "Outbound messages the broker acknowledged.", labels=["channel"]
        )
        by_channel: dict[str, int] = {}
        for (what, topic), n in list(self.stats.counts.items()):
            if what in EVENT_OUTCOMES:
                events.add_metric([topic, what], n)
            elif what.endswith("_published"):
                channel = what.removesuffix("_published")
                by_channel[channel] = by_channel.get(channel, 0) + n
        for channel, n in sorted(by_channel.items()):
            published.add_metric([channel], n)
        yield events
        yield published


def serve(port: int, stats: Stats) -> None:
    """Expose the registry on `port` (0: not at all); a taken port is logged, not fatal."""
    REGISTRY.register(StatsCollector(stats))
    if not port:
        return
    try:
        start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
    except OSError as exc:
        log.error("metrics not served: port %d: %s", port, exc)
        return
    log.info("metrics on :%d/metrics", port)
