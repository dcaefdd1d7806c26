"""The shard's gateway rules, without sockets, greenlets or clocks.

Everything Discord's gateway rules decide lives here, so it can be read in one
place and tested with plain bytes: which stage a shard is in (moves checked
against the table in `stages.py`), whether it IDENTIFYs or RESUMEs, what each
opcode and close code means, which dispatches are delivered, when a
connection is a zombie. The driver (`shard.py`) feeds it each decompressed
message with `receive(payload, now)`, close codes and the current time, and
carries out what it returns: a `RawDispatch` to queue as it is (nearly every
event), or a list of actions:

    Send        write this payload to the websocket
    Deliver     hand this event to the application
    DeliverRaw  queue this dispatch undecoded
    Offer       a dispatch someone in this process may be waiting for (a
                member request's answer): theirs if they take it, else as usual
    Heartbeat   start the heartbeat timer (first beat after `first_delay`)
    Identify    wait for the identify queue, then call `identify()`
    Reconnect   close the socket with `code` and connect again
    Skip        something the gateway sent was not used (counted): log `reason`
    Fail        a fatal close: stop the shard and surface `error`

The driver's calls, and the greenlet each comes from:

    reader       connecting, receive, closed, reconnecting, abandon_resume_url
                 (every stage change the gateway causes)
    heartbeat    heartbeat (heartbeat state only; a zombie is a Reconnect the
                 reader then sees as a closed connection)
    identify     identify, give_up (session starts spent: FATALLY_CLOSED)
    application  shutting_down (down()), revive (restart())

Nothing from the gateway is adopted unchecked: HELLO, READY or RESUMED that
break the rules (a bad interval, out of turn) become a reconnect (cause
"protocol_error"); a message that is not a gateway payload, or a dispatch
with a bad name or sequence, is skipped; a sequence at or below the last one
handled is a replay and is never delivered twice; and a `resume_gateway_url`
weaker than the connection it came on is ignored.
"""

from __future__ import annotations

import enum
import math
import platform
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import ujson

from gcluster._json import JsonReady
from gcluster._token import Token
from gcluster._urls import websocket_url
from gcluster.delivery import Loads, RawDispatch
from gcluster.errors import ConfigError, GClusterError, closed_error
from gcluster.events import Event, EventType, EventTypeFlags, dispatch_kind, event_type, flag_for
from gcluster.peek import peek_dispatch
from gcluster.stages import LocalProtocolError, Stage, StageMachine, Trigger
from gcluster.stats import ShardStats

__all__ = [
    "API_VERSION",
    "CloseCode",
    "Deliver",
    "DeliverRaw",
    "Fail",
    "Heartbeat",
    "Identify",
    "Latency",
    "LocalProtocolError",
    "Offer",
    "Opcode",
    "ReconnectAction",
    "ResumeSession",
    "Send",
    "ShardProtocol",
    "Skip",
    "Stage",
    "classify_close",
]

API_VERSION: Final = 10

# What a HELLO's heartbeat_interval is held to, in seconds. Discord's is 41.25;
# a shorter one would spend the connection's 120-per-minute send budget on
# beats, a longer one would leave a dead connection unnoticed for too long.
MIN_HEARTBEAT_INTERVAL: Final = 1.0
MAX_HEARTBEAT_INTERVAL: Final = 300.0
# Sequences are what the heartbeat and RESUME send back as JSON integers.
_MAX_SEQUENCE: Final = 2**63 - 1
_MAX_SESSION_ID: Final = 256
# Dispatches that change the session: always decoded, whatever the filter says.
_SESSION_DISPATCHES: Final = frozenset({"READY", "RESUMED"})
_new_tuple = tuple.__new__
_NOTHING_OFFERED: Final = EventTypeFlags(0)


