"""Counters a shard keeps about itself, for operators: metrics, logs and summaries.

They cost a dict increment or two where they are updated, so they are always
on; `gcluster.metrics` turns them into Prometheus metrics at scrape time, and
the command line prints them in its summary.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gcluster._json import JsonReady

__all__ = ["LATENCY_BUCKETS", "ShardStats"]

# Upper bounds, in seconds, of the heartbeat latency histogram.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class ShardStats(JsonReady):
    """Running totals for one shard since it was built.

    Attributes:
        events: dispatches delivered, by Discord's name.
        filtered: dispatches dropped by the event-type filter.
        duplicates: dispatches dropped because their sequence was handled
            already (a gateway replaying what it had sent).
        skipped: messages dropped because they could not be used (not JSON,
            a dispatch with a bad name or sequence); each is logged.
        reconnects: connections that ended and were followed by another, by
            `(kind, cause)`: kind "resume" or "identify", cause e.g. "zombie",
            "gateway_close", "dropped", "reconnect_requested", "invalid_session".
        close_codes: connections ended, by close code (None: dropped without one).
        identifies, resumes: IDENTIFYs and RESUMEs sent.
        ratelimit_waits, ratelimit_wait_seconds: commands that waited for a slot.
        identify_waits, identify_wait_seconds: time spent in the identify queue.
        latency_buckets: heartbeat round trips per LATENCY_BUCKETS bound (last: +Inf).
        latency_sum, latency_count: for the histogram's _sum and _count.
    """

    events: Counter[str] = field(default_factory=Counter)
    filtered: int = 0
    duplicates: int = 0
    skipped: int = 0
    reconnects: Counter[tuple[str, str]] = field(default_factory=Counter)
    close_codes: Counter[int | None] = field(default_factory=Counter)
    identifies: int = 0
    resumes: int = 0
    ratelimit_waits: int = 0
    ratelimit_wait_seconds: float = 0.0
    identify_waits: int = 0
    identify_wait_seconds: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0

    def observe_latency(self, seconds: float) -> None:
        # The first bucket whose bound holds it; the last one is +Inf.
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        self.latency_buckets[index] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    @property
    def delivered(self) -> int:
        return sum(self.events.values())

    def to_dict(self) -> dict[str, Any]:
        """The counters now, as a dict `json.dumps` takes as it is.

        One key per attribute, plus "delivered". `reconnects` becomes
        `{kind: {cause: count}}` and `close_codes` `{"4000": count, ...}`
        ("none" for connections dropped without a code).
        """
        data = JsonReady.to_dict(self)  # not super(): slots=True makes a new class
        reconnects: dict[str, dict[str, int]] = {}
        for (kind, cause), count in sorted(self.reconnects.items()):
            reconnects.setdefault(kind, {})[cause] = count
        data["reconnects"] = reconnects
        data["delivered"] = self.delivered
        return data
