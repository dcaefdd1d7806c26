"""RedisQueue: identify spacing and the session-start budget, shared through Redis.

Many processes, on many machines, run shards of one bot; Discord's identify
rules hold for the bot as a whole. Each request runs one Lua script that, by
the Redis server's clock, reserves the next free slot of the shard's bucket
and spends one session start, atomically, so no two processes can take the
same slot and the budget is counted once.

Keys, all under the hash tag `{namespace}` so that one script's keys share a
Redis Cluster slot:

    {namespace}:bucket:<b>      ms (Redis clock) when bucket b is next free;
                                expires once that time has passed
    {namespace}:budget          session starts left today; expires at the reset
    {namespace}:concurrency     the max_concurrency every process must use;
                                kept a day

The queue fails closed: if Redis cannot be reached or the script fails,
`request` raises `QueueError` and the shard does not identify.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import gevent

from gcluster.errors import ConfigError, QueueError, RedisCallError, SessionStartLimitExhausted
from gcluster.http import SessionStartLimit
from gcluster.queue import DEFAULT_SPARE, IDENTIFY_INTERVAL, SESSION_START_DAY
from gcluster.redis._client import Client, hash_tag, make_client

__all__ = ["RedisQueue", "SLOT_SCRIPT"]

log = logging.getLogger(__name__)

SLOT_SCRIPT: Final = """
-- Reserve the next IDENTIFY slot of one bucket, by the Redis server's clock.
-- KEYS[1] {ns}:budget       session starts left today; expires at the reset
-- KEYS[2] {ns}:concurrency  the max_concurrency all processes must agree on
-- KEYS[3] {ns}:bucket:<b>   ms at which the bucket is next free
-- ARGV[1] "take": reserve a slot and spend a start; "peek": read the budget only
-- ARGV[2] the caller's max_concurrency
-- ARGV[3] ms between two slots of one bucket
-- ARGV[4] session starts never spent
-- ARGV[5] starts to create a missing budget with; -1 when the caller knows none
-- ARGV[6] ms until that budget resets
-- ARGV[7] ms the concurrency record is kept
-- Returns {code, ms, left, created}; left counts usable starts (-1: no budget),
-- created is 1 when this call created the budget key:
--   {0, wait, left, created}   granted: IDENTIFY in `wait` ms
--   {1, reset, left, created}  no usable start left; the budget resets in `reset` ms
--   {2, reset, left, created}  peek; reset is -1 when there is no budget
--   {3, stored, 0, 0}          the caller's max_concurrency is not the stored one
-- A key holding anything but a number is an error: nothing is granted.
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local function number(key, value)
  local n = tonumber(value)
  if not n then error('gcluster: ' .. key .. ' does not hold a number') end
  return n
end

local concurrency = tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[2])
if stored then
  stored = number(KEYS[2], stored)
  if stored ~= concurrency then return {3, stored, 0, 0} end
else
  redis.call('SET', KEYS[2], concurrency, 'PX', ARGV[7])
end

local created = 0
local left = redis.call('GET', KEYS[1])
if not left and tonumber(ARGV[5]) >= 0 then
  redis.call('SET', KEYS[1], ARGV[5], 'PX', ARGV[6])
  left = ARGV[5]
  created = 1
end
local spare = tonumber(ARGV[4])
local reset = -1
if left then
  left = number(KEYS[1], left)
  reset = redis.call('PTTL', KEYS[1])
end

if ARGV[1] == 'peek' then
  if not left then return {2, -1, -1, created} end
  return {2, reset, math.max(left - spare, 0), created}
end

if left then
  if left <= spare then return {1, reset, math.max(left - spare, 0), created} end
  left = redis.call('DECR', KEYS[1])
end

local interval = tonumber(ARGV[3])
local free = number(KEYS[3], redis.call('GET', KEYS[3]) or now)
local slot = math.max(now, free)
if interval > 0 then
  local next_free = slot + interval
  redis.call('SET', KEYS[3], string.format('%d', next_free),
             'PX', string.format('%d', next_free - now))
