"""What every Redis piece shares: making the client, key names, the server's name in messages.

Calls to the client go through `gcluster.redis._calls.call`.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

__all__ = ["Client", "hash_tag", "make_client", "safe_url"]

Client = redis.Redis | RedisCluster


def make_client(
    url: str | None, client: Client | None, *, connect_timeout: float, timeout: float
) -> Client:
    """The given client, or one for `url` whose failures surface within the timeouts.

    Raises:
        ValueError: neither (or both of) url and client, or a URL redis-py refuses.
    """
    if client is not None:
        if url is not None:
            raise ValueError("pass either url or client, not both")
        return client
    if url is None:
        raise ValueError("a Redis url or client is needed")
    # Two quick retries ride over a connection that went stale (a Redis
    # restart); a Redis that is down fails within the connect timeout.
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 2)
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=timeout,
        retry=retry,
    )


def hash_tag(namespace: str) -> str:
    """`{namespace}`: every key of one application hashes to one Redis Cluster slot.

    Raises:
        ValueError: an empty namespace, or one with braces (they would end the tag).
    """
    if not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(f"namespace must be non-empty and without braces, not {namespace!r}")
    return "{" + namespace + "}"


def safe_url(url: str | None, client: Client | None = None) -> str:
    """The URL without its password, for messages and reprs."""
    if url is None:
        return repr(client)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
