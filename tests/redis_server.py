"""Real Redis for the tests: one redis-server, or a six-node Redis Cluster, on loopback.

Import the fixtures into a test module; they register under the names
`redis_server`, `redis_url`, `make_redis_server` and `make_redis_cluster`:

    from redis_server import redis_server_fixture, redis_url_fixture  # noqa: F401

`redis_server` (and so `redis_url`) is parametrised: each test using it runs
against a single server (`[single]`) and against a Redis Cluster of three
masters and three replicas (`[cluster]`), started once per session. A test
that kills nodes starts a cluster of its own with `make_redis_cluster`; one
that means a single server only is marked `@single_only`. The launchers
themselves are in redis_nodes.py (re-exported here), which benchmarks import
without pytest. There is no skipping: without redis-server and redis-cli the
tests fail.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Iterator

import pytest
from redis_nodes import RedisClusterNodes, RedisServer, all_keys, free_port, raw_client

__all__ = [
    "RedisClusterNodes",
    "RedisServer",
    "all_keys",
    "free_port",
    "make_redis_cluster_fixture",
    "make_redis_server_fixture",
    "raw_client",
    "redis_server_fixture",
    "redis_url_fixture",
    "shared_cluster",
    "single_only",
]

#: Runs a test using `redis_server`/`redis_url` against the single server only
#: (what it proves does not depend on the kind of Redis, and CI time is scarce).
single_only = pytest.mark.parametrize("redis_server", ["single"], indirect=True)

_session_cluster: RedisClusterNodes | None = None


def shared_cluster() -> RedisClusterNodes:
    """The session's Redis Cluster: started on first use, stopped when Python exits.

    One for all test modules, since starting one takes seconds; a test that
    kills nodes uses `make_redis_cluster` instead.
    """
    global _session_cluster
    if _session_cluster is None or not _session_cluster.running:
        if _session_cluster is None:
            atexit.register(_stop_shared_cluster)
        else:
            _session_cluster.stop()
        _session_cluster = RedisClusterNodes().start()
    return _session_cluster


def _stop_shared_cluster() -> None:
    if _session_cluster is not None:
        _session_cluster.stop()


@pytest.fixture(scope="module", name="redis_server", params=["single", "cluster"])
def redis_server_fixture(
    request: pytest.FixtureRequest,
) -> Iterator[RedisServer | RedisClusterNodes]:
    """One server for a test module, or the session's Redis Cluster.

    Use `redis_url` for an emptied one per test.
    """
    if request.param == "cluster":
        yield shared_cluster()
        return
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(name="redis_url")
def redis_url_fixture(redis_server: RedisServer | RedisClusterNodes) -> str:
    """The module's server (or the session's cluster), emptied for this test."""
    if isinstance(redis_server, RedisClusterNodes):
        redis_server.flush()
        return redis_server.url
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(name="make_redis_server")
def make_redis_server_fixture() -> Iterator[Callable[[], RedisServer]]:
    """Start servers of the test's own (to stop them mid-test); all stop after it."""
    started: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer().start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(name="make_redis_cluster")
def make_redis_cluster_fixture() -> Iterator[Callable[..., RedisClusterNodes]]:
    """Start Redis Clusters of the test's own (to kill nodes mid-test); all stop after it."""
    started: list[RedisClusterNodes] = []

    def make(**kwargs: int) -> RedisClusterNodes:
        cluster = RedisClusterNodes(**kwargs)
        started.append(cluster)
        return cluster.start()

    yield make
    for cluster in started:
        cluster.stop()
