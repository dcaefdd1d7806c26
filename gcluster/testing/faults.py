"""Faults the simulator can inflict on a shard, and plans that schedule them.

A fault is a small value saying what Discord does to a shard's connection
(close it with a code, ask it to reconnect, invalidate its session, drop TCP,
request a heartbeat). The simulator applies one at once (`apply_fault` and
the ``close_shard``-style shortcuts) or when a `FaultPlan` comes due: after a
number of dispatches to the shard, or after a delay. New kinds of fault are new
values here plus one branch where the gateway applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CloseConnection",
    "DropConnection",
    "Fault",
    "FaultPlan",
    "InvalidateSession",
    "Reconnect",
    "RequestHeartbeat",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseConnection:
    """Close the shard's connection with ``code`` (a close frame, then TCP)."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnect:
    """Send op 7 RECONNECT; the session stays resumable."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InvalidateSession:
    """Send op 9 INVALID_SESSION with ``d = resumable``; False ends the session."""

    resumable: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DropConnection:
    """Reset the TCP connection with no close frame; the session stays resumable."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHeartbeat:
    """Send op 1: the client must heartbeat at once."""


Fault = CloseConnection | Reconnect | InvalidateSession | DropConnection | RequestHeartbeat


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """When a fault is due for a shard.

    Exactly one of ``after_dispatches`` and ``delay`` is set.
    """

    shard_id: int
    fault: Fault
    after_dispatches: int | None = None
    """Apply right after this many more dispatches were queued to the shard's live
    connection (so exactly that many are delivered before the fault)."""
    delay: float | None = None
    """Apply this many seconds after the plan was made."""

    def __post_init__(self) -> None:
        if (self.after_dispatches is None) == (self.delay is None):
            raise ValueError("a FaultPlan needs exactly one of after_dispatches and delay")
        if self.after_dispatches is not None and self.after_dispatches < 0:
            raise ValueError("after_dispatches must be >= 0")
        if self.delay is not None and self.delay < 0:
            raise ValueError("delay must be >= 0")
