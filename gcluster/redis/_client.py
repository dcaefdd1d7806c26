"""What every Redis piece shares: the client, key names, the server's name in messages.

A URL names one node; whether it is a single server or a node of a Redis
Cluster is found out, not configured: `RedisTarget` asks the node ``CLUSTER
INFO`` at first use (within the connect timeout) and from then on uses a
plain `redis.Redis` or a `RedisCluster`, which follows the cluster's slots,
MOVED redirections and failovers. Asking is the one way that always works:
waiting for a MOVED reply instead would never notice a cluster whose node in
the URL happens to hold the namespace's slot, and once that node died, a
plain client would have no other node to go to.

Calls to the client go through `gcluster.redis._calls.call`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Any, Final

import gevent
import redis
from gevent.event import Event as Flag
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.connection import SSLConnection
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.retry import Retry

from gcluster.errors import ConfigError, RedisCallError
from gcluster.redis._calls import call, unreachable

__all__ = ["Client", "RedisTarget", "hash_tag", "make_client", "safe_url"]

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster

_PASSWORD_PARAMETER: Final = re.compile(r"([?&]password=)[^&#]*")
# How often a cluster client may refresh its map of the slots after an
# error: a failover is noticed this soon after the replica's promotion.
_TOPOLOGY_REFRESH: Final = 0.2
# While Redis cannot be reached, ask this often whether it can again.
_PROBE_EVERY: Final = 0.1
#: How long a write that must survive a failover waits for a replica of a
#: Redis Cluster master to confirm it (on a healthy link: well under 1 ms).
REPLICATION_WAIT_MS: Final = 500


def _retry() -> Retry:
    # Two quick retries ride over a connection that went stale (a Redis
    # restart); a Redis that is down fails within the connect timeout.
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 2)


def _database_error(url: str) -> ConfigError:
    return ConfigError(
        f"{safe_url(url)} is a node of a Redis Cluster, which has only database 0: "
        "leave the database out of the URL (or make it /0)"
    )


def _script_and_wait(
    master: redis.Redis, script: Script, keys: list[str], args: list[Any]
) -> tuple[Any, Any]:
    pipe = master.pipeline(transaction=False)
    pipe.evalsha(script.sha, len(keys), *keys, *args)
    pipe.execute_command("WAIT", 1, REPLICATION_WAIT_MS)  # type: ignore[no-untyped-call]
    reply, acked = pipe.execute()
    return reply, acked


class RedisTarget:
    """The Redis a piece talks to: one server or a Redis Cluster, told apart at first use.

    Args:
        url: a node's URL (or pass `client`).
        client: a ready redis-py client, used as it is.
        connect_timeout, timeout: seconds to connect and to wait for a reply.

    Raises:
        ConfigError: neither (or both of) url and client, or a URL redis-py refuses.
    """

    def __init__(
        self,
        url: str | None,
        client: Client | None,
        *,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        if client is not None and url is not None:
            raise ConfigError("pass either url or client, not both")
        if client is None and url is None:
            raise ConfigError("a Redis url or client is needed")
        self.url = url
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._client: Client | None = client
        self._plain: redis.Redis | None = None
        self._scripts: dict[str, Script] = {}
        self._detecting = threading.Lock()
        if client is None:
            assert url is not None
            # Made now (it connects only when used) so a bad URL fails here.
            try:
                self._plain = redis.Redis.from_url(
                    url,
                    socket_connect_timeout=connect_timeout,
                    socket_timeout=timeout,
                    retry=_retry(),
                )
            except ValueError as err:
                raise ConfigError(
                    f"not a Redis URL redis-py takes: {safe_url(url)} ({err})"
                ) from err

    def __repr__(self) -> str:
        return f"<RedisTarget {self.describe()}>"

    @property
    def client(self) -> Client | None:
        """The client, once known (always, when one was given)."""
        return self._client

    def get(self) -> Client:
        """The client; the first call asks the node whether it is part of a Redis Cluster.

        Call it from the greenlet (not from a function `call` runs in the
        thread pool): the first call blocks only the calling greenlet.

        Raises:
            RedisCallError: the node did not answer (the next call asks again).
            ConfigError: the URL names a database other than 0 of a cluster node.
        """
        client = self._client
        if client is None:
            client = self._client = call(self._detect)
        return client

    def script(self, text: str) -> Script:
        """`text` as a redis-py `Script` of the client (`get()`: the first call may ask the node).

        Raises:
            RedisCallError: the node did not answer.
        """
        script = self._scripts.get(text)
        if script is None:
            script = self._scripts[text] = self.get().register_script(text)
        return script

    def run_script(self, text: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script whose write must survive a failover; its reply.

        On a Redis Cluster whose slot has a replica, the script runs on the
        slot's master followed, on the same connection, by ``WAIT 1``: the
        reply comes back once a replica holds the write (or after
        `REPLICATION_WAIT_MS`, logged), so a master that dies at once does
        not take a write the caller already acted on with it. Elsewhere (a
        single server, a cluster without replicas) it is an ordinary call.

        Raises:
            RedisCallError: Redis failed, or refused the script.
        """
        client = self.get()
        script = self.script(text)
        if isinstance(client, RedisCluster):
            return call(self._run_replicated, client, script, keys, args)
        return call(script, keys, args)

    def _run_replicated(
        self, client: RedisCluster, script: Script, keys: list[str], args: list[Any]
    ) -> Any:
        """Run in the thread pool: the script, then WAIT 1, on one connection to the master."""
        if client.get_node_from_key(keys[0], replica=True) is None:  # type: ignore[no-untyped-call]
            return script(keys, args)
        node = client.get_node_from_key(keys[0])  # type: ignore[no-untyped-call]
        master = client.get_redis_connection(node)
        try:
            try:
                reply, acked = _script_and_wait(master, script, keys, args)
            except NoScriptError:
                master.script_load(script.script)
                reply, acked = _script_and_wait(master, script, keys, args)
        except (RedisError, OSError):
            # A MOVED or a dead master: let the cluster client refresh its map
            # of the slots (it follows redirections) so the next attempt goes
            # to the right node; the caller gets the original failure.
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                client.exists(keys[0])
            raise
        if int(acked) < 1:
            log.warning(
                "redis: no replica confirmed a write to %s within %d ms (a failover now "
                "would lose it)",
                keys[0],
                REPLICATION_WAIT_MS,
            )
        return reply

    def answers(self, key: str) -> bool:
        """Whether the node serving `key` (its slot's master on a cluster) answers now."""
        try:
            call(self.get().exists, key)
        except RedisCallError:
            return False
        return True

    def sleep_until_served(
        self, key: str, delay: float, err: RedisCallError, wake: Flag | None = None
    ) -> bool:
        """Sleep `delay` seconds after `err`, or until `key`'s node answers again, or `wake`.

        While `err` is a failure to reach Redis (no answer; a Redis Cluster
        between masters), a one-key command asks every `_PROBE_EVERY` seconds
        whether the node serving `key` answers (through a cluster client,
        which refreshes its map of the slots as it goes): a failed-over
        master is noticed within that, not after the rest of a backoff that
        grew during the failover. After an error Redis answered (a key of
        the wrong type), it sleeps `delay` out.

        Returns:
            True when `wake` was set (it is left set for the caller to clear).
        """
        deadline = time.monotonic() + delay
        probing = unreachable(err)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            step = min(left, _PROBE_EVERY) if probing else left
            if wake is not None:
                if wake.wait(step):
                    return True
            else:
                gevent.sleep(step)
            if probing and self.answers(key):
                return False

    def _detect(self) -> Client:
        """Run in the thread pool: the plain client, or a cluster client starting at the URL."""
        # Greenlets using one piece at once ask once; the others take its answer.
        with self._detecting:
            client = self._client
            if client is None:
                client = self._ask()
            return client

    def _ask(self) -> Client:
        plain = self._plain
        assert plain is not None and self.url is not None
        try:
            plain.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except ResponseError as err:
            if "cluster mode" in str(err):
                # The connection's SELECT of another database was refused.
                raise _database_error(self.url) from err
            # "cluster support disabled" on a plain server; anything else (an
            # ACL refusing CLUSTER, a proxy that does not know it) means the
            # server routes keys itself: a plain client is right either way.
            if "disabled" not in str(err):
                log.debug("redis: CLUSTER INFO refused (%s); using %s as one server", err, self)
            return plain
        try:
            cluster = RedisCluster.from_url(
                self.url,
                socket_connect_timeout=self._connect_timeout,
                socket_timeout=self._timeout,
                retry=_retry(),
                # A slot whose master is down must not keep the others from working.
                require_full_coverage=False,
                topology_refresh_min_interval=_TOPOLOGY_REFRESH,
            )
        except RedisClusterException as err:
            if "db" in str(err):
                raise _database_error(self.url) from err
            raise
        plain.close()
        log.info("redis: %s is a node of a Redis Cluster: following its slots", safe_url(self.url))
        return cluster

    def describe(self) -> str:
        """The server's URL without a password, for messages."""
        return safe_url(self.url, self._client)

    def close(self) -> None:
        """Close the client's connections (the owner of a given client calls it, or nobody)."""
        if self._client is not None:
            self._client.close()
        if self._plain is not None:
            self._plain.close()


def make_client(
    url: str | None,
    client: Client | RedisTarget | None,
    *,
    connect_timeout: float,
    timeout: float,
) -> RedisTarget:
    """A `RedisTarget` for the given client or for `url` (a given target is shared as it is).

    Raises:
        ConfigError: neither (or both of) url and client, or a URL redis-py refuses.
    """
    if isinstance(client, RedisTarget):
        if url is not None:
            raise ConfigError("pass either url or client, not both")
        return client
    return RedisTarget(url, client, connect_timeout=connect_timeout, timeout=timeout)


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
    if isinstance(client, RedisCluster) and url is not None:
        return f"{safe_url(url)} (Redis Cluster)"
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
