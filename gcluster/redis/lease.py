"""ShardLease: one process at a time runs a slice of the bot's shards; a standby takes over.

Two processes must never run the same shard: Discord would see two
connections of one shard, and each would RESUME the other's session away. A
lease is a Redis key, `{namespace}:lease:<slice>`, set with `SET NX PX` to
its holder's name and renewed while the holder lives. A standby process for
the same slice waits for the key to expire (its holder died or lost Redis),
takes it, and starts the shards, which RESUME from the session store where the
old holder stopped.

Two guards come with the lease, checked in the same atomic script that takes
it. Each shard of the slice gets a holder key, `{namespace}:holder:<shard>`:
a process whose slice overlaps a held one (two `--scheme` values sharing a shard)
is refused at once with `LeaseConflict`, rather than waiting as a standby for
a lease nobody would release. And a lease given the bot's shard count
registers its holder in `{namespace}:live`: a process stating another count
is refused while any holder is live, before it spends a session start.

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
from collections.abc import Callable, Iterable
from typing import Any, Final

import gevent
from gevent.event import Event as Flag

from gcluster.errors import ConfigError, LeaseConflict, RedisCallError
from gcluster.redis._calls import call
from gcluster.redis._client import Client, hash_tag, make_client
from gcluster.redis.inbox import default_consumer, shard_count_key

__all__ = ["ShardLease", "handoff_key", "holder_key", "lease_key", "live_key"]

log = logging.getLogger(__name__)

# Every script takes the same keys: the slice's lease, the handoff list, the
# namespace's live set, its shard count, then one holder key per shard. They
# share the namespace's hash tag, so on a Redis Cluster they are in one slot
# and each script is one atomic step.
#
# The live set (`{namespace}:live`) scores each holder that states the bot's
# shard count by the Redis time its lease runs out: a holder counts as live
# until then. A process whose count disagrees with a live holder's is refused
# before it starts any shard; once every holder is gone, the count may change
# (a planned reshard).
_NOW: Final = """
local owner, ttl, total = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
"""
# Refused for good: a live holder states another shard count.
_CHECK_TOTAL: Final = """
if total ~= '' then
  local known = redis.call('GET', KEYS[4])
  if known and known ~= total then
    local others = redis.call('ZCARD', KEYS[3])
    if redis.call('ZSCORE', KEYS[3], owner) then others = others - 1 end
    if others > 0 then
      local live = redis.call('ZRANGE', KEYS[3], 0, 0)
      return {'total', known, live[1]}
    end
  end
end
"""
# Refused for good: a holder of another slice holds one of these shards.
_CHECK_SHARDS: Final = """
for i = 5, #KEYS do
  local other = redis.call('GET', KEYS[i])
  if other and other ~= owner then return {'shard', tostring(i - 5), other} end
end
"""
# Whether the lease could be taken now, taking nothing.
_CHECK: Final = _NOW + _CHECK_TOTAL + _CHECK_SHARDS + "return {'free'}"
# Take the lease, unless refused or held by another process of the slice.
_ACQUIRE: Final = (
    _NOW
    + _CHECK_TOTAL
    + """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= owner then return {'held', holder} end
"""
    + _CHECK_SHARDS
    + """
redis.call('SET', KEYS[1], owner, 'PX', ttl)
for i = 5, #KEYS do redis.call('SET', KEYS[i], owner, 'PX', ttl) end
if total ~= '' then
  redis.call('SET', KEYS[4], total)
  redis.call('ZADD', KEYS[3], now + ttl, owner)
  if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return {'taken'}
"""
)
# Renew the lease only if it is still ours (a GET and the PEXPIREs in one step).
_RENEW: Final = """
local owner, ttl = ARGV[1], tonumber(ARGV[2])
if redis.call('GET', KEYS[1]) ~= owner then return 0 end
redis.call('PEXPIRE', KEYS[1], ttl)
for i = 5, #KEYS do
  if redis.call('GET', KEYS[i]) == owner then redis.call('PEXPIRE', KEYS[i], ttl) end
end
if redis.call('ZSCORE', KEYS[3], owner) then
  local clock = redis.call('TIME')
  redis.call('ZADD', KEYS[3], clock[1] * 1000 + math.floor(clock[2] / 1000) + ttl, owner)
  if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