class Opcode(enum.IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    REQUEST_SOUNDBOARD_SOUNDS = 31
    REQUEST_CHANNEL_INFO = 43


class CloseCode(enum.IntEnum):
    """Close codes the client sends."""

    NORMAL = 1000  # ends the session: the next connection must IDENTIFY
    GOING_AWAY = 1001  # also ends the session
    # Any code other than 1000/1001 keeps the session resumable; 4000 is the
    # gateway's own "unknown error, try resuming" and says so in its logs.
    RESUMABLE = 4000


class CloseVerdict(enum.Enum):
    RESUME = "resume"
    REIDENTIFY = "reidentify"
    FATAL = "fatal"


_FATAL_CODES: Final = frozenset({4004, 4010, 4011, 4012, 4013, 4014})
_NEW_SESSION_CODES: Final = frozenset({4007, 4009})


def classify_close(code: int | None) -> CloseVerdict:
    """What a close code from the gateway means for the session.

    None stands for a connection that dropped without a close frame, which
    keeps the session like any non-fatal code.
    """
    if code in _FATAL_CODES:
        return CloseVerdict.FATAL
    if code in _NEW_SESSION_CODES:
        return CloseVerdict.REIDENTIFY
    return CloseVerdict.RESUME


@dataclass(frozen=True, slots=True)
class ResumeSession:
    """What a shard needs to RESUME: hand it to a new cluster to pick up where one stopped.

    A session belongs to one shard of one shard count: RESUME names only the
    session, so resuming it on another shard id, or under another total,
    would bring that other shard's events. Sessions a shard hands out
    (`Cluster.down_resumable`, `Cluster.remove_shard`, `Shard.session`) say
    which shard they are of, and a cluster refuses one given to another
    shard; a session built by hand without them is taken on trust.

    Attributes:
        session_id: the session READY gave.
        sequence: the last dispatch sequence handled.
        resume_url: READY's resume_gateway_url; None means the default gateway.
        shard_id, total: the shard the session is of (`[shard_id, total]` of
            its IDENTIFY); None when unknown. Keyword-only, and not compared:
            two values with the same session id and sequence are equal.
    """

    session_id: str
    sequence: int
    resume_url: str | None = None
    shard_id: int | None = field(default=None, compare=False, kw_only=True)
    total: int | None = field(default=None, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        # A session built by hand with "3" for 3 would be refused later as
        # "of shard 3, not of shard 3": say what is wrong where it is made.
        shard_id, total = self.shard_id, self.total
        if total is not None and (
            isinstance(total, bool) or not isinstance(total, int) or total < 1
        ):
            raise ConfigError(
                f"ResumeSession's total must be an int of at least 1 or None, not {total!r}"
            )
        if shard_id is not None and (
            isinstance(shard_id, bool)
            or not isinstance(shard_id, int)
            or shard_id < 0
            or (total is not None and shard_id >= total)
        ):
            raise ConfigError(
                f"ResumeSession's shard_id must be an int in 0..total-1 or None, not {shard_id!r}"
                + (f" (total {total})" if total is not None else "")
            )

    def to_dict(self) -> dict[str, Any]:
        """The session as a dict `json.dumps` takes as it is; `from_dict` reads it back.

        `shard_id` and `total` are included when known.
        """
        data: dict[str, Any] = {
            "session_id": self.session_id,
            "sequence": self.sequence,
            "resume_url": self.resume_url,
        }
        if self.shard_id is not None:
            data["shard_id"] = self.shard_id
        if self.total is not None:
            data["total"] = self.total
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResumeSession:
        """Rebuild a session saved with `to_dict()` (e.g. after a JSON round trip).

        Raises:
            ConfigError: a field is missing or of the wrong type (a ValueError).
        """
        try:
            session_id = data["session_id"]
            sequence = data["sequence"]
        except KeyError as err:
            raise ConfigError(f"a resume session needs {err.args[0]!r}") from err
        resume_url = data.get("resume_url")
        shard_id = data.get("shard_id")
        total = data.get("total")
        if not isinstance(session_id, str) or not session_id:
            raise ConfigError("session_id must be a non-empty string")
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
            raise ConfigError("sequence must be a non-negative integer")
        if resume_url is not None and not isinstance(resume_url, str):
            raise ConfigError("resume_url must be a string or None")
        if total is not None and (
            isinstance(total, bool) or not isinstance(total, int) or total < 1
        ):
            raise ConfigError("total must be a positive integer or None")
        if shard_id is not None and (
            isinstance(shard_id, bool)
            or not isinstance(shard_id, int)
            or shard_id < 0
            or (total is not None and shard_id >= total)
        ):
            raise ConfigError("shard_id must be an integer in 0..total-1, or None")
        return cls(session_id, sequence, resume_url, shard_id=shard_id, total=total)

    def mismatch(self, shard_id: int, total: int | None) -> str | None:
        """Why this session may not be resumed as shard `shard_id` of `total`; None if it may.

        A session that does not say which shard it is of may be resumed as
        any; a `total` of None (not known yet) is not checked.
        """
        if self.shard_id is not None and self.shard_id != shard_id:
            return f"the session is of shard {self.shard_id}, not of shard {shard_id}"
        if self.total is not None and total is not None and self.total != total:
            return (
                f"the session is of a bot with {self.total} shards, not {total}: "
                "a session cannot move to another total, the shard must IDENTIFY"
            )
        return None


@dataclass(frozen=True, slots=True)
class Latency(JsonReady):
    """Heartbeat round trips of the current connection, in seconds.

    Attributes:
        average: mean of every round trip so far, None before the first ACK.
        heartbeats: how many heartbeats were acknowledged.
        recent: the last five round trips, oldest first.
        sent: monotonic time of the last heartbeat sent, or None.
        received: monotonic time of the last ACK, or None.
    """

    average: float | None = None
    heartbeats: int = 0
    recent: tuple[float, ...] = ()
    sent: float | None = None
    received: float | None = None


# --- actions -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    payload: bytes
    op: int
    # Heartbeats use the slots the rate limiter keeps for them.
    heartbeat: bool = False


@dataclass(frozen=True, slots=True)
class Deliver:
    event: Event


@dataclass(frozen=True, slots=True)
class DeliverRaw:
    """A dispatch to queue undecoded (when it comes with other actions)."""

    dispatch: RawDispatch


@dataclass(frozen=True, slots=True)
class Offer:
    """A dispatch of a kind the driver was asked to offer (see ShardProtocol's `offered`).

    The driver hands it to whoever waits for it (member requests); if they
    do not take it, it is queued when `wanted` (the filter lets it through)
    and counted as filtered otherwise. Counted by the driver, not here.
    """

    dispatch: RawDispatch | Event
    wanted: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    interval: float
    first_delay: float


@dataclass(frozen=True, slots=True)
class Identify:
    pass


@dataclass(frozen=True, slots=True)
class ReconnectAction:
    resume: bool
    code: int
    reason: str
    # A stable label for metrics and logs: "reconnect_requested", "invalid_session", "zombie".
    cause: str
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Skip:
    """Something the gateway sent was not used; the driver counts it and logs why.

    `what` is "skipped" (a message that could not be used), "duplicate" (a
    dispatch whose sequence was handled already) or "ignored" (one field of a
    message, the rest was used).
    """

    reason: str
    what: str = "skipped"


@dataclass(frozen=True, slots=True)
class Fail:
    error: GClusterError


Action = Send | Deliver | DeliverRaw | Offer | Heartbeat | Identify | ReconnectAction | Skip | Fail


def default_properties() -> dict[str, str]:
    return {
        "os": platform.system().lower() or "unknown",
        "browser": "gcluster",
        "device": "gcluster",
    }


@dataclass(slots=True)
class _Heartbeats:
    """Heartbeat state of one connection."""

    interval: float = 0.0
    awaiting_ack: bool = False
    last_sent: float | None = None
    last_ack: float | None = None
    count: int = 0
    total: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=5))