end
if left then left = left - spare else left = -1 end
return {0, slot - now, left, created}
"""

_GRANTED: Final = 0
_EXHAUSTED: Final = 1
_PEEKED: Final = 2
_MISMATCH: Final = 3

# A waiter for the reset sleeps this much longer than the budget key lives,
# so that its own view of the reset has passed too when it asks again.
_RESET_CUSHION: Final = 1.0


class RedisQueue:
    """Identify slots and the day's session starts, shared by every process of a bot.

    Every process (and machine) running shards of one bot uses the same Redis
    and namespace; bots sharing a Redis each take their own namespace.

    `max_concurrency` and the budget normally come from the cluster, which
    calls `configure` with GET /gateway/bot's answer (values given here win).
    The budget is created in Redis by the first process that asks, from its
    snapshot, and then counted there; it expires at Discord's reset, after
    which the next request starts a fresh day of `total` starts.

    Each grant spends one start at once (a waiter that is killed leaves its
    slot empty and its start spent: the count errs on the safe side) and
    `spare` starts are never spent. Slots of a bucket are `interval + margin`
    apart: the margin absorbs differences in latency between processes, so
    two IDENTIFYs of a bucket are never closer than `interval`.

    Args:
        url: e.g. "redis://localhost:6379/0": a single server, or any node of a
            Redis Cluster (found out at first use). Or pass `client`.
        namespace: key prefix of this bot; also the Redis Cluster hash tag.
        max_concurrency: the bot's identify buckets; default from `configure`.
        session_start_limit: the budget as GET /gateway/bot gave it just now.
        interval: seconds between two IDENTIFYs of one bucket.
        margin: seconds added to each slot (see above).
        wait_for_reset: when no start is left, wait for the reset instead of raising.
        spare: session starts never spent (default 1, see `DEFAULT_SPARE`).
        client: a ready redis-py client (Redis or RedisCluster) instead of `url`.
        connect_timeout, timeout: seconds to connect to Redis and to wait for a reply.

    Raises:
        ConfigError: a bad namespace, URL or number, or both or neither of url and client.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "gcluster",
        max_concurrency: int | None = None,
        session_start_limit: SessionStartLimit | None = None,
        interval: float = IDENTIFY_INTERVAL,
        margin: float = 0.05,
        wait_for_reset: bool = False,
        spare: int = DEFAULT_SPARE,
        client: Client | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        sleep: Callable[[float], object] = gevent.sleep,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if interval < 0 or margin < 0:
            raise ConfigError("interval and margin must not be negative")
        if spare < 0:
            raise ConfigError(f"spare must not be negative, not {spare}")
        tag = hash_tag(namespace)
        self.namespace = namespace
        self.interval = interval
        self.margin = margin
        self.wait_for_reset = wait_for_reset
        self.spare = spare
        self._owns_client = client is None
        self._redis = make_client(url, client, connect_timeout=connect_timeout, timeout=timeout)
        self._sleep = sleep
        self._budget_key = f"{tag}:budget"
        self._concurrency_key = f"{tag}:concurrency"
        self._bucket_prefix = f"{tag}:bucket:"
        self._concurrency_given = max_concurrency is not None
        self._limit_given = session_start_limit is not None
        self._max_concurrency = max_concurrency
        self._limit: SessionStartLimit | None = None
        self._limit_at = 0.0
        self._granted = 0  # starts this process spent since the snapshot was taken
        if session_start_limit is not None:
            if max_concurrency is None:
                self._max_concurrency = max(1, session_start_limit.max_concurrency)
            self._set_limit(session_start_limit)

    @property
    def max_concurrency(self) -> int | None:
        return self._max_concurrency

    def bucket_key(self, bucket: int) -> str:
        """The key holding when `bucket` is next free."""
        return f"{self._bucket_prefix}{bucket}"

    @property
    def budget_key(self) -> str:
        return self._budget_key

    @property
    def concurrency_key(self) -> str:
        return self._concurrency_key

    def configure(
        self, max_concurrency: int, session_start_limit: SessionStartLimit | None = None
    ) -> None:
        """Take the limits GET /gateway/bot gave; values given to the constructor win."""
        if not self._concurrency_given and max_concurrency >= 1:
            self._max_concurrency = max_concurrency
        if not self._limit_given and session_start_limit is not None:
            self._set_limit(session_start_limit)

    def check_budget(self, needed: int) -> None:
        """Make sure `needed` IDENTIFYs fit in the shared budget, before any is sent.

        Raises:
            SessionStartLimitExhausted: fewer usable starts remain (unless `wait_for_reset`).
            QueueError: Redis could not answer, or max_concurrency is unknown.
        """
        _, reset_ms, left = self._call("peek", 0)
        if left < 0 or left >= needed:
            return
        reset_after = self._seconds(reset_ms)
        if not self.wait_for_reset:
            raise SessionStartLimitExhausted(left, needed, reset_after)
        log.warning(
            "%d shards need to identify but %d session starts remain; "
            "the rest wait for the reset in %.0f s",
            needed,
            left,
            reset_after,
        )

    def request(self, shard_id: int, total: int) -> None:
        """Wait for the shard's slot; spends one session start.

        Raises:
            SessionStartLimitExhausted: no usable start is left (without `wait_for_reset`).
            QueueError: Redis could not answer, or max_concurrency is unknown or
                differs from the other processes'.
        """
        while True:
            code, ms, left = self._call("take", shard_id)
            if code == _GRANTED:
                if self._limit is not None:
                    self._granted += 1
                if left == 0:
                    log.warning("shard %d got the last usable session start of the day", shard_id)
                if ms > 0:
                    self._sleep(ms / 1000.0)
                return
            reset_after = self._seconds(ms)
            if not self.wait_for_reset:
                raise SessionStartLimitExhausted(left, 1, reset_after)
            log.warning(
                "session starts spent; shard %d waits %.0f s for the reset", shard_id, reset_after
            )
            self._sleep(reset_after + _RESET_CUSHION)

    def close(self) -> None:
        """Close the connections of a client this queue made (not of one it was given)."""
        if self._owns_client:
            self._redis.close()

    def _set_limit(self, limit: SessionStartLimit) -> None:
        self._limit = limit
        self._limit_at = time.monotonic()
        self._granted = 0

    def _budget_args(self) -> tuple[int, int]:
        """The budget to create if Redis has none: (starts, ms until reset)."""
        limit = self._limit
        if limit is None:
            return -1, 1
        ms_left = (limit.reset_after - (time.monotonic() - self._limit_at)) * 1000.0
        if ms_left >= 1.0:
            return max(0, limit.remaining - self._granted), int(ms_left)
        # Our snapshot's day is over: a fresh day of starts.
        return limit.total, int(SESSION_START_DAY * 1000)

    def _call(self, mode: str, shard_id: int) -> tuple[int, int, int]:
        concurrency = self._max_concurrency
        if concurrency is None:
            raise QueueError(
                "RedisQueue does not know max_concurrency: pass it, or let the cluster "
                "configure it from GET /gateway/bot"
            )
        remaining, reset_ms = self._budget_args()
        keys = [self._budget_key, self._concurrency_key, self.bucket_key(shard_id % concurrency)]
        args: list[Any] = [
            mode,
            concurrency,
            int(round((self.interval + self.margin) * 1000)),
            self.spare,
            remaining,
            reset_ms,
            int(SESSION_START_DAY * 1000),
        ]
        where = self._redis.describe()
        try:
            # Replicated before it is acted on: a failover must not forget a slot.
            reply = self._redis.run_script(SLOT_SCRIPT, keys, args)
        except RedisCallError as err:
            raise QueueError(
                f"identify queue: Redis at {where} failed for shard {shard_id}: {err}"
            ) from err
        try:
            code, ms, left, created = (int(value) for value in reply)
        except (TypeError, ValueError) as err:
            raise QueueError(f"identify queue: unexpected reply from Redis: {reply!r}") from err
        if code == _MISMATCH:
            raise QueueError(
                f"identify queue: this process uses max_concurrency {concurrency} but "
                f"another one {ms}; run every process with Discord's value (delete "
                f"{self._concurrency_key} once they agree)"
            )
        if created:
            log.info(
                "identify queue: session-start budget created in Redis from this process's "
                "snapshot: %d starts, reset in %.0f s",
                remaining,
                reset_ms / 1000.0,
            )
        return code, ms, left

    @staticmethod
    def _seconds(reset_ms: int) -> float:
        # A budget key without expiry was set by hand; assume a whole day.
        return reset_ms / 1000.0 if reset_ms >= 0 else SESSION_START_DAY

    def __repr__(self) -> str:
        return (
            f"RedisQueue({self._redis.describe()!r}, namespace={self.namespace!r}, "
            f"max_concurrency={self._max_concurrency})"
        )
