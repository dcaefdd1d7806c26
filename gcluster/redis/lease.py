"""ShardLease: one process at a time runs a slice of the bot's shards; a standby takes over.

Two processes must never run the same shard: Discord would see two
connections of one shard, and each would RESUME the other's session away. A
lease is a Redis key, `{namespace}:lease:<slice>`, set with `SET NX PX` to
its holder's name and renewed while the holder lives. A standby process for
the same slice waits for the key to expire (its holder died or lost Redis),
takes it, and starts the shards, which RESUME from the session store where the
old holder stopped.

The holder renews every `ttl / 3` seconds, and gives the slice up (the
`on_lost` callback) when a renewal finds the key gone or someone else's, or
when it could not renew for `ttl * 0.8` seconds (it cannot know whether the
key still exists, and a standby may take it at `ttl`).

A planned handoff (a deploy's SIGTERM) must not wait for a poll: `release()`
deletes the key and, in the same script, pushes the old holder's name onto
the handoff list `{namespace}:handoff:<slice>` (same hash tag, so the same
Redis Cluster slot). A standby waits on that list with BLPOP between its
attempts, so it is woken within a round trip and tries `SET NX` at once.
A list rather than pub/sub: a push made while the standby is between two
BLPOPs (or briefly reconnecting) waits in the list for it, where a published
message would be gone. The notification only wakes the standby: taking the
lease is still the one atomic `SET NX`, so a lost, stale or duplicated
notification costs at most one wasted try, never two holders, and a standby
that hears nothing still tries again every `ttl / 4` seconds at the latest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import gevent
from gevent.event import Event as Flag

from gcluster.errors import ConfigError, RedisCallError
from gcluster.redis._calls import call
from gcluster.redis._client import Client, hash_tag, make_client
from gcluster.redis.inbox import default_consumer

__all__ = ["ShardLease", "handoff_key", "lease_key"]

log = logging.getLogger(__name__)

# Take the lease if nobody holds it (a script so that, on a Redis Cluster,
# RedisTarget.run_script returns only once a replica holds it too).
_ACQUIRE: Final = """
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
# Renew the lease only if it is still ours: PEXPIRE after a GET in one step.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Release it only if it is still ours, and tell a waiting standby (one entry:
# a standby never needs more than one wake-up, and an old one must not pile up).
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
# The share of the ttl after the last renewal at which a holder gives up.
_GIVE_UP: Final = 0.8
# A standby's BLPOP waits at most this share of the socket timeout, so Redis
# answers (nil) well before redis-py would call the connection dead.
_BLOCK_SHARE: Final = 0.5


def lease_key(namespace: str, name: str) -> str:
    """`{namespace}:lease:<name>`: the lease of one slice, holding its holder's name."""
    return f"{hash_tag(namespace)}:lease:{name}"


def handoff_key(namespace: str, name: str) -> str:
    """`{namespace}:handoff:<name>`: the list a released lease's standby is woken through."""
    return f"{hash_tag(namespace)}:handoff:{name}"


