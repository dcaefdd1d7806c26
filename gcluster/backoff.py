"""How long a shard waits before connecting again.

A value, like urllib3's `Retry`: `increment()` and `reset()` return new
policies and `delay()` is pure, so the schedule is tested without sleeping.
Failed attempts back off exponentially with jitter up to a cap, so thousands
of shards refused at once do not come back in lock step; the first reconnect
after a healthy connection goes at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from gcluster.errors import ConfigError

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: 0 at first, then base·factorⁿ with "equal jitter", capped.

    Attributes:
        base: the first non-zero delay's ceiling, in seconds.
        factor: growth per failed attempt.
        cap: the longest delay.
        attempt: failed attempts since the last stable connection.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 60.0
    attempt: int = 0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.factor < 1 or self.cap < self.base or self.attempt < 0:
            raise ConfigError("backoff needs base > 0, factor >= 1, cap >= base, attempt >= 0")

    def delay(self, rng: Callable[[], float]) -> float:
        """Seconds to wait before the next attempt; `rng()` is uniform in [0, 1)."""
        if self.attempt == 0:
            return 0.0
        ceiling = min(self.cap, self.base * self.factor ** (self.attempt - 1))
        # Half fixed, half random: spreads shards out without ever going to ~0.
        return ceiling / 2 + ceiling / 2 * rng()

    def increment(self) -> Backoff:
        return replace(self, attempt=self.attempt + 1)

    def reset(self) -> Backoff:
        return replace(self, attempt=0)
