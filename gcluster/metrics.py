"""Prometheus metrics for a cluster (extra: `pip install gcluster[metrics]`).

Nothing is counted here: shards keep cheap counters of their own
(`Shard.stats`), and this collector turns them into metric families when
Prometheus scrapes, so a cluster without the extra pays nothing and one with
it pays only per scrape::

    from gcluster import metrics
    metrics.serve(cluster, port=9100)           # its own endpoint, in the hub
    metrics.register(cluster, registry=REGISTRY)  # or an application's registry
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "gcluster.metrics needs prometheus_client: pip install 'gcluster[metrics]'"
    ) from err

from gcluster.protocol import Stage
from gcluster.stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from gcluster.cluster import Cluster

__all__ = ["ClusterCollector", "register", "serve"]


class ClusterCollector(Collector):
    """Reads a cluster's shards at scrape time. Must be scraped in the cluster's hub.

    The per-shard series are those of the shards the cluster runs at that
    scrape: a shard added with `Cluster.add_shard` appears, one removed with
    `remove_shard` disappears.
    """

    def __init__(self, cluster: Cluster, *, namespace: str = "gcluster") -> None:
        self.cluster = cluster
        self.namespace = namespace

    def collect(self) -> Iterator[Any]:
        ns = self.namespace
        stage = GaugeMetricFamily(
            f"{ns}_shard_stage",
            "Current stage of each shard (1 = in it).",
            labels=["shard", "stage"],
        )
        sequence = GaugeMetricFamily(
            f"{ns}_shard_sequence", "Last dispatch sequence received.", labels=["shard"]
        )
        events = CounterMetricFamily(
            f"{ns}_shard_events", "Dispatches delivered, by event name.", labels=["shard", "event"]
        )
        filtered = CounterMetricFamily(
            f"{ns}_shard_events_filtered",
            "Dispatches dropped by the event-type filter.",
            labels=["shard"],
        )
        duplicates = CounterMetricFamily(
            f"{ns}_shard_events_duplicate",
            "Dispatches the gateway sent again (a sequence handled already), not delivered.",
            labels=["shard"],
        )
        skipped = CounterMetricFamily(
            f"{ns}_shard_messages_skipped",
            "Gateway messages that could not be used (not JSON, a bad dispatch), logged.",
            labels=["shard"],
        )
        reconnects = CounterMetricFamily(
            f"{ns}_shard_reconnects",
            "Reconnects, by kind (resume or identify) and cause.",
            labels=["shard", "kind", "cause"],
        )
        closes = CounterMetricFamily(
            f"{ns}_shard_closes", "Connections ended, by close code.", labels=["shard", "code"]
        )
        identifies = CounterMetricFamily(
            f"{ns}_shard_identifies", "IDENTIFY payloads sent.", labels=["shard"]
        )
        resumes = CounterMetricFamily(
            f"{ns}_shard_resumes", "RESUME payloads sent.", labels=["shard"]
        )
        rl_waits = CounterMetricFamily(
            f"{ns}_shard_ratelimit_waits",
            "Commands that waited for a rate-limit slot.",
            labels=["shard"],
        )
        rl_seconds = CounterMetricFamily(
            f"{ns}_shard_ratelimit_wait_seconds",
            "Time commands spent waiting for a slot.",
            labels=["shard"],
        )
        latency = HistogramMetricFamily(
            f"{ns}_shard_heartbeat_latency_seconds", "Heartbeat round trips.", labels=["shard"]
        )
        # Shards removed from the cluster take their series with them; these
        # cluster-wide counters keep what they had added, so they never go down.
        removed = self.cluster._removed_stats
        identify_waits = removed.identify_waits
        identify_seconds = removed.identify_wait_seconds
        for shard in self.cluster.shards():
            sid = str(shard.id)
            info = shard.info()
            stats = shard.stats
            for member in Stage:
                stage.add_metric([sid, member.value], 1.0 if info.stage is member else 0.0)
            sequence.add_metric([sid], float(info.sequence or 0))
            for name, count in stats.events.items():
                events.add_metric([sid, name], count)
            filtered.add_metric([sid], stats.filtered)
            duplicates.add_metric([sid], stats.duplicates)
            skipped.add_metric([sid], stats.skipped)
            for (kind, cause), count in stats.reconnects.items():
                reconnects.add_metric([sid, kind, cause], count)
            for code, count in stats.close_codes.items():
                closes.add_metric([sid, "none" if code is None else str(code)], count)
            identifies.add_metric([sid], stats.identifies)
            resumes.add_metric([sid], stats.resumes)
            rl_waits.add_metric([sid], stats.ratelimit_waits)
            rl_seconds.add_metric([sid], stats.ratelimit_wait_seconds)
            cumulative = 0
            buckets = []
            for bound, count in zip(
                (*LATENCY_BUCKETS, float("inf")), stats.latency_buckets, strict=True
            ):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), float(cumulative)))
            latency.add_metric([sid], buckets, stats.latency_sum)
            identify_waits += stats.identify_waits
            identify_seconds += stats.identify_wait_seconds
        yield from (stage, sequence, events, filtered, duplicates, skipped, reconnects, closes)
        yield from (identifies, resumes)
        yield from (rl_waits, rl_seconds, latency)
        yield GaugeMetricFamily(
            f"{ns}_events_backlog",
            "Events queued for events() and not read yet.",
            value=self.cluster.backlog,
        )
        yield CounterMetricFamily(
            f"{ns}_identify_queue_waits", "Identify queue requests.", value=identify_waits
        )
        yield CounterMetricFamily(
            f"{ns}_identify_queue_wait_seconds",
            "Time spent waiting in the identify queue.",
            value=identify_seconds,
        )
        remaining = self.cluster.session_starts_remaining
        if remaining is not None:
            yield GaugeMetricFamily(
                f"{ns}_session_starts_remaining",
                "IDENTIFYs left today, as last known.",
                value=remaining,
            )


def register(
    cluster: Cluster, registry: CollectorRegistry | None = None, *, namespace: str = "gcluster"
) -> ClusterCollector:
    """Add the cluster's metrics to `registry` (prometheus_client's global one by default)."""
    from prometheus_client import REGISTRY

    collector = ClusterCollector(cluster, namespace=namespace)
    (registry if registry is not None else REGISTRY).register(collector)
    return collector


def serve(
    cluster: Cluster, port: int, addr: str = "127.0.0.1", *, namespace: str = "gcluster"
) -> Any:
    """Serve the cluster's metrics at http://addr:port/ from a greenlet in the hub.

    Returns the started `gevent.pywsgi.WSGIServer` (`.stop()` it; `.server_port` is
    the port when 0 was asked). prometheus_client's own `start_http_server` would
    scrape from another thread, where reading the shards is not safe.
    """
    from gevent.pywsgi import WSGIServer

    registry = CollectorRegistry()
    registry.register(ClusterCollector(cluster, namespace=namespace))
    server = WSGIServer((addr, port), make_wsgi_app(registry), log=None, error_log=None)
    server.start()
    return server
