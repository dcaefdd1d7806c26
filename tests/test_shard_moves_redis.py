"""A shard moves between two clusters through a RedisSessionStore (test_shard_moves.py's test)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis_server import redis_server_fixture, redis_url_fixture  # noqa: F401
from test_shard_moves import MakeSim, clusters, move_through_a_store  # noqa: F401

from gcluster import Cluster
from gcluster.redis import RedisSessionStore

pytestmark = pytest.mark.extras


def test_a_shard_moves_through_a_redis_session_store(
    redis_url: str,
    make_sim: MakeSim,
    clusters: Callable[..., Cluster],  # noqa: F811
) -> None:
    stores: list[RedisSessionStore] = []

    def store() -> RedisSessionStore:
        # A store of its own for each cluster, as each process has.
        stores.append(RedisSessionStore(redis_url, namespace="moves"))
        return stores[-1]

    try:
        move_through_a_store(store, make_sim, clusters)
    finally:
        for made in stores:
            made.close()
