"""What every Redis piece shares: making the client, key names, the server's name in messages.

Calls to the client go through `gcluster.redis._calls.call`.
"""

from __future__ import annotations

import re
from typing import Final

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.connection import SSLConnection
from redis.retry import Retry

from gcluster.errors import ConfigError

__all__ = ["Client", "hash_tag", "make_client", "safe_url"]

Client = redis.Redis | RedisCluster

_PASSWORD_PARAMETER: Final = re.compile(r"([?&]password=)[^&#]*")


def make_client(
    url: str | None, client: Client | None, *, connect_timeout: float, timeout: float
) -> Client:
    """The given client, or one for `url` whose failures surface within the timeouts.

    Raises:
        ConfigError: neither (or both of) url and client, or a URL redis-py refuses.
    """
    if client is not None:
        if url is not None:
            raise ConfigError("pass either url or client, not both")
        return client
    if url is None:
        raise ConfigError("a Redis url or client is needed")
    # Two quick retries ride over a connection that went stale (a Redis
    # restart); a Redis that is down fails within the connect timeout.
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 2)
    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=retry,
        )
    except ValueError as err:
        raise ConfigError(f"not a Redis URL redis-py takes: {safe_url(url)} ({err})") from err


def hash_tag(namespace: str) -> str:
    """`{namespace}`: every key of one application hashes to one Redis Cluster slot.

    Raises:
        ConfigError: an empty namespace, or one with braces (they would end the tag).
    """
    if not namespace or "{" in namespace or "}" in namespace:
        raise ConfigError(f"namespace must be non-empty and without braces, not {namespace!r}")
    return "{" + namespace + "}"


def safe_url(url: str | None, client: Client | None = None) -> str:
    """The server's URL without a password, for messages and reprs.

    Without `url`, the URL of the server `client` connects to (never its
    password), e.g. "redis://10.0.0.5:6379/0".
    """
    if url is None:
        return _client_url(client)
    # By hand rather than with urlsplit: a password holding "/" or "?" that
    # was not percent-encoded would end urlsplit's netloc before the "@".
    scheme, sep, rest = url.partition("://")
    user_info, at, host = rest.rpartition("@")
    if sep and at and ":" in user_info:
        url = f"{scheme}://{user_info.partition(':')[0]}:***@{host}"
    # redis-py also takes the password as a query parameter.
    return _PASSWORD_PARAMETER.sub(r"\1***", url)


def _client_url(client: Client | None) -> str:
    if isinstance(client, RedisCluster):
        node = client.get_default_node()  # type: ignore[no-untyped-call]
        if node is not None:
            return f"redis://{node.host}:{node.port} (Redis Cluster)"
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return f"(a {type(client).__name__})"
    db = kwargs.get("db", 0)
    path = kwargs.get("path")
    if path:
        return f"unix://{path}?db={db}"
    connection_class = getattr(pool, "connection_class", None)
    secure = isinstance(connection_class, type) and issubclass(connection_class, SSLConnection)
    scheme = "rediss" if secure else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"
