"""Where the gevent hub was blocked, for the warning a late heartbeat gives.

When application code blocks the hub (CPU work, an unpatched blocking call),
every shard's heartbeat waits with it and Discord may drop the shards. A late
heartbeat is always reported with how late it was; if gevent's monitor thread
is running (`GEVENT_MONITOR_THREAD_ENABLE=1`, or
`gevent.get_hub().start_periodic_monitoring_thread()`), it also names the
greenlet that blocked and where, taken from gevent's `EventLoopBlocked` event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gevent import events

__all__ = ["BlockReport", "describe_recent_block", "last_block"]

# A report older than this is about some other delay.
_RECENT = 60.0


@dataclass(frozen=True, slots=True)
class BlockReport:
    """One EventLoopBlocked report: who blocked the hub, how long, and where."""

    at: float
    greenlet: str
    blocking_time: float
    where: str


_last: BlockReport | None = None


def _on_event(event: Any) -> None:
    global _last
    if isinstance(event, events.EventLoopBlocked):
        lines = [line.rstrip() for line in event.info if line.strip()]
        # The innermost frames are the useful ones: the code that did the blocking.
        where = " | ".join(lines[-3:]) if lines else "unknown"
        _last = BlockReport(
            time.monotonic(), repr(event.greenlet), float(event.blocking_time), where
        )


def last_block() -> BlockReport | None:
    return _last


def describe_recent_block() -> str:
    """`; blocked by <greenlet> for N s at <frames>` if the monitor saw one lately, else ''."""
    report = _last
    if report is None or time.monotonic() - report.at > _RECENT:
        return " (run with GEVENT_MONITOR_THREAD_ENABLE=1 to learn where)"
    return f"; blocked by {report.greenlet} for {report.blocking_time:.2f} s at {report.where}"


if _on_event not in events.subscribers:
    events.subscribers.append(_on_event)