class ShardLease:
    """The right to run one slice of shards, held in Redis while this process lives.

    Args:
        url: e.g. "redis://localhost:6379/0": a single server, or any node of a
            Redis Cluster (found out at first use). Or pass `client`.
        name: names the slice, e.g. "process:0/4"; processes that may run
            the same shards use the same name.
        namespace: the bot's key prefix and hash tag.
        owner: this process's name in the key; default `host-pid`.
        ttl: seconds the lease outlives its holder's last renewal.
        on_lost: called (in a greenlet) when the lease is lost while held.
        client: a ready redis-py client instead of `url`.
        connect_timeout: seconds to connect to Redis.
        timeout: seconds to wait for a reply (at most `ttl / 3`); a standby's
            wait on the handoff list lasts at most half of it, or of a given
            client's socket timeout when that is shorter.

    Raises:
        ConfigError: a ttl under 0.5 s, no name, a bad namespace or URL, or
            both or neither of url and client.

    .. important:: A gevent object: use it from one hub.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        name: str,
        namespace: str = "gcluster",
        owner: str | None = None,
        ttl: float = 15.0,
        on_lost: Callable[[], object] | None = None,
        client: Client | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        if ttl < 0.5:
            raise ConfigError(f"ttl must be at least 0.5 s, not {ttl}")
        if not name:
            raise ConfigError("name must name the shards, e.g. 'process:0/4'")
        self.key = lease_key(namespace, name)
        self.handoff_key = handoff_key(namespace, name)
        self.owner = owner or default_consumer()
        self.ttl = ttl
        self.on_lost = on_lost
        self._owns_client = client is None
        timeout = min(timeout, ttl / 3)
        self._redis = make_client(url, client, connect_timeout=connect_timeout, timeout=timeout)
        # Between tries a standby blocks on the handoff list: never past the
        # poll interval, and well within the socket timeout (a given client's own;
        # a client made from the URL is known only at first use and has `timeout`).
        given = self._redis.client
        socket_timeout = (_socket_timeout(given) if given is not None else None) or timeout
        self._wait = min(ttl / 4, min(timeout, socket_timeout) * _BLOCK_SHARE)
        self._held = False
        self._renewer: gevent.Greenlet | None = None
        self._released = Flag()

    @property
    def _client(self) -> Client:
        # The first use asks the node whether it is part of a Redis Cluster.
        return self._redis.get()

    def __repr__(self) -> str:
        state = "held" if self._held else "not held"
        return f"<ShardLease {self.key!r} {state} by {self.owner!r}>"

    @property
    def held(self) -> bool:
        return self._held

    def holder(self) -> str | None:
        """Who holds the lease now, or None.

        Raises:
            RedisCallError: Redis could not answer.
        """
        raw: Any = call(self._client.get, self.key)
        return None if raw is None else raw.decode(errors="replace")

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait until the lease is free and take it; then keep renewing it.

        Between tries it waits on the handoff list, so a holder's `release()`
        wakes it at once; without one (the holder died) it tries again every
        `ttl / 4` seconds at the latest, and takes the key once it expired.

        Returns:
            True once held; False if `timeout` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = None
        while True:
            try:
                taken = self._redis.run_script(
                    _ACQUIRE, [self.key], [self.owner, int(self.ttl * 1000)]
                )
                holder = None if taken else self.holder()
            except RedisCallError as err:
                where = self._redis.describe()
                taken, holder = False, f"unknown (Redis at {where} failed: {err})"
            if taken:
                self._held = True
                self._released.clear()
                self._renewer = gevent.spawn(self._renew_loop, time.monotonic())
                log.info("lease %s: taken by %s (ttl %.1f s)", self.key, self.owner, self.ttl)
                return True
            if holder != announced:
                announced = holder
                log.info("lease %s: held by %s; waiting for it", self.key, holder)
            wait = self._wait
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, left)
            self._wait_for_handoff(wait)

    def _wait_for_handoff(self, wait: float) -> None:
        """Up to `wait` seconds, or until a holder's `release()` pushes to the handoff list."""
        started = time.monotonic()
        try:
            # BLPOP takes whole milliseconds; 0 would mean "for ever".
            woken = call(self._client.blpop, [self.handoff_key], timeout=max(wait, 0.001))
        except RedisCallError as err:
            # Said by the SET NX that follows (or its holder() lookup); do not spin.
            log.debug("lease %s: could not wait on %s: %s", self.key, self.handoff_key, err)
            gevent.sleep(max(0.0, wait - (time.monotonic() - started)))
            return
        if woken:
            log.info("lease %s: released by %s; trying to take it", self.key, _text(woken[1]))

    def release(self) -> None:
        """Stop renewing and delete the key if it is still ours, waking a standby at once.

        The standby is woken through the handoff list (see the module's
        docstring); one that misses it still finds the key gone at its next
        try. A release that cannot reach Redis leaves the key to expire.
        """
        if not self._held:
            return
        self._held = False
        self._released.set()
        renewer = self._renewer
        if renewer is not None and renewer is not gevent.getcurrent():
            renewer.kill()
        try:
            call(
                self._redis.script(_RELEASE),
                keys=[self.key, self.handoff_key],
                args=[self.owner, int(self.ttl * 1000)],
            )
            log.info("lease %s: released by %s", self.key, self.owner)
        except RedisCallError as err:
            log.warning("lease %s: could not release (it expires by itself): %s", self.key, err)

    def close(self) -> None:
        """Release, and close the connections of a client this lease made."""
        self.release()
        if self._owns_client:
            self._redis.close()

    def _renew_loop(self, renewed_at: float) -> None:
        interval = self.ttl / 3
        give_up = self.ttl * _GIVE_UP
        wait = interval
        while True:
            # Given up on time whatever the calls do: the key may expire `ttl`
            # after the last renewal (e.g. on a replica promoted during an
            # outage), and a standby take it, so the holder must stop before.
            left = renewed_at + give_up - time.monotonic()
            if left <= 0:
                self._lost(f"not renewed for {time.monotonic() - renewed_at:.1f} s")
                return
            if self._released.wait(min(wait, left)):
                return
            if time.monotonic() - renewed_at >= give_up:
                continue  # too late to count on a renewal: give up above
            started = time.monotonic()
            try:
                ours = self._redis.run_script(
                    _RENEW, [self.key], [self.owner, int(self.ttl * 1000)]
                )
            except RedisCallError as err:
                log.warning("lease %s: could not renew, will retry: %s", self.key, err)
                wait = interval / 4  # sooner than usual: the time left is short
                continue
            if not ours:
                self._lost("it expired and was taken, or deleted")
                return
            renewed_at = started
            wait = interval

    def _lost(self, why: str) -> None:
        self._held = False
        log.error("lease %s: lost by %s (%s); giving the shards up", self.key, self.owner, why)
        if self.on_lost is not None:
            gevent.spawn(self.on_lost)


def _socket_timeout(client: Client) -> float | None:
    """The seconds a reply may take on the client's connections, when it says."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None:  # a RedisCluster keeps them for every node
        kwargs = getattr(getattr(client, "nodes_manager", None), "connection_kwargs", None)
    value = kwargs.get("socket_timeout") if isinstance(kwargs, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
