"""Identify queues: who may send IDENTIFY, and when.

Discord lets one shard per bucket (`shard_id % max_concurrency`) identify every
5 seconds and closes or invalidates shards that go faster. Every IDENTIFY a
shard sends, at start-up or after a lost session, first waits for
`queue.request(shard_id, total)` to return. RESUMEs skip the queue.

Each IDENTIFY also spends one of the day's session starts
(`session_start_limit.remaining` of GET /gateway/bot, usually 1000); running
out gets the bot's token reset. Queues that know the budget refuse to spend
the last of it: `request` raises `SessionStartLimitExhausted` (or, when asked
to, waits for the reset), and the cluster calls `check_budget(needed)` before
it starts any shard.

A queue never grants on an error: `request` returns only when the shard may
identify, and raises `QueueError` otherwise. A wait that is cut short (the
greenlet killed, a `gevent.Timeout`) holds nothing another shard waits for,
so the next `request` simply asks again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import gevent
import requests
from gevent.lock import Semaphore

from gcluster._blocking import ThreadPoolCaller
from gcluster.errors import ConfigError, QueueError, SessionStartLimitExhausted
from gcluster.http import SessionStartLimit

__all__ = [
    "DEFAULT_SPARE",
    "IDENTIFY_INTERVAL",
    "SESSION_START_DAY",
    "ConfigurableQueue",
    "HttpQueue",
    "LocalQueue",
    "NoOpQueue",
    "Queue",
]

log = logging.getLogger(__name__)

IDENTIFY_INTERVAL = 5.0
# What LocalQueue adds to each interval; RedisQueue uses the same.
DEFAULT_MARGIN = 0.05

# How long a fresh budget lasts once the old one has reset. Discord only tells
# `reset_after` for the current one; a day is its documented period.
SESSION_START_DAY = 86400.0

# Session starts a queue never spends. Reaching zero is what gets a bot's
# token reset, so the last start of the day is kept back; the caller hears
# `SessionStartLimitExhausted` instead of spending it.
DEFAULT_SPARE = 1


@runtime_checkable
class Queue(Protocol):
    """Grants identify slots; `request` blocks the calling greenlet until its turn."""

    def request(self, shard_id: int, total: int) -> None: ...


@runtime_checkable
class ConfigurableQueue(Queue, Protocol):
    """A queue that takes the bot's identify limits from GET /gateway/bot.

    The cluster calls `configure` with what Discord answered (values given to
    the queue's constructor win), then `check_budget` with the number of
    shards about to IDENTIFY, before it starts any of them.
    """

    def configure(
        self, max_concurrency: int, session_start_limit: SessionStartLimit | None = None
    ) -> None: ...

    def check_budget(self, needed: int) -> None: ...


class NoOpQueue:
    """Never waits: for use behind a gateway proxy that does its own spacing."""

    def request(self, shard_id: int, total: int) -> None:
        return None

    def __repr__(self) -> str:
        return "NoOpQueue()"


class _Budget:
    """The session starts of the current day, as a queue sees them (mutable, lock held)."""

    __slots__ = ("day", "not_before", "remaining", "reset_at", "total")

    def __init__(self, limit: SessionStartLimit, now: float) -> None:
        self.total = limit.total
        self.remaining = limit.remaining
        self.reset_at = now + max(0.0, limit.reset_after)
        # Grants of this budget may not happen earlier (set when a day is
        # taken in advance, for requests that wait for the reset).
        self.not_before = now
        self.day = 0

    def roll(self, start: float) -> None:
        """Move to the next day, whose starts may be spent from `start` on."""
        self.remaining = self.total
        self.not_before = start
        self.reset_at = start + SESSION_START_DAY
        self.day += 1


class LocalQueue:
    """Spaces IDENTIFYs within one process: one per bucket per `interval` seconds.

    Buckets are independent, so `max_concurrency` shards start in parallel.
    Slots are reserved in order of request, so shards of a bucket start in the
    order they asked. A waiter that is killed leaves an empty slot behind; the
    shards after it keep theirs, so nothing waits on it.

    With a `session_start_limit` the queue also keeps the day's budget: each
    grant spends one start, `spare` starts are never spent, and when none is
    left `request` raises `SessionStartLimitExhausted` — or, with
    `wait_for_reset`, sleeps until Discord refills the budget. A start taken
    by a request whose wait is cut short is given back.

    Args:
        max_concurrency: the bot's identify buckets (from GET /gateway/bot);
            default: the limit's `max_concurrency`, else 1 until `configure`.
        interval: seconds between two IDENTIFYs of one bucket.
        margin: seconds added to each interval. The gateway measures the gap
            between arrivals, and a connection's IDENTIFY can arrive a few ms
            later than the next one's, which would make the gap too short.
        session_start_limit: the budget as GET /gateway/bot gave it just now;
            None leaves it to `configure` (or unchecked).
        wait_for_reset: when the budget is spent, wait for the reset instead
            of raising.
        spare: session starts never spent (default 1, see `DEFAULT_SPARE`).
        clock, sleep: injectable for tests.

    Raises:
        ConfigError: max_concurrency below 1, a negative interval or spare.
    """

    def __init__(
        self,
        max_concurrency: int | None = None,
        *,
        interval: float = IDENTIFY_INTERVAL,
        margin: float = DEFAULT_MARGIN,
        session_start_limit: SessionStartLimit | None = None,
        wait_for_reset: bool = False,
        spare: int = DEFAULT_SPARE,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = gevent.sleep,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if interval < 0:
            raise ConfigError(f"interval must not be negative, not {interval}")
        if spare < 0:
            raise ConfigError(f"spare must not be negative, not {spare}")
        if margin < 0:
            raise ConfigError(f"margin must not be negative, not {margin}")
        self.interval = interval
        self.margin = margin
        self.wait_for_reset = wait_for_reset
        self.spare = spare
        self._clock = clock
        self._sleep = sleep
        self._next_slot: dict[int, float] = {}
        self._lock = Semaphore()
        self._concurrency_given = max_concurrency is not None
        self._limit_given = session_start_limit is not None
        self._max_concurrency = max_concurrency or 1
        self._budget: _Budget | None = None
        if session_start_limit is not None:
            if max_concurrency is None:
                self._max_concurrency = max(1, session_start_limit.max_concurrency)
            self._budget = _Budget(session_start_limit, clock())

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @property
    def remaining(self) -> int | None:
        """Session starts this queue may still grant before the reset; None if unknown."""
        with self._lock:
            budget = self._current_budget(self._clock())
            return None if budget is None else max(0, budget.remaining - self.spare)

    def configure(
        self, max_concurrency: int, session_start_limit: SessionStartLimit | None = None
    ) -> None:
        """Take the limits GET /gateway/bot gave; values given to the constructor win."""
        with self._lock:
            if not self._concurrency_given and max_concurrency >= 1:
                self._max_concurrency = max_concurrency
            if not self._limit_given and session_start_limit is not None:
                self._budget = _Budget(session_start_limit, self._clock())

    def check_budget(self, needed: int) -> None:
        """Make sure `needed` IDENTIFYs fit in today's budget, before any is sent.

        Raises:
            SessionStartLimitExhausted: fewer starts remain (unless `wait_for_reset`:
                then the shards that do not fit wait for the reset in `request`).
        """
        with self._lock:
            now = self._clock()
            budget = self._current_budget(now)
            if budget is None:
                return
            usable = max(0, budget.remaining - self.spare)
            if usable >= needed:
                return
            reset_after = max(0.0, budget.reset_at - now)
            if not self.wait_for_reset:
                raise SessionStartLimitExhausted(usable, needed, reset_after)
            log.warning(
                "%d shards need to identify but %d session starts remain; "
                "the rest wait for the reset in %.0f s",
                needed,
                usable,
                reset_after,
            )

    def reserve(self, shard_id: int) -> float:
        """Take the next slot of the shard's bucket; return the seconds to wait for it.

        Raises:
            SessionStartLimitExhausted: no session start is left (without `wait_for_reset`).
        """
        return self._take(shard_id)[0]

    def request(self, shard_id: int, total: int) -> None:
        delay, day = self._take(shard_id)
        if delay <= 0:
            return
        granted = False
        try:
            self._sleep(delay)
            granted = True
        finally:
            if not granted:
                self._give_back(day)

    def _take(self, shard_id: int) -> tuple[float, int | None]:
        bucket = shard_id % self._max_concurrency
        with self._lock:
            now = self._clock()
            earliest = now
            budget = self._current_budget(now)
            day = None
            if budget is not None:
                self._spend(budget, now)
                earliest = max(now, budget.not_before)
                day = budget.day
            slot = max(earliest, self._next_slot.get(bucket, earliest))
            self._next_slot[bucket] = slot + self.interval + self.margin
        return slot - now, day

    def _current_budget(self, now: float) -> _Budget | None:
        budget = self._budget
        if budget is not None and now >= budget.reset_at:
            budget.roll(now)
        return budget

    def _spend(self, budget: _Budget, now: float) -> None:
        while budget.remaining <= self.spare:
            reset_after = max(0.0, budget.reset_at - now)
            if not self.wait_for_reset or budget.total <= self.spare:
                raise SessionStartLimitExhausted(0, 1, reset_after)
            # Spend from the next day's starts, at its start at the earliest.
            log.warning("session starts spent; the next IDENTIFY waits %.0f s", reset_after)
            budget.roll(budget.reset_at)
        budget.remaining -= 1
        if budget.remaining == self.spare:
            log.warning(
                "the last usable session start was granted; the budget resets in %.0f s",
                budget.reset_at - now,
            )

    def _give_back(self, day: int | None) -> None:
        # The greenlet never got to IDENTIFY: its start was not spent.
        with self._lock:
            if day is not None and self._budget is not None and self._budget.day == day:
                self._budget.remaining += 1

    def __repr__(self) -> str:
        return f"LocalQueue(max_concurrency={self._max_concurrency}, interval={self.interval})"


class HttpQueue:
    """A client of twilight's gateway-queue service, for shards spread over processes.

    The service answers `GET {url}?shard=N` once shard N may identify; any
    other answer, and any failure to get one, raises `QueueError` and the shard
    does not identify. The request is blocking (requests); unless sockets are
    monkey-patched it runs in a thread pool of its own, sized `workers`, so
    that long waits hold neither the hub nor gevent's shared pool.

    A request whose greenlet is killed keeps waiting in its thread until the
    service answers; that slot then goes unused, and nothing else waits on it.

    Args:
        url: the service's base URL, e.g. "http://gateway-queue:5000".
        timeout: seconds to wait for the grant; None waits as long as the
            service needs (a bucket of many shards can take minutes).
        connect_timeout: seconds to connect to the service.
        workers: threads that may wait on the service at once.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = None,
        connect_timeout: float = 10.0,
        workers: int = 32,
    ) -> None:
        if "://" not in url:
            raise ConfigError(f"url must be an absolute http(s) URL, not {url!r}")
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, not {workers}")
        self.url = url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.workers = workers
        self._pool = ThreadPoolCaller(workers)

    def request(self, shard_id: int, total: int) -> None:
        """Wait until the service lets the shard identify.

        Raises:
            QueueError: the service could not be reached, timed out, or did not answer 2xx.
        """
        try:
            response = self._pool.call(
                requests.get,
                self.url,
                params={"shard": str(shard_id)},
                timeout=(self.connect_timeout, self.timeout),
            )
        except requests.RequestException as err:
            raise QueueError(
                f"identify queue {self.url} failed for shard {shard_id}: {err}"
            ) from err
        if not 200 <= response.status_code < 300:
            raise QueueError(
                f"identify queue {self.url} answered {response.status_code} for shard {shard_id}"
            )

    def close(self) -> None:
        """Stop the thread pool (threads still waiting on the service finish first)."""
        self._pool.close()

    def __repr__(self) -> str:
        return f"HttpQueue({self.url!r})"
