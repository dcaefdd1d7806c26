"""Redis for the benchmarks: the test suite's launchers, and a client for a URL.

One redis-server, or a Redis Cluster of three masters with a replica each,
both from ``tests/redis_nodes.py`` (which needs no pytest). Every gcluster key
of one namespace carries the namespace's hash tag, so one master serves a
whole bot and the others stand by.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import redis
from _common import ROOT
from redis.cluster import RedisCluster

from gcluster.redis import decode_event
from gcluster.testing import event_number

sys.path.insert(0, str(ROOT / "tests"))

from redis_nodes import RedisClusterNodes, RedisServer  # noqa: E402

__all__ = [
    "RedisProcesses",
    "StreamEntry",
    "client_for",
    "is_cluster",
    "start_cluster",
    "start_redis",
    "stream_entries",
]

#: What `start_redis` and `start_cluster` return: `.url`, `.stop()`.
RedisProcesses = RedisServer | RedisClusterNodes


def start_redis() -> RedisServer:
    """One redis-server without persistence."""
    return RedisServer().start()


def start_cluster() -> RedisClusterNodes:
    """A Redis Cluster of three masters with a replica each, every slot covered."""
    return RedisClusterNodes(masters=3, replicas=1, cluster_node_timeout=2000).start()


def is_cluster(url: str) -> bool:
    """Whether the server at `url` runs with cluster mode enabled."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    finally:
        client.close()


def client_for(url: str, cluster: bool, **options: object) -> redis.Redis | RedisCluster:
    """A redis-py client for `url`: a `RedisCluster` when the server is a cluster node."""
    if cluster:
        return RedisCluster.from_url(url, **options)  # type: ignore[arg-type]
    return redis.Redis.from_url(url, **options)  # type: ignore[arg-type]


class StreamEntry(NamedTuple):
    """One entry of a `StreamSink`'s stream, as the benchmarks count them."""

    ms: int
    """The entry ID's time: Redis's clock when the XADD ran, in ms."""
    id: str
    shard_id: int
    number: int | None
    """The simulator's number of the event (`gcluster.testing.event_number`), if any."""


def stream_entries(client: redis.Redis, stream: str) -> list[StreamEntry]:
    """Every entry of the stream, in order, read 10,000 at a time."""
    found = []
    last = "-"
    while True:
        batch = client.xrange(stream, min=last, count=10_000)
        if last != "-":
            batch = batch[1:]
        if not batch:
            return found
        for entry_id, fields in batch:
            shard_id, event = decode_event(fields)
            data: Any = event.data
            number = event_number(data) if isinstance(data, dict) else None
            text = entry_id.decode()
            found.append(StreamEntry(int(text.split("-")[0]), text, shard_id, number))
        last = batch[-1][0].decode()