class ShardProtocol:
    """The rules of one shard's gateway connection.

    Args:
        shard_id, total: the shard and the bot's shard count.
        token: the bot token.
        intents: the intents bits to IDENTIFY with.
        event_types: which events to deliver.
        session: a session to RESUME instead of identifying.
        properties: IDENTIFY's connection properties.
        large_threshold: IDENTIFY's large_threshold.
        presence: IDENTIFY's presence (an UpdatePresence's `d`), or None.
        compression: the transport compression to ask for ("zlib-stream",
            "zstd-stream") or None.
        rng: source of the heartbeat jitter and the op 9 wait (injectable for tests).
        loads: the JSON decoder for what is not queued undecoded.
        stats: the counters the protocol keeps (events, filtered, duplicates,
            skipped, heartbeat latency); a fresh `ShardStats` by default.
        offered: dispatch kinds returned as `Offer` whatever the filter says
            (GUILD_MEMBERS_CHUNK and RATE_LIMITED for a shard whose cluster
            gathers member requests); none by default.
    """

    def __init__(
        self,
        shard_id: int,
        total: int,
        token: Token,
        intents: int,
        *,
        event_types: EventTypeFlags = EventTypeFlags.ALL,
        session: ResumeSession | None = None,
        properties: Mapping[str, str] | None = None,
        large_threshold: int = 50,
        presence: Mapping[str, Any] | None = None,
        compression: str | None = "zlib-stream",
        rng: Callable[[], float] = random.random,
        loads: Loads = ujson.loads,
        stats: ShardStats | None = None,
        offered: EventTypeFlags = _NOTHING_OFFERED,
    ) -> None:
        self.shard_id = shard_id
        self.total = total
        self._token = token
        self.intents = int(intents)
        self.event_types = event_types
        self._mask = int(event_types)
        self._offered = int(offered)
        self.properties = dict(properties) if properties is not None else default_properties()
        self.large_threshold = large_threshold
        self.presence = dict(presence) if presence is not None else None
        self.compression = compression
        self._rng = rng
        self._loads = loads
        self.stats = stats if stats is not None else ShardStats()
        self._event_counts = self.stats.events
        if self._mask & int(EventTypeFlags.SHARD_PAYLOAD):
            # Chosen once here rather than asked on every message.
            self.receive = self._receive_with_payload  # type: ignore[method-assign]

        self._stages = StageMachine()
        self.session_id: str | None = session.session_id if session else None
        self.sequence: int | None = session.sequence if session else None
        self.resume_url: str | None = session.resume_url if session else None
        self.error: GClusterError | None = None
        self._identified = False  # IDENTIFY or RESUME sent on this connection
        self._heartbeats = _Heartbeats()
        self._connection_url: str | None = None

    # --- what the driver asks ------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self._stages.stage

    @property
    def session(self) -> ResumeSession | None:
        """The session to resume, or None when the next connection must IDENTIFY."""
        if self.session_id is None or self.sequence is None:
            return None
        return ResumeSession(
            self.session_id,
            self.sequence,
            self.resume_url,
            shard_id=self.shard_id,
            total=self.total,
        )

    def url(self, gateway_url: str) -> str:
        """Where to connect: the resume URL when resuming, else `gateway_url`.

        A resume URL weaker than `gateway_url` (ws:// for a wss:// gateway,
        say from a saved session) is not used: the RESUME carries the token.
        """
        base = gateway_url
        if self.session is not None and self.resume_url:
            if _as_strong(self.resume_url, gateway_url):
                base = self.resume_url
        query = f"v={API_VERSION}&encoding=json"
        if self.compression:
            query += f"&compress={self.compression}"
        return f"{base.rstrip('/')}/?{query}"

    @property
    def latency(self) -> Latency:
        hb = self._heartbeats
        return Latency(
            average=hb.total / hb.count if hb.count else None,
            heartbeats=hb.count,
            recent=tuple(hb.recent),
            sent=hb.last_sent,
            received=hb.last_ack,
        )

    @property
    def awaiting_ack(self) -> bool:
        """A heartbeat was sent and its ACK has not arrived yet."""
        return self._heartbeats.awaiting_ack

    @property
    def identified(self) -> bool:
        """IDENTIFY or RESUME has been sent on the current connection."""
        return self._identified

    def wants(self, kind: EventType) -> bool:
        return bool(self._mask & int(flag_for(kind)))

    def abandon_resume_url(self) -> bool:
        """Connecting to the resume URL failed: resume on the main gateway instead.

        Discord accepts a RESUME on either; a dead resume URL must not keep
        the shard away for good. Returns whether there was one to abandon.
        """
        if self.resume_url is None:
            return False
        self.resume_url = None
        return True

    # --- connection life -----------------------------------------------------

    def connecting(self, url: str) -> list[Action]:
        """A new connection is being opened to `url`."""
        self._stages.move(Trigger.CONNECT)
        self._identified = False
        self._heartbeats = _Heartbeats()
        self._connection_url = url
        return self._lifecycle(EventType.SHARD_CONNECTING, {"url": url})

    def receive(self, payload: bytes, now: float) -> RawDispatch | list[Action] | None:
        """One whole, decompressed message from the gateway: what to do with it.

        Returns:
            a `RawDispatch` to queue undecoded: a dispatch laid out as Discord
            sends it (see peek.py), wanted, and not a replay; nearly every
            message. None when nothing is to be done (filtered out, or a
            replay). Otherwise the actions, after decoding the message: a
            message that is not a gateway payload, or a dispatch with a bad
            name or sequence, gives `Skip`; HELLO, READY or RESUMED breaking
            the rules (a bad interval, out of turn) gives a reconnect.
        """
        peeked = peek_dispatch(payload)
        if peeked is not None:
            name, sequence = peeked
            if name not in _SESSION_DISPATCHES:
                # The common case, run for nearly every event, so written out
                # here: only t and s matter (peeked, so s is a plain integer);
                # the JSON is decoded by events() as it hands the event over,
                # and never for a filtered type.
                last = self.sequence
                if last is not None and sequence <= last:
                    self.stats.duplicates += 1
                    return None
                self.sequence = sequence
                kind, bit = dispatch_kind(name)
                if bit & self._offered:
                    raw = _new_tuple(RawDispatch, (self.shard_id, kind, name, sequence, payload))
                    return [Offer(raw, bool(self._mask & bit))]
                if not self._mask & bit:
                    self.stats.filtered += 1
                    return None
                self._event_counts[name] += 1
                return _new_tuple(RawDispatch, (self.shard_id, kind, name, sequence, payload))
        try:
            message = self._loads(payload)
        except (ValueError, TypeError, OverflowError, RecursionError) as err:
            # Skipped like a dispatch that fails in events(): a reconnect would
            # only have the gateway replay the same bytes.
            return [self._skip(f"a message that is not valid JSON ({err})")]
        return self._message(message, now)

    def _receive_with_payload(self, payload: bytes, now: float) -> list[Action]:
        """`receive` when SHARD_PAYLOAD is wanted: every message as an event of its own first."""
        event = Event(EventType.SHARD_PAYLOAD, "SHARD_PAYLOAD", self.shard_id, None, payload)
        result = ShardProtocol.receive(self, payload, now)
        if result is None:
            return [Deliver(event)]
        if result.__class__ is RawDispatch:
            return [Deliver(event), DeliverRaw(result)]
        return [Deliver(event), *result]

    def _message(self, message: Any, now: float) -> list[Action]:
        """A decoded message (any JSON value)."""
        op = message.get("op") if isinstance(message, dict) else None
        if type(op) is not int:
            # Not a gateway payload at all: nothing in it can be acted on, and
            # reconnecting would not make the gateway send something else.
            return [self._skip("a message that is not a gateway payload (no integer op)")]
        if op == Opcode.DISPATCH:
            return self._dispatch(message)
        if op == Opcode.HEARTBEAT_ACK:
            return self._heartbeat_ack(now)
        if op == Opcode.HEARTBEAT:
            # The gateway asks for a beat now; it does not replace the timer.
            return [self._heartbeat_payload(now), *self._lifecycle(EventType.GATEWAY_HEARTBEAT)]
        if op == Opcode.HELLO:
            return self._hello(message.get("d"))
        if op == Opcode.RECONNECT:
            return [
                *self._lifecycle(EventType.GATEWAY_RECONNECT),
                self._reconnect(
                    resume=True,
                    code=CloseCode.RESUMABLE,
                    reason="op 7 RECONNECT",
                    cause="reconnect_requested",
                ),
            ]
        if op == Opcode.INVALID_SESSION:
            # Only a JSON true keeps the session; anything else is "not resumable".
            return self._invalid_session(message.get("d") is True)
        # Opcodes added after API v10 must not take the shard down.
        return self._unknown_opcode(op)

    def identify(self) -> list[Action]:
        """The identify queue granted a slot: send IDENTIFY.

        Raises:
            LocalProtocolError: not after a HELLO that asked for it, or twice.
        """
        if self.stage is not Stage.IDENTIFYING or self._identified:
            raise LocalProtocolError(f"IDENTIFY is not due in stage {self.stage.value}")
        self._identified = True
        d: dict[str, Any] = {
            "token": self._token.secret,
            "intents": self.intents,
            "properties": self.properties,
            "shard": [self.shard_id, self.total],
            "large_threshold": self.large_threshold,
            "compress": False,  # transport compression instead, when asked
        }
        if self.presence is not None:
            d["presence"] = self.presence
        return [Send(_encode(Opcode.IDENTIFY, d), Opcode.IDENTIFY)]

    def heartbeat(self, now: float) -> list[Action]:
        """The heartbeat timer fired: beat, or declare the connection a zombie.

        A beat that got no ACK before the next is due means the connection is
        dead on the server's side even if the socket looks open. Half an
        interval is the floor so that a beat the gateway asked for (op 1) just
        before the timer does not count as missed.
        """
        hb = self._heartbeats
        if hb.awaiting_ack and hb.last_sent is not None and now - hb.last_sent >= hb.interval / 2:
            return [
                self._reconnect(
                    resume=True,
                    code=CloseCode.RESUMABLE,
                    reason=f"zombie connection: no heartbeat ACK in {now - hb.last_sent:.1f} s",
                    cause="zombie",
                )
            ]
        return [self._heartbeat_payload(now)]

    def closed(
        self, code: int | None, reason: str = "", *, by_client: bool = False
    ) -> list[Action]:
        """The connection ended.

        Args:
            code: the close code, None when the socket dropped without one.
            reason: the close frame's reason.
            by_client: this side sent the close (e.g. `send(Message.close(...))`);
                a client close with 1000/1001 ends the session.
        """
        self._identified = False
        if self.stage is Stage.FATALLY_CLOSED:
            self._stages.move(Trigger.CLOSED)
            return []  # the shard gave up before the socket closed (see give_up)
        if by_client:
            if code in (CloseCode.NORMAL, CloseCode.GOING_AWAY):
                self._forget_session()
            verdict = CloseVerdict.RESUME
        else:
            verdict = classify_close(code)
        fatal = verdict is CloseVerdict.FATAL
        events = self._lifecycle(
            EventType.SHARD_DISCONNECTED, {"code": code, "reason": reason, "fatal": fatal}
        )
        if fatal:
            assert code is not None
            # The gateway ended the session with the connection.
            self._forget_session()
            self._stages.move(Trigger.FATAL)
            self.error = closed_error(self.shard_id, code, reason)
            return [*events, Fail(self.error)]
        self._stages.move(Trigger.CLOSED)
        if verdict is CloseVerdict.REIDENTIFY:
            self._forget_session()
        return events

    def give_up(self, error: GClusterError) -> list[Action]:
        """Stop for good for a reason of this side's (the day's session starts are spent)."""
        self._forget_session()
        self._stages.move(Trigger.FATAL)
        self.error = error
        events = self._lifecycle(
            EventType.SHARD_DISCONNECTED, {"code": None, "reason": str(error), "fatal": True}
        )
        return [*events, Fail(error)]

    def shutting_down(self, *, resumable: bool) -> int:
        """The application stops the shard; returns the close code to send."""
        self._stages.move(Trigger.SHUT_DOWN)
        if resumable:
            return int(CloseCode.RESUMABLE)
        self._forget_session()
        return int(CloseCode.NORMAL)

    def revive(self) -> None:
        """Leave FATALLY_CLOSED so the shard may try again (an explicit restart)."""
        if self.stage is Stage.FATALLY_CLOSED:
            self._stages.move(Trigger.REVIVE)
            self.error = None

    def reconnecting(self) -> list[Action]:
        return self._lifecycle(EventType.SHARD_RECONNECTING)

    # --- opcode handlers -----------------------------------------------------

    def _hello(self, d: Any) -> list[Action]:
        if not self._stages.allows(Trigger.HELLO_IDENTIFY):
            return [self._violation("a second HELLO on one connection")]
        millis = d.get("heartbeat_interval") if isinstance(d, dict) else None
        if (
            not isinstance(millis, int | float)
            or isinstance(millis, bool)
            or not math.isfinite(millis)
            or millis <= 0
        ):
            return [self._violation(f"HELLO with the heartbeat_interval {millis!r}")]
        # Held within bounds rather than refused: the connection works either way.
        interval = min(max(millis / 1000.0, MIN_HEARTBEAT_INTERVAL), MAX_HEARTBEAT_INTERVAL)
        self._heartbeats.interval = interval
        actions: list[Action] = [
            *self._lifecycle(EventType.GATEWAY_HELLO, {"heartbeat_interval": interval}),
            # Jittered so that thousands of shards started together do not beat together.
            Heartbeat(interval=interval, first_delay=interval * self._rng()),
        ]
        session = self.session
        if session is None:
            self._stages.move(Trigger.HELLO_IDENTIFY)
            actions += self._lifecycle(EventType.SHARD_IDENTIFYING)
            actions.append(Identify())
            return actions
        self._stages.move(Trigger.HELLO_RESUME)
        self._identified = True
        actions += self._lifecycle(
            EventType.SHARD_RESUMING,
            {"session_id": session.session_id, "sequence": session.sequence},
        )
        payload = {
            "token": self._token.secret,
            "session_id": session.session_id,
            "seq": session.sequence,
        }
        actions.append(Send(_encode(Opcode.RESUME, payload), Opcode.RESUME))
        return actions

    def _dispatch(self, message: Mapping[str, Any]) -> list[Action]:
        sequence = message.get("s")
        name = message.get("t")
        if not isinstance(name, str) or not name:
            return [self._skip(f"a dispatch with the name {name!r}")]
        if sequence is not None and (
            type(sequence) is not int or not 0 <= sequence <= _MAX_SEQUENCE
        ):
            return [self._skip(f"dispatch {name} with the sequence {sequence!r}")]
        data = message.get("d")
        kind = event_type(name)
        if kind is EventType.READY:
            # A new session starts its own count: READY is never a replay.
            if sequence is not None:
                self.sequence = sequence
            return self._ready(name, sequence, data)
        replay = sequence is not None and self.sequence is not None and sequence <= self.sequence
        if sequence is not None and not replay:
            self.sequence = sequence
        if kind is EventType.RESUMED:
            if not self._stages.allows(Trigger.RESUMED):
                return [self._violation("RESUMED without a RESUME")]
            self._stages.move(Trigger.RESUMED)
            actions = self._deliver(kind, name, sequence, data)
            return actions + self._lifecycle(EventType.SHARD_CONNECTED, {"resumed": True})
        if replay:
            return [self._skip(f"dispatch {name} s={sequence} again (a replay)", "duplicate")]
        return self._deliver(kind, name, sequence, data)

    def _ready(self, name: str, sequence: int | None, data: Any) -> list[Action]:
        if not self._stages.allows(Trigger.READY) or not self._identified:
            return [self._violation("READY without an IDENTIFY")]
        session_id = data.get("session_id") if isinstance(data, dict) else None
        notes: list[Action] = []
        if _valid_session_id(session_id, self._token):
            self.session_id = session_id
            url = data.get("resume_gateway_url")
            current = self._connection_url or ""
            # Ignored rather than refused: the main gateway takes a RESUME too.
            self.resume_url = url if isinstance(url, str) and _as_strong(url, current) else None
            if url is not None and self.resume_url is None:
                notes.append(Skip(f"READY's resume_gateway_url {url!r} is unusable", "ignored"))
        else:
            # The session works, but cannot be resumed: the next one IDENTIFYs.
            self._forget_session()
            notes.append(Skip(f"READY's session_id {session_id!r} is unusable", "ignored"))
        self._stages.move(Trigger.READY)
        actions = self._deliver(EventType.READY, name, sequence, data)
        connected = self._lifecycle(EventType.SHARD_CONNECTED, {"resumed": False})
        return notes + actions + connected

    def _deliver(self, kind: EventType, name: str, sequence: int | None, data: Any) -> list[Action]:
        bit = int(flag_for(kind))
        if bit & self._offered:
            event = Event(kind, name, self.shard_id, sequence, data)
            return [Offer(event, bool(self._mask & bit))]
        if self._mask & bit:
            self.stats.events[name] += 1
            return [Deliver(Event(kind, name, self.shard_id, sequence, data))]
        self.stats.filtered += 1
        return []

    def _heartbeat_ack(self, now: float) -> list[Action]:
        hb = self._heartbeats
        if hb.awaiting_ack and hb.last_sent is not None:
            rtt = now - hb.last_sent
            hb.count += 1
            hb.total += rtt
            hb.recent.append(rtt)
            self.stats.observe_latency(rtt)
        hb.awaiting_ack = False
        hb.last_ack = now
        return self._lifecycle(EventType.GATEWAY_HEARTBEAT_ACK)

    def _invalid_session(self, resumable: bool) -> list[Action]:
        events = self._lifecycle(EventType.GATEWAY_INVALIDATE_SESSION, {"resumable": resumable})
        if resumable and self.session is not None:
            return [
                *events,
                self._reconnect(
                    resume=True,
                    code=CloseCode.RESUMABLE,
                    reason="op 9 resumable",
                    cause="invalid_session",
                ),
            ]
        # Discord asks for a random wait of 1-5 s before identifying again.
        self._forget_session()
        return [
            *events,
            self._reconnect(
                resume=False,
                code=CloseCode.NORMAL,
                reason="op 9 INVALID_SESSION",
                cause="invalid_session",
                delay=1.0 + 4.0 * self._rng(),
            ),
        ]

    def _unknown_opcode(self, op: Any) -> list[Action]:
        return self._lifecycle(EventType.UNKNOWN, {"op": op})

    def _skip(self, reason: str, what: str = "skipped") -> Skip:
        if what == "duplicate":
            self.stats.duplicates += 1
        else:
            self.stats.skipped += 1
        return Skip(reason, what)

    def _violation(self, reason: str) -> ReconnectAction:
        # The connection cannot be trusted; the session can: resume it.
        return self._reconnect(
            resume=True, code=CloseCode.RESUMABLE, reason=reason, cause="protocol_error"
        )

    # --- helpers -------------------------------------------------------------

    def _heartbeat_payload(self, now: float) -> Send:
        hb = self._heartbeats
        hb.awaiting_ack = True
        hb.last_sent = now
        return Send(_encode(Opcode.HEARTBEAT, self.sequence), Opcode.HEARTBEAT, heartbeat=True)

    def _reconnect(
        self, *, resume: bool, code: int, reason: str, cause: str, delay: float = 0.0
    ) -> ReconnectAction:
        # The stage moves when the connection has closed (see closed()).
        if not resume:
            self._forget_session()
        return ReconnectAction(
            resume=resume and self.session is not None,
            code=code,
            reason=reason,
            cause=cause,
            delay=delay,
        )

    def _forget_session(self) -> None:
        self.session_id = None
        self.sequence = None
        self.resume_url = None

    def _lifecycle(self, kind: EventType, data: dict[str, Any] | None = None) -> list[Action]:
        if not self._mask & int(flag_for(kind)):
            return []
        return [Deliver(Event(kind, kind.value, self.shard_id, None, data))]


def _as_strong(url: str, than: str) -> bool:
    """Whether `url` is a websocket URL as secure as `than` (wss stays wss), without credentials."""
    parts = websocket_url(url, secure=than.startswith("wss:"))
    return parts is not None and not parts.username


def _valid_session_id(value: Any, token: Token) -> bool:
    # It goes back in RESUME and shows in info() and logs.
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_SESSION_ID
        and value.isprintable()
        and not token.appears_in(value)
    )


def _encode(op: Opcode, d: Any) -> bytes:
    return ujson.dumps({"op": int(op), "d": d}, ensure_ascii=False).encode()