end
return 1
"""
# Release it only if it is still ours, and tell a waiting standby (one entry:
# a standby never needs more than one wake-up, and an old one must not pile up).
_RELEASE: Final = """
local owner, ttl = ARGV[1], tonumber(ARGV[2])
if redis.call('GET', KEYS[1]) ~= owner then return 0 end
redis.call('DEL', KEYS[1])
for i = 5, #KEYS do
  if redis.call('GET', KEYS[i]) == owner then redis.call('DEL', KEYS[i]) end
end
redis.call('ZREM', KEYS[3], owner)
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], owner)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
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


def holder_key(namespace: str, shard_id: int) -> str:
    """`{namespace}:holder:<shard>`: the name of the process whose lease covers the shard."""
    return f"{hash_tag(namespace)}:holder:{shard_id}"


def live_key(namespace: str) -> str:
    """`{namespace}:live`: the lease holders that state the shard count, scored by expiry (ms)."""
    return f"{hash_tag(namespace)}:live"


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
        shards: the shard ids of the slice. Each gets a holder key
            (`holder_key`) while the lease is held, so two slices that share a
            shard cannot both be held, and `python -m gcluster status` can
            name each shard's process.
        total: the bot's shard count, when the slice states one: the lease is
            refused while a live holder of the namespace states another.

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
        shards: Iterable[int] = (),
        total: int | None = None,
    ) -> None:
        if ttl < 0.5:
            raise ConfigError(f"ttl must be at least 0.5 s, not {ttl}")
        if not name:
            raise ConfigError("name must name the shards, e.g. 'process:0/4'")
        if total is not None and (
            isinstance(total, bool) or not isinstance(total, int) or total < 1
        ):
            raise ConfigError(f"total must be a shard count (an int >= 1), not {total!r}")
        self.key = lease_key(namespace, name)
        self.handoff_key = handoff_key(namespace, name)
        self.shards = list(dict.fromkeys(shards))
        self.total = total
        self.namespace = namespace
        self._keys = [
            self.key,
            self.handoff_key,
            live_key(namespace),
            shard_count_key(namespace),
            *(holder_key(namespace, shard_id) for shard_id in self.shards),
        ]
        self._args = [int(ttl * 1000)]
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

        Raises:
            LeaseConflict: at once, when waiting cannot help: a live holder of
                the namespace states another shard count than `total`, or a
                holder of another slice holds one of `shards`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = None
        while True:
            try:
                reply = self._redis.run_script(
                    _ACQUIRE, self._keys, [self.owner, *self._args, self.total or ""]
                )
                taken, holder = self._answer(reply)
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

    def check(self) -> None:
        """Take nothing; raise what `acquire` would be refused for at once.

        For a process that runs the slice without holding the lease (the
        service's ``--no-lease``): it still must not run shards a holder runs,
        nor state another shard count than the live holders.

        Raises:
            LeaseConflict: see `acquire`.
            RedisCallError: Redis could not answer.
        """
        reply = call(
            self._redis.script(_CHECK),
            keys=self._keys,
            args=[self.owner, *self._args, self.total or ""],
        )
        if [_text(part) for part in reply or ()][:1] != ["free"]:
            self._answer(reply)

    def _answer(self, reply: Any) -> tuple[bool, str | None]:
        """(taken, holder) from the acquire script's reply.

        Raises:
            LeaseConflict: the script refused for good (another shard count,
                or a shard another slice holds).
        """
        words = [_text(part) for part in reply] if isinstance(reply, list) else []
        if words[:1] == ["taken"]:
            return True, None
        if words[:1] == ["held"] and len(words) == 2:
            return False, words[1]
        if words[:1] == ["total"] and len(words) == 3:
            raise LeaseConflict(
                f"namespace {self.namespace!r} runs {words[1]} shards (stated by the live "
                f"process {words[2]}), not {self.total}: every process of a bot must run the "
                f"same --shards; to change it, stop them all (the count is kept while any "
                f"holds its lease, up to {self.ttl:g} s after it died)"
            )
        if words[:1] == ["shard"] and len(words) == 3 and words[1].isdigit():
            shard_id = self.shards[int(words[1])]
            raise LeaseConflict(
                f"shard {shard_id} is held by {words[2]}, whose lease covers another slice: "
                "the processes' --scheme values overlap; give each process a slice of its own "
                "(e.g. process:I/N with the same N)"
            )
        raise RedisCallError(f"the lease script answered {reply!r}")

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
            call(self._redis.script(_RELEASE), keys=self._keys, args=[self.owner, *self._args])
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
                ours = self._redis.run_script(_RENEW, self._keys, [self.owner, *self._args])
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
