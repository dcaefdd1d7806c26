"""What the simulator saw and did, kept as small frozen values for tests to assert on.

A loopback test drives a client against the simulator and then asks what
happened on the wire: which shards identified and in which bucket, what a
resume replayed, how a connection ended. Every record is appended by the
simulator as it happens, and `Records.wait_until` lets a test wait for one to
appear without sleeping blindly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gevent.event import Event as _Signal

__all__ = [
    "BlastRecord",
    "CloseRecord",
    "CommandRecord",
    "ConnectionRecord",
    "DispatchRecord",
    "FaultRecord",
    "HeartbeatRecord",
    "IdentifyRecord",
    "Records",
    "RefusalRecord",
    "RequestRecord",
    "ResumeRecord",
    "Traffic",
    "ViolationKind",
    "ViolationRecord",
    "WithheldRecord",
]

# How often `wait_until` re-checks its predicate even when nothing was
# recorded, so conditions over state that is not a record (a connection count)
# still come true promptly.
_POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionRecord:
    """A websocket upgrade the simulator accepted."""

    id: int
    """Connection id, referred to by the other records' ``connection_id``."""
    time: float
    path: str
    """Request path, e.g. ``"/"`` or ``"/resume/"`` (a resume URL was used)."""
    query: Mapping[str, str] = field(hash=False)
    """The query parameters, first value of each."""
    compression: str | None
    """The ``compress`` query value (``"zlib-stream"``, ``"zstd-stream"``), or None."""
    remote_port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentifyRecord:
    """An IDENTIFY the simulator accepted (it started a session)."""

    time: float
    shard_id: int
    total: int
    bucket: int
    """``shard_id % max_concurrency``: the identify bucket it spent."""
    intents: int
    connection_id: int
    session_id: str
    data: Mapping[str, Any] = field(hash=False)
    """The IDENTIFY ``d`` without its token."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeRecord:
    """A RESUME, whether it succeeded (``ok``) or got INVALID_SESSION."""

    time: float
    shard_id: int | None
    """The shard of the resumed session; None when the session was unknown."""
    connection_id: int
    session_id: str
    seq: int | None
    """The sequence the client said it had."""
    replayed: int
    """How many dispatches were replayed before RESUMED."""
    ok: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatRecord:
    """A heartbeat (op 1) from a client."""

    time: float
    shard_id: int | None
    connection_id: int
    sequence: int | None
    """The heartbeat's ``d``: the last sequence the client had seen."""
    acked: bool = True
    """Whether it was answered with op 11 (False after a `StopHeartbeatAcks` fault)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandRecord:
    """A gateway command (presence, voice state, guild members, soundboard sounds)."""

    time: float
    shard_id: int | None
    connection_id: int
    op: int
    data: Any = field(hash=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseRecord:
    """How a gateway connection ended."""

    time: float
    shard_id: int | None
    connection_id: int
    code: int | None
    """The close code of whoever closed first; None when the TCP connection dropped."""
    reason: str
    initiator: Literal["client", "server"]
    dropped: bool
    """True when the connection ended without a close frame."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchRecord:
    """A dispatch (op 0) written to a socket; the payload itself is not kept."""

    time: float
    shard_id: int
    connection_id: int
    session_id: str
    s: int
    t: str
    number: int | None
    """The event number `send_events` gave it, if any."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WithheldRecord:
    """A dispatch not sent because the session did not identify with an intent that brings it.

    It took no ``s`` and is not replayed; the shard never sees it, as on Discord.
    """

    time: float
    shard_id: int
    session_id: str
    t: str
    number: int | None
    """The event number `send_events` gave it, if any."""
    intents: int
    """The intents that would have brought it (any one of them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BlastRecord:
    """A blast (`GatewaySimulator.blast`) the writer is through with.

    Blasted dispatches get no `DispatchRecord` each and do not count toward
    fault plans' ``after_dispatches``; this one record stands for all of them.
    """

    time: float
    shard_id: int
    connection_id: int
    session_id: str
    first_s: int
    last_s: int
    """The sequence numbers of the first and last dispatch of the blast."""
    first_number: int
    last_number: int
    """Their event numbers (`gcluster.testing.event_number`)."""
    events: int
    written: int
    """How many were written before the writer finished (fewer when the
    connection closed during the blast; the rest wait in the session for a RESUME)."""
    payload_bytes: int
    """The dispatches' JSON, before compression."""
    wire_bytes: int
    """Their websocket frames as written: compressed payloads plus frame headers."""
    prepare_seconds: float
    """Time spent building, encoding, compressing and framing before the first write."""
    started: float | None
    finished: float
    """``time.monotonic()`` of the first write (None if nothing was written) and
    after the last one: ``written / (finished - started)`` is the send rate."""
    late_max: float = 0.0
    """For a paced blast (`GatewaySimulator.send_paced`): the most seconds a
    dispatch went out after it was due."""
    sent_at: tuple[float, ...] = field(default=(), repr=False, hash=False)
    """For a paced blast: ``time.monotonic()`` as each dispatch, in order, was
    handed to the socket (event numbers ``first_number``, ``first_number + 1``, ...)."""

    @property
    def send_rate(self) -> float:
        """Dispatches written per second (0.0 when nothing was written)."""
        if self.started is None or self.finished <= self.started:
            return 0.0
        return self.written / (self.finished - self.started)


@dataclass(slots=True, kw_only=True)
class Traffic:
    """What the simulator has written to one connection so far: live counters.

    Unlike the other records these change as the connection goes on; copy the
    numbers to keep a snapshot.
    """

    connection_id: int
    messages: int = 0
    """Websocket messages written (control frames not counted)."""
    payload_bytes: int = 0
    """Their size before compression."""
    wire_bytes: int = 0
    """Their websocket frames' size as written (after compression, with headers)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRecord:
    """A fault the simulator applied to a shard (directly or from a plan)."""

    time: float
    shard_id: int | None
    """The shard; None for a `RefuseConnections` applied without one."""
    fault: Any
    """The `gcluster.testing.faults` value."""
    connections: int
    """How many live connections of the shard it reached (0: it only touched the session)."""


ViolationKind = Literal["identify_too_fast", "session_start_limit", "ratelimit"]
"""What rule a client broke: an IDENTIFY sooner than the identify interval
after the previous one of its bucket, an IDENTIFY with no session start left,
or more payloads than the command rate limit allows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ViolationRecord:
    """A client broke one of Discord's rate rules; what the simulator did is by kind.

    ``identify_too_fast``: answered op 9 ``d = false``, no session started and
    no session start spent. ``session_start_limit``: closed with 4004 (Discord
    resets the token). ``ratelimit``: closed with 4008.
    """

    time: float
    kind: ViolationKind
    shard_id: int | None
    """The shard it was for: the IDENTIFY's ``shard[0]``, or the connection's
    shard; None for a connection that had not identified or resumed."""
    connection_id: int
    bucket: int | None
    """``shard_id % max_concurrency`` for the IDENTIFY kinds; None for ``ratelimit``."""
    since_previous: float | None = None
    """For ``identify_too_fast``: seconds since the bucket's previous accepted IDENTIFY."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RefusalRecord:
    """A websocket upgrade refused by a `RefuseConnections` fault."""

    time: float
    path: str
    """Request path, e.g. ``"/"`` or ``"/resume/"``."""
    remote_port: int
    status: int
    """The HTTP status it was answered with (503)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """A plain HTTP (REST) request and the status it got."""

    time: float
    method: str
    path: str
    status: int


class Records:
    """Every record the simulator made, in the order it made them.

    The lists are public and only ever appended to; read them freely from any
    greenlet of the simulator's hub.

    .. important:: Not thread-safe: use it from the hub the simulator runs in.
    """

    def __init__(self) -> None:
        self.connections: list[ConnectionRecord] = []
        self.identifies: list[IdentifyRecord] = []
        self.resumes: list[ResumeRecord] = []
        self.heartbeats: list[HeartbeatRecord] = []
        self.commands: list[CommandRecord] = []
        self.closes: list[CloseRecord] = []
        self.dispatches: list[DispatchRecord] = []
        self.withheld: list[WithheldRecord] = []
        self.faults: list[FaultRecord] = []
        self.requests: list[RequestRecord] = []
        self.violations: list[ViolationRecord] = []
        self.refusals: list[RefusalRecord] = []
        self.blasts: list[BlastRecord] = []
        self.traffic: dict[int, Traffic] = {}
        """Bytes and messages written, per connection id, kept up to date."""
        self._changed = _Signal()

    def notify(self) -> None:
        """Wake `wait_until` callers; the simulator calls it after appending."""
        self._changed.set()

    def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0) -> bool:
        """Wait cooperatively until ``predicate()`` is true.

        Args:
            predicate: called with no arguments, again after every new record
                (and every 50 ms regardless).
            timeout: seconds to wait at most.

        Returns:
            True once the predicate held, False if the timeout passed first.
        """
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Clearing after the check is race-free: nothing can record between
            # the two without this greenlet yielding.
            self._changed.clear()
            self._changed.wait(min(remaining, _POLL_INTERVAL))

    def clear(self) -> None:
        """Forget every record (e.g. between phases of one test)."""
        for records in (
            self.connections,
            self.identifies,
            self.resumes,
            self.heartbeats,
            self.commands,
            self.closes,
            self.dispatches,
            self.withheld,
            self.faults,
            self.requests,
            self.violations,
            self.refusals,
            self.blasts,
        ):
            records.clear()
        self.traffic.clear()
