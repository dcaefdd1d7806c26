"""Faults the simulator can inflict on a shard, and plans that schedule them.

A fault is a small value saying what Discord (or the network between it and
the client) does to a shard's connection: close it with a code, ask it to
reconnect, invalidate or forget its session, drop TCP, request a heartbeat,
stop acknowledging heartbeats, send something the client cannot decode, send
a huge dispatch, go silent for a while, or refuse new connections. The
simulator applies one at once (`GatewaySimulator.apply_fault` and the
``close_shard``-style shortcuts) or when a `FaultPlan` comes due: after a
number of dispatches to the shard, or after a delay. New kinds of fault are
new values here plus one branch where `apply_faults` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gcluster.errors import ConfigError

__all__ = [
    "CloseConnection",
    "DropConnection",
    "ExpireSession",
    "Fault",
    "FaultPlan",
    "GarbageFrame",
    "HugeDispatch",
    "InvalidateSession",
    "Reconnect",
    "RefuseConnections",
    "RequestHeartbeat",
    "Stall",
    "StopHeartbeatAcks",
    "UnknownOpcode",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseConnection:
    """Close the shard's connection with ``code`` (a close frame, then TCP).

    Whether the session survives follows Discord's table of close codes: 4001,
    4003, 4004, 4005, 4007 and 4009-4014 end it; 1000, 1001 and every other
    code keep it resumable (see `gcluster.testing.rules.server_close_ends_session`).
    """

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


@dataclass(frozen=True, slots=True, kw_only=True)
class StopHeartbeatAcks:
    """Never ACK another heartbeat on the shard's current connections.

    Dispatches keep flowing, so from the client's side the connection is a
    zombie. Heartbeats are still recorded (``HeartbeatRecord.acked`` is
    False). A connection opened afterwards is acknowledged as usual.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class GarbageFrame:
    """Send one message the client cannot decode.

    ``kind="zlib"``: on a zlib-stream connection, a binary message that ends
    in the ``00 00 ff ff`` marker but breaks the deflate stream (the client's
    inflater fails, now and for every later message of the connection).
    ``kind="json"``: a message that is not JSON; on a zlib-stream connection
    it is properly compressed, so only JSON decoding fails. An uncompressed
    connection gets a text frame that is not JSON for either kind.
    The session and its ``s`` are not touched.
    """

    kind: Literal["zlib", "json"] = "zlib"

    def __post_init__(self) -> None:
        if self.kind not in ("zlib", "json"):
            raise ConfigError(f"kind must be 'zlib' or 'json', not {self.kind!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownOpcode:
    """Send a well-formed payload with an opcode the client does not know."""

    op: int = 99


@dataclass(frozen=True, slots=True, kw_only=True)
class HugeDispatch:
    """Dispatch a GUILD_CREATE of about ``size_bytes`` bytes of JSON.

    It is an ordinary dispatch of the session: it takes the next ``s``, is
    logged for replay, and carries the shard's next event number (read it
    with `gcluster.testing.event_number`), so an exactly-once check over
    `GatewaySimulator.send_events` numbers includes it. The guild is one of
    the shard's own. A shard without a session gets it after its next READY,
    like `GatewaySimulator.dispatch`.
    """

    size_bytes: int = 8_000_000

    def __post_init__(self) -> None:
        if self.size_bytes < 0:
            raise ConfigError("size_bytes must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stall:
    """Keep the shard's connections open but send nothing for ``seconds``.

    No dispatches, no heartbeat ACKs, no pongs: whatever falls due is held
    and then sent in order when the stall ends. Dispatches are logged in the
    session as usual, so a client that gives up and resumes elsewhere gets
    them replayed. A close or drop of the stalled connection (by either
    side) ends the stall of that connection at once.
    """

    seconds: float

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ConfigError("seconds must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class RefuseConnections:
    """Refuse the next ``count`` websocket upgrades, whichever shard they are for.

    The shard is unknown until IDENTIFY, so this counts every upgrade request
    to the gateway (fresh and resume URLs alike). Each refused one is
    answered with HTTP 503 Service Unavailable and ``Connection: close``,
    and recorded in ``records.refusals``. REST requests are not affected.
    The shard id given with the fault is only recorded. Counts add up.
    """

    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError("count must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpireSession:
    """Forget the shard's session server-side, as when a client came back too late.

    Its live connections are closed with ``code`` (a resumable code, so the
    client tries to RESUME), or dropped with no close frame when ``code`` is
    None. The next RESUME of that session gets op 9 INVALID_SESSION
    ``d = false``.
    """

    code: int | None = 4000
    reason: str = "Session expired."


Fault = (
    CloseConnection
    | Reconnect
    | InvalidateSession
    | DropConnection
    | RequestHeartbeat
    | StopHeartbeatAcks
    | GarbageFrame
    | UnknownOpcode
    | HugeDispatch
    | Stall
    | RefuseConnections
    | ExpireSession
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """When a fault is due for a shard.

    Exactly one of ``after_dispatches`` and ``delay`` is set.
    """

    shard_id: int | None
    """The shard; None only for `RefuseConnections`, which concerns no shard."""
    fault: Fault
    after_dispatches: int | None = None
    """Apply right after this many more dispatches were queued to the shard's live
    connection (so exactly that many are delivered before the fault)."""
    delay: float | None = None
    """Apply this many seconds after the plan was made."""

    def __post_init__(self) -> None:
        if (self.after_dispatches is None) == (self.delay is None):
            raise ConfigError("a FaultPlan needs exactly one of after_dispatches and delay")
        if self.after_dispatches is not None and self.after_dispatches < 0:
            raise ConfigError("after_dispatches must be >= 0")
        if self.delay is not None and self.delay < 0:
            raise ConfigError("delay must be >= 0")
        if self.shard_id is None and not isinstance(self.fault, RefuseConnections):
            raise ConfigError("only RefuseConnections may be planned without a shard")
        if self.shard_id is None and self.after_dispatches is not None:
            raise ConfigError("after_dispatches counts a shard's dispatches: give a shard")
