"""The Prometheus endpoint while shards stream events and one of them is made to reconnect."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

import gevent
import pytest
from conftest import TIMEOUT, collect, has_numbers

from gcluster import Cluster
from gcluster.testing import STREAM_INTENTS, GatewaySimulator

pytestmark = pytest.mark.extras

MakeSim = Callable[..., GatewaySimulator]


Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(port: int) -> dict[Sample, float]:
    """Samples by (name, labels), fetched over HTTP without blocking the hub."""
    url = f"http://127.0.0.1:{port}/"
    body = gevent.get_hub().threadpool.apply(lambda: urllib.request.urlopen(url, timeout=10).read())
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            name, _, labels = series.partition("{")
            pairs = re.findall(r'(\w+)="([^"]*)"', labels)
            samples[(name, frozenset(pairs))] = float(value)
    return samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_show_events_latency_and_a_reconnect_with_its_cause(make_sim: MakeSim) -> None:
    from gcluster import metrics

    sim = make_sim(shards=4, max_concurrency=4, heartbeat_interval=0.2)
    cluster = Cluster(sim.token, STREAM_INTENTS, api_base=sim.api_base)
    cluster.up(timeout=TIMEOUT)
    server = metrics.serve(cluster, port=0)
    try:
        assert cluster.wait_until_ready(TIMEOUT)
        for shard_id in range(4):
            sim.send_events(shard_id, 50)
        collect(cluster.events(), has_numbers(range(4), 50))
        sim.reconnect_shard(2)  # op 7: the shard must resume
        assert sim.wait_until(
            lambda: any(r.ok and r.shard_id == 2 for r in sim.records.resumes), TIMEOUT
        )
        assert sim.wait_until(
            lambda: all(s.stats.latency_count >= 2 for s in cluster.shards()), TIMEOUT
        )
        samples = scrape(server.server_port)
    finally:
        server.stop()
        cluster.down()
    for shard_id in range(4):
        sid = str(shard_id)
        # 50 events cycle over five kinds: ten MESSAGE_CREATE per shard.
        assert (
            value(samples, "gcluster_shard_events_total", shard=sid, event="MESSAGE_CREATE") == 10
        )
        assert value(samples, "gcluster_shard_stage", shard=sid, stage="connected") == 1
        assert value(samples, "gcluster_shard_heartbeat_latency_seconds_count", shard=sid) >= 2
        assert value(samples, "gcluster_shard_identifies_total", shard=sid) == 1
        assert value(samples, "gcluster_shard_events_duplicate_total", shard=sid) == 0
        assert value(samples, "gcluster_shard_messages_skipped_total", shard=sid) == 0
    reconnects = value(
        samples,
        "gcluster_shard_reconnects_total",
        shard="2",
        kind="resume",
        cause="reconnect_requested",
    )
    assert reconnects == 1
    assert value(samples, "gcluster_shard_closes_total", shard="2", code="4000") == 1
    assert value(samples, "gcluster_shard_resumes_total", shard="2") == 1
    # The queue keeps one start back (spending the last resets the token).
    assert value(samples, "gcluster_session_starts_remaining") == sim.session_start_remaining - 1
    assert value(samples, "gcluster_events_backlog") >= 0
