"""Identify queues: who may send IDENTIFY, and when.

Discord lets one shard per bucket (`shard_id % max_concurrency`) identify every
5 seconds and closes or invalidates shards that go faster. Every IDENTIFY a
shard sends, at start-up or after a lost session, first waits for
`queue.request(shard_id, total)` to return. RESUMEs skip the queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import gevent
from gevent.lock import Semaphore

__all__ = ["IDENTIFY_INTERVAL", "LocalQueue", "NoOpQueue", "Queue"]

IDENTIFY_INTERVAL = 5.0


@runtime_checkable
class Queue(Protocol):
    """Grants identify slots; `request` blocks the calling greenlet until its turn."""

    def request(self, shard_id: int, total: int) -> None: ...


class NoOpQueue:
    """Never waits: for use behind a gateway proxy that does its own spacing."""

    def request(self, shard_id: int, total: int) -> None:
        return None

    def __repr__(self) -> str:
        return "NoOpQueue()"


class LocalQueue:
    """Spaces IDENTIFYs within one process: one per bucket per `interval` seconds.

    Buckets are independent, so `max_concurrency` shards start in parallel.
    Slots are reserved in order of request, so shards of a bucket start in the
    order they asked.

    Args:
        max_concurrency: the bot's identify buckets (from GET /gateway/bot).
        interval: seconds between two IDENTIFYs of one bucket.
        clock, sleep: injectable for tests.
    """

    def __init__(
        self,
        max_concurrency: int = 1,
        *,
        interval: float = IDENTIFY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = gevent.sleep,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if interval < 0:
            raise ValueError(f"interval must not be negative, not {interval}")
        self.max_concurrency = max_concurrency
        self.interval = interval
        self._clock = clock
        self._sleep = sleep
        self._next_slot: dict[int, float] = {}
        self._lock = Semaphore()

    def reserve(self, shard_id: int) -> float:
        """Take the next slot of the shard's bucket; return the seconds to wait for it."""
        bucket = shard_id % self.max_concurrency
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot.get(bucket, now))
            self._next_slot[bucket] = slot + self.interval
        return slot - now

    def request(self, shard_id: int, total: int) -> None:
        delay = self.reserve(shard_id)
        if delay > 0:
            self._sleep(delay)

    def __repr__(self) -> str:
        return f"LocalQueue(max_concurrency={self.max_concurrency}, interval={self.interval})"
