"""The gateway's command rate limit: 120 payloads per 60 s per connection.

Going over gets the connection closed with 4008, so commands wait for a slot
instead. Heartbeats count against the same limit but must never wait, so the
limiter keeps back enough slots for the heartbeats one window will need.
The clock and sleep are injected so the schedule is tested without sleeping.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import gevent
from gevent.lock import Semaphore

from gcluster.errors import ConfigError

__all__ = ["CommandRatelimiter"]

LIMIT = 120
PERIOD = 60.0
_MARGIN = 0.01  # of the period


class CommandRatelimiter:
    """A sliding window of the payloads sent on one connection.

    Args:
        limit: payloads allowed per `period`.
        period: the window, in seconds.
        heartbeat_interval: seconds between heartbeats; sets how many slots
            are kept for them (0 keeps none until HELLO is known).
    """

    def __init__(
        self,
        limit: int = LIMIT,
        period: float = PERIOD,
        *,
        heartbeat_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = gevent.sleep,
    ) -> None:
        if limit < 1 or period <= 0:
            raise ConfigError("a rate limit needs limit >= 1 and period > 0")
        self.limit = limit
        self.period = period
        # A payload counts here a little longer than the window: the gateway
        # counts arrivals, and after a burst the burst's last payloads arrive
        # later than the ones that replace them, which would squeeze one more
        # window's worth into its count.
        self._span = period * (1 + _MARGIN)
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._waiters = Semaphore()  # first come, first served
        self._reserved: int  # set by set_heartbeat_interval()
        self.set_heartbeat_interval(heartbeat_interval)

    def set_heartbeat_interval(self, interval: float) -> None:
        """Keep back the slots heartbeats need in one window (plus one for op 1 requests)."""
        needed = math.ceil(self.period / interval) + 1 if interval > 0 else 0
        # Never reserve the whole window: commands must always be able to go.
        self._reserved = min(needed, self.limit // 2)

    def reset(self) -> None:
        """A new connection starts with a full window."""
        self._sent.clear()

    @property
    def capacity(self) -> int:
        """Command slots per window (the limit less the heartbeats' share)."""
        return self.limit - self._reserved

    def remaining(self) -> int:
        """Commands that may be sent right now."""
        self._expire(self._clock())
        return max(0, self.capacity - len(self._sent))

    def refill_in(self) -> float:
        """Seconds until the oldest payload in the window stops counting."""
        now = self._clock()
        self._expire(now)
        return max(0.0, self._sent[0] + self._span - now) if self._sent else 0.0

    def heartbeat(self) -> None:
        """Count a heartbeat; it never waits."""
        self._sent.append(self._clock())

    def acquire(self, timeout: float | None = None) -> bool:
        """Wait cooperatively for a command slot and take it; False if `timeout` ran out."""
        deadline = None if timeout is None else self._clock() + timeout
        if not self._waiters.acquire(timeout=timeout):
            return False
        try:
            while True:
                now = self._clock()
                self._expire(now)
                if len(self._sent) < self.capacity:
                    self._sent.append(now)
                    return True
                wait = self._sent[0] + self._span - now
                if deadline is not None and now + wait > deadline:
                    return False
                self._sleep(wait)
        finally:
            self._waiters.release()

    def _expire(self, now: float) -> None:
        sent = self._sent
        horizon = now - self._span
        while sent and sent[0] <= horizon:
            sent.popleft()
