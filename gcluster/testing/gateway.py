"""The simulated gateway's state: shards, sessions, and where each dispatch goes.

Discord keeps a session per identified shard, numbers that session's
dispatches with ``s``, and replays the ones a client missed when it resumes.
This module holds exactly that bookkeeping — which connection serves which
session, each session's log, events waiting for a shard that never
identified — and applies faults to a shard. Decoding client messages and
deciding what they may do is `connection`'s job; sockets are `wire`'s.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
import ujson

from gcluster.errors import ConfigError

from . import faults, payloads, rules, traffic
from .records import (
    BlastRecord,
    CloseRecord,
    CommandRecord,
    ConnectionRecord,
    DispatchRecord,
    FaultRecord,
    HeartbeatRecord,
    IdentifyRecord,
    Records,
    RefusalRecord,
    ResumeRecord,
    ViolationKind,
    ViolationRecord,
    WithheldRecord,
)
from .rules import Close, Op, Rejection
from .streams import EventStream
from .wire import COMPRESSIONS, BlastFrames

if TYPE_CHECKING:
    from .connection import GatewayConnection
    from .wire import Ending

__all__ = ["Blast", "Gateway", "GatewayConfig", "SessionInfo", "encode"]

# Privileged intent bit -> the application flag that allows it (GATEWAY_*).
_INTENT_FLAGS = {1 << 1: 1 << 14, 1 << 8: 1 << 12, 1 << 15: 1 << 18}

HEARTBEAT_ACK = '{"t":null,"s":null,"op":11,"d":null}'
HEARTBEAT_REQUEST = '{"t":null,"s":null,"op":1,"d":null}'
RECONNECT = '{"t":null,"s":null,"op":7,"d":null}'
INVALID_SESSION = {
    True: '{"t":null,"s":null,"op":9,"d":true}',
    False: '{"t":null,"s":null,"op":9,"d":false}',
}
_NUMBER = payloads.NUMBER_KEY
_DUE = payloads.DUE_KEY
# Not JSON, however it is decoded.
GARBAGE_TEXT = '{"t":"MESSAGE_CREATE","s":'
# After a sync flush the deflate stream is byte-aligned at a block header; 0xff
# there is a block of the reserved type 3, which every inflater rejects. The
# suffix makes it look like a complete zlib-stream message.
GARBAGE_ZLIB = b"\xff" * 8 + b"\x00\x00\xff\xff"


def encode(data: Any) -> str:
    """JSON the way Discord writes it (UTF-8, slashes unescaped)."""
    return ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """What the simulated application and gateway look like; see `GatewaySimulator`."""

    shards: int
    recommended_shards: int
    max_concurrency: int
    heartbeat_interval: float
    token: str = field(repr=False)
    privileged_intents: int
    session_start_limit_total: int
    session_start_reset_after: float
    """Seconds from the simulator's start (then from each reset) until the
    session start budget is back at its total."""
    guilds_per_shard: int
    identify_interval: float
    """Seconds one identify bucket must wait between two IDENTIFYs; 0: no limit."""
    replay_limit: int
    """How many of a session's latest dispatches are kept for a RESUME."""
    login_endpoints: bool = False
    """Whether REST also answers what other libraries ask at login
    (GET /users/@me and /oauth2/applications/@me)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionInfo:
    """A snapshot of a shard's current session."""

    session_id: str
    shard_id: int
    sequence: int
    """The ``s`` of the session's last dispatch."""
    connected: bool
    """Whether a live connection serves it (False: waiting for a RESUME)."""


class Session:
    """One gateway session: its intents, its ``s`` counter and the log of what it dispatched."""

    __slots__ = ("connection", "id", "intents", "log", "seq", "shard_id")

    def __init__(self, session_id: str, shard_id: int, intents: int, replay_limit: int) -> None:
        self.id = session_id
        self.shard_id = shard_id
        # What IDENTIFY asked for; a RESUME keeps them.
        self.intents = intents
        self.seq = 0
        # The latest dispatches as (frame, t, number), replayed verbatim on
        # RESUME; the last one is dispatch ``seq``. Bounded, so a long run does
        # not keep every dispatch it ever sent.
        self.log: deque[tuple[str, str, int | None]] = deque(maxlen=replay_limit)
        self.connection: GatewayConnection | None = None

    @property
    def oldest_replayable(self) -> int:
        """The ``s`` of the oldest dispatch still in the log (``seq + 1`` if none)."""
        return self.seq - len(self.log) + 1


class _ArmedPlan:
    __slots__ = ("plan", "remaining")

    def __init__(self, plan: faults.FaultPlan, remaining: int) -> None:
        self.plan = plan
        self.remaining = remaining


class Blast:
    """Dispatches blasted to one connection (`Gateway.blast`): wait for its record.

    Attributes:
        shard_id, connection_id, session_id: where they went.
        first_s, last_s: their sequence numbers.
        first_number, last_number: their event numbers.
        prepare_seconds: building, encoding, compressing and framing them.
        frames: the queued frames, as the connection's writer sees them.
    """

    __slots__ = (
        "connection_id",
        "first_number",
        "first_s",
        "frames",
        "last_number",
        "last_s",
        "prepare_seconds",
        "record",
        "session_id",
        "shard_id",
    )

    def __init__(
        self,
        *,
        shard_id: int,
        connection_id: int,
        session_id: str,
        first_s: int,
        last_s: int,
        first_number: int,
        last_number: int,
        prepare_seconds: float,
        frames: BlastFrames,
        records: Records,
    ) -> None:
        self.shard_id = shard_id
        self.connection_id = connection_id
        self.session_id = session_id
        self.first_s = first_s
        self.last_s = last_s
        self.first_number = first_number
        self.last_number = last_number
        self.prepare_seconds = prepare_seconds
        self.frames = frames
        self.record: BlastRecord | None = None

        def finished(_: object) -> None:
            self.record = record = self._to_record()
            records.blasts.append(record)
            records.notify()

        frames.done.rawlink(finished)

    def __repr__(self) -> str:
        return f"<Blast shard={self.shard_id} s={self.first_s}..{self.last_s} done={self.done}>"

    @property
    def events(self) -> int:
        return self.last_s - self.first_s + 1

    @property
    def done(self) -> bool:
        """Whether the writer is through with it (all written, or the connection ended)."""
        return self.record is not None

    def release(self, start_at: float | None = None) -> None:
        """Start a held or paced blast; a paced one sends each dispatch at
        ``start_at`` (default now) plus its due time."""
        self.frames.release(time.monotonic() if start_at is None else start_at)

    def wait(self, timeout: float | None = None) -> BlastRecord | None:
        """Wait until the writer is through with it; its record, or None on timeout."""
        if self.frames.done.wait(timeout) and self.record is None:
            # rawlink callbacks run on the hub's next turn: let it record.
            gevent.sleep(0)
        return self.record

    def _to_record(self) -> BlastRecord:
        frames = self.frames
        return BlastRecord(
            time=time.monotonic(),
            shard_id=self.shard_id,
            connection_id=self.connection_id,
            session_id=self.session_id,
            first_s=self.first_s,
            last_s=self.last_s,
            first_number=self.first_number,
            last_number=self.last_number,
            events=self.events,
            written=frames.written,
            payload_bytes=sum(frames.payload_bytes),
            wire_bytes=frames.wire_bytes,
            prepare_seconds=self.prepare_seconds,
            started=frames.started,
            finished=frames.finished if frames.finished is not None else time.monotonic(),
            late_max=frames.late_max,
            sent_at=tuple(frames.sent_at),
        )


class ShardState:
    """Everything the gateway keeps per shard id."""

    __slots__ = ("backlog", "bodies", "guilds", "id", "plans", "session", "stream", "total")

    def __init__(self, shard_id: int, total: int, guilds_per_shard: int) -> None:
        self.id = shard_id
        self.total = total
        # Varied bodies for blasts, built on the first one (it takes a moment).
        self.bodies: traffic.BodyPool | None = None
        self.guilds = payloads.guild_fixtures(shard_id, total, guilds_per_shard)
        self.stream = EventStream(self.guilds, payloads.Snowflakes(worker=shard_id % 32))
        self.session: Session | None = None
        # Dispatches for a shard without a session, sent after its next READY,
        # as (t, d, number, the intents that bring it).
        self.backlog: list[tuple[str, str, int | None, int]] = []
        self.plans: list[_ArmedPlan] = []


class Gateway:
    """The gateway's shards and sessions, and the rules for routing dispatches.

    .. important:: Use it only from the hub the simulator runs in.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        url: str,
        resume_url: str,
        records: Records,
        session_start_remaining: int,
    ) -> None:
        self.config = config
        self.url = url
        self.resume_url = resume_url
        self.records = records
        self._session_start_remaining = session_start_remaining
        self._session_start_reset_at = time.monotonic() + config.session_start_reset_after
        # Bucket -> when its last IDENTIFY was accepted (time.monotonic()).
        self._last_identify: dict[int, float] = {}
        self._refusals_left = 0
        self._shards = [
            ShardState(i, config.shards, config.guilds_per_shard) for i in range(config.shards)
        ]
        self._sessions: dict[str, Session] = {}
        self._connections: dict[int, GatewayConnection] = {}
        ids = payloads.Snowflakes(worker=31)
        self.application_id = ids.next()
        self.bot_user_id = self.application_id
        self._application_flags = sum(
            flag for bit, flag in _INTENT_FLAGS.items() if config.privileged_intents & bit
        )
        self._hello = encode(
            {
                "t": None,
                "s": None,
                "op": Op.HELLO,
                "d": {"heartbeat_interval": round(config.heartbeat_interval * 1000)},
            }
        )
        self._quoted_names: dict[str, str] = {}

    # -- what REST reports -------------------------------------------------

    @property
    def session_start_remaining(self) -> int:
        """What is left of the session start budget (refilled when it resets)."""
        self._refill_session_starts(time.monotonic())
        return self._session_start_remaining

    def session_start_reset_after(self) -> float:
        """Seconds until the session start budget is back at its total."""
        now = time.monotonic()
        self._refill_session_starts(now)
        return max(0.0, self._session_start_reset_at - now)

    def session_start_limit(self) -> dict[str, int]:
        """``session_start_limit`` as /gateway/bot reports it (``reset_after`` in ms)."""
        reset_after = self.session_start_reset_after()
        return {
            "total": self.config.session_start_limit_total,
            "remaining": self.session_start_remaining,
            "reset_after": math.ceil(reset_after * 1000),
            "max_concurrency": self.config.max_concurrency,
        }

    def _refill_session_starts(self, now: float) -> None:
        if now < self._session_start_reset_at:
            return
        period = self.config.session_start_reset_after
        periods = math.floor((now - self._session_start_reset_at) / period) + 1
        self._session_start_reset_at += periods * period
        self._session_start_remaining = self.config.session_start_limit_total

    def bot_user(self) -> dict[str, Any]:
        """The bot's user object, as GET /users/@me returns it."""
        return {
            **payloads.user(self.bot_user_id, bot=True),
            "flags": 0,
            "mfa_enabled": False,
            "verified": True,
            "email": None,
        }

    def application(self) -> dict[str, Any]:
        """The bot's application, as GET /oauth2/applications/@me returns it."""
        return {
            "id": str(self.application_id),
            "name": "gcluster-sim",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": payloads.user(self.application_id),
            "verify_key": f"{self.application_id:064x}"[-64:],
            "flags": self._application_flags,
            "team": None,
            "bot": self.bot_user(),
        }

    def token_ok(self, token: str) -> bool:
        """Whether ``token`` (with or without "Bot ") is the application's."""
        return secrets.compare_digest(rules.strip_bot_prefix(token), self.config.token)

    # -- connections -------------------------------------------------------

    def admit(self, path: str, remote_port: int) -> bool:
        """Whether to accept a websocket upgrade; False (recorded) while refusing."""
        if self._refusals_left <= 0:
            return True
        self._refusals_left -= 1
        self._record(
            self.records.refusals,
            RefusalRecord(time=time.monotonic(), path=path, remote_port=remote_port, status=503),
        )
        return False

    def open(self, conn: GatewayConnection, record: ConnectionRecord) -> None:
        """Register a new websocket and greet it (HELLO), or reject its URL."""
        self._connections[conn.id] = conn
        self._record(self.records.connections, record)
        rejection = rules.check_query(record.query, compressions=COMPRESSIONS)
        if rejection is not None:
            self.reject(conn, rejection)
        else:
            conn.wire.send(self._hello)

    def closed(self, conn: GatewayConnection, ending: Ending) -> None:
        """Account for a connection that ended (close frame either way, or a drop)."""
        self._connections.pop(conn.id, None)
        if ending.dropped:
            ends_session = False
        elif ending.initiator == "client":
            ends_session = rules.client_close_ends_session(ending.code)
        else:
            ends_session = rules.server_close_ends_session(ending.code)
        self._detach(conn, end_session=ends_session)
        self._record(
            self.records.closes,
            CloseRecord(
                time=time.monotonic(),
                shard_id=conn.shard_id,
                connection_id=conn.id,
                code=ending.code,
                reason=ending.reason,
                initiator=ending.initiator,
                dropped=ending.dropped,
            ),
        )

    def reject(self, conn: GatewayConnection, rejection: Rejection) -> None:
        """Close ``conn`` with the rejection's code, as Discord does on a broken rule."""
        self._close(conn, rejection.code, rejection.reason)

    def live(self, shard_id: int) -> list[GatewayConnection]:
        """The shard's open connections that are not closing."""
        return [
            c for c in self._connections.values() if c.shard_id == shard_id and not c.wire.closing
        ]

    def all_connections(self) -> list[GatewayConnection]:
        """Every open connection."""
        return list(self._connections.values())

    # -- what clients send -------------------------------------------------

    def heartbeat(self, conn: GatewayConnection, data: Any) -> None:
        """Answer a heartbeat with an ACK (unless the connection stopped acking)."""
        acked = conn.acks_heartbeats
        if acked:
            conn.wire.send(HEARTBEAT_ACK)
        self._record(
            self.records.heartbeats,
            HeartbeatRecord(
                time=time.monotonic(),
                shard_id=conn.shard_id,
                connection_id=conn.id,
                sequence=data if type(data) is int else None,
                acked=acked,
            ),
        )

    def violation(
        self,
        conn: GatewayConnection,
        kind: ViolationKind,
        *,
        shard_id: int | None,
        since_previous: float | None = None,
    ) -> None:
        """Record that ``conn`` broke a rate rule (the caller answers it)."""
        bucket = None
        if kind != "ratelimit" and shard_id is not None:
            bucket = shard_id % self.config.max_concurrency
        self._record(
            self.records.violations,
            ViolationRecord(
                time=time.monotonic(),
                kind=kind,
                shard_id=shard_id,
                connection_id=conn.id,
                bucket=bucket,
                since_previous=since_previous,
            ),
        )

    def identify(self, conn: GatewayConnection, data: Any) -> None:
        """Start a new session for the identifying shard and send READY.

        In order: a malformed or unauthorized IDENTIFY is closed with its
        code; with no session start left it is closed with 4004; sooner than
        ``identify_interval`` after its bucket's previous one it gets op 9
        ``d = false`` and may be sent again later on the same connection.
        """
        config = self.config
        rejection = rules.check_identify(
            data,
            token=config.token,
            shards=config.shards,
            privileged_intents=config.privileged_intents,
        )
        if rejection is not None:
            self.reject(conn, rejection)
            return
        shard_id, total = data.get("shard") or (0, 1)
        now = time.monotonic()
        self._refill_session_starts(now)
        if self._session_start_remaining <= 0:
            # Discord resets the token of a bot that runs out of session starts.
            self.violation(conn, "session_start_limit", shard_id=shard_id)
            self.reject(
                conn, Rejection(Close.AUTHENTICATION_FAILED, "Session start limit exhausted.")
            )
            return
        bucket = shard_id % config.max_concurrency
        too_soon = rules.identify_too_soon(
            self._last_identify.get(bucket), now, config.identify_interval
        )
        if too_soon is not None:
            self.violation(conn, "identify_too_fast", shard_id=shard_id, since_previous=too_soon)
            conn.wire.send(INVALID_SESSION[False])
            return
        self._last_identify[bucket] = now
        self._session_start_remaining -= 1
        shard = self._shards[shard_id]
        if shard.session is not None:
            # A new IDENTIFY abandons the shard's old session, and with it any
            # dispatches still waiting for a RESUME: they are lost, as on Discord.
            self._end_session(shard.session)
        session = Session(secrets.token_hex(16), shard_id, data["intents"], config.replay_limit)
        self._sessions[session.id] = session
        shard.session = session
        self._attach(conn, session)
        self._record(
            self.records.identifies,
            IdentifyRecord(
                time=time.monotonic(),
                shard_id=shard_id,
                total=total,
                bucket=bucket,
                intents=data["intents"],
                connection_id=conn.id,
                session_id=session.id,
                data={k: v for k, v in data.items() if k != "token"},
            ),
        )
        ready = payloads.ready(
            bot_user_id=self.bot_user_id,
            guild_ids=[g.id for g in shard.guilds],
            session_id=session.id,
            resume_gateway_url=self.resume_url,
            shard=(shard_id, total),
            application_id=self.application_id,
            application_flags=self._application_flags,
        )
        self._emit(session, "READY", encode(ready), None)
        backlog, shard.backlog = shard.backlog, []
        for name, d_json, number, intents in backlog:
            self._emit(session, name, d_json, number, intents)

    def resume(self, conn: GatewayConnection, data: Any) -> None:
        """Reattach a session: replay what the client missed, then RESUMED."""
        rejection = rules.check_resume(data, token=self.config.token)
        if rejection is not None:
            self.reject(conn, rejection)
            return
        session = self._sessions.get(data["session_id"])
        seq = data.get("seq")
        if session is None:
            conn.wire.send(INVALID_SESSION[False])
            self._record_resume(conn, None, data["session_id"], seq, 0, ok=False)
            return
        if seq is not None and not 0 <= seq <= session.seq:
            self._record_resume(conn, session.shard_id, session.id, seq, 0, ok=False)
            conn.shard_id = session.shard_id
            self._end_session(session)
            self.reject(conn, Rejection(Close.INVALID_SEQ, "Invalid seq."))
            return
        have = seq or 0
        if have + 1 < session.oldest_replayable:
            # More was missed than the log keeps: Discord cannot replay it and
            # invalidates the session, as for one that timed out.
            self._record_resume(conn, session.shard_id, session.id, seq, 0, ok=False)
            self._end_session(session)
            conn.wire.send(INVALID_SESSION[False])
            return
        previous = session.connection
        if previous is not None and previous is not conn:
            # The client came back before the server noticed the old socket
            # was gone; that socket no longer serves the session.
            previous.session = None
            self._close(previous, 1001, "Session resumed on another connection.")
        self._attach(conn, session)
        skip = have + 1 - session.oldest_replayable
        missed = list(itertools.islice(session.log, skip, None))
        for s, (frame, name, number) in enumerate(missed, start=have + 1):
            self._send_dispatch(conn, session, s, frame, name, number)
        self._record_resume(conn, session.shard_id, session.id, seq, len(missed), ok=True)
        self._emit(session, "RESUMED", encode(payloads.resumed()), None)

    def command(self, conn: GatewayConnection, op: int, data: Any) -> None:
        """Record a gateway command; answer REQUEST_GUILD_MEMBERS with a chunk."""
        self._record(
            self.records.commands,
            CommandRecord(
                time=time.monotonic(),
                shard_id=conn.shard_id,
                connection_id=conn.id,
                op=op,
                data=data,
            ),
        )
        if op == Op.REQUEST_GUILD_MEMBERS and conn.session is not None:
            chunk = self._members_chunk(conn.session.shard_id, data)
            if chunk is None:
                self.reject(conn, Rejection(Close.DECODE_ERROR, "Error while decoding payload."))
            else:
                self._emit(conn.session, "GUILD_MEMBERS_CHUNK", encode(chunk), None)

    # -- what tests send ---------------------------------------------------

    def deliver(
        self, shard_id: int, name: str, d_json: str, number: int | None, intents: int = 0
    ) -> None:
        """Dispatch ``d_json`` as ``name`` to the shard, by Discord's delivery rules.

        A session that identified with none of ``intents`` (see
        `rules.dispatch_intents`; 0 for none needed) does not get it: it is
        recorded in ``records.withheld`` and takes no ``s``. Otherwise, with a
        session, the dispatch takes its next ``s`` and is logged for replay;
        it is also sent if a live connection serves the session. Without a
        session it waits for the shard's next READY, and its intents are
        checked then.
        """
        shard = self._shards[shard_id]
        if shard.session is None:
            shard.backlog.append((name, d_json, number, intents))
        else:
            self._emit(shard.session, name, d_json, number, intents)

    def blast(
        self,
        shard_id: int,
        count: int,
        kinds: tuple[str, ...],
        *,
        due: list[float] | None = None,
        hold: bool = False,
    ) -> Blast:
        """Queue ``count`` varied dispatches on the shard's live connection, pre-encoded.

        Each takes the session's next ``s`` and the shard's next event number
        and is logged for replay, as `deliver` does, so a RESUME after a blast
        (or during one) replays what the client missed. Everything is built,
        encoded, compressed and framed here, before the writer starts, and
        without yielding, so nothing else can slip into the compression
        stream in between.

        Args:
            due: pace the dispatches (see `WebSocket.send_blast`): one time
                per dispatch, in seconds after the start given to
                `Blast.release`, also written into its ``d`` (see
                `payloads.due_offset`).
            hold: write nothing until `Blast.release` (e.g. to measure the
                writing apart from the preparation).

        Raises:
            ConfigError: the shard has no live connection, a bad kind, or a kind
                its session's intents do not bring (guild dispatches all).
        """
        shard = self._shards[shard_id]
        session = shard.session
        conn = session.connection if session is not None else None
        if session is None or conn is None or conn.wire.closing:
            raise ConfigError(f"shard {shard_id} has no live connection to blast")
        for name in set(kinds):
            needed = self.intents_for(name, {"guild_id": shard.guilds[0].id})
            if needed and not session.intents & needed:
                raise ConfigError(
                    f"shard {shard_id} identified without an intent that brings {name} "
                    f"(any of {needed:#x}); Discord would not send it"
                )
        started = time.perf_counter()
        if shard.bodies is None:
            shard.bodies = traffic.BodyPool(traffic.VariedStream(shard_id, shard.total))
        bodies = shard.bodies.take(kinds, count)
        quote = self._quote
        log = session.log
        stream = shard.stream
        first_s = session.seq + 1
        first_number = stream.next_number
        s = session.seq
        texts = []
        for index, (name, body) in enumerate(bodies):
            number = stream.claim_number()
            s += 1
            if due is None:
                frame = f'{{"t":{quote(name)},"s":{s},"op":0,"d":{body},"{_NUMBER}":{number}}}}}'
            else:
                frame = (
                    f'{{"t":{quote(name)},"s":{s},"op":0,"d":{body},"{_NUMBER}":{number},'
                    f'"{_DUE}":{due[index]!r}}}}}'
                )
            log.append((frame, name, number))
            texts.append(frame)
        session.seq = s
        frames = conn.wire.send_blast(texts, due, hold=hold)
        return Blast(
            shard_id=shard_id,
            connection_id=conn.id,
            session_id=session.id,
            first_s=first_s,
            last_s=s,
            first_number=first_number,
            last_number=stream.next_number - 1,
            prepare_seconds=time.perf_counter() - started,
            frames=frames,
            records=self.records,
        )

    def intents_for(self, name: str, data: Any) -> int:
        """The intents that bring dispatch ``name`` with ``d = data`` (see `deliver`)."""
        return rules.dispatch_intents(name, data, bot_user_id=self.bot_user_id)

    def stream(self, shard_id: int) -> EventStream:
        """The shard's numbered event stream."""
        return self._shards[shard_id].stream

    def guild_ids(self, shard_id: int) -> list[int]:
        """The ids of the shard's guilds (READY lists them)."""
        return [g.id for g in self._shards[shard_id].guilds]

    def guilds(self, shard_id: int) -> list[payloads.GuildFixture]:
        """The shard's guild fixtures."""
        return list(self._shards[shard_id].guilds)

    def session_info(self, shard_id: int) -> SessionInfo | None:
        """The shard's current session, if it has one."""
        session = self._shards[shard_id].session
        if session is None:
            return None
        return SessionInfo(
            session_id=session.id,
            shard_id=shard_id,
            sequence=session.seq,
            connected=session.connection is not None,
        )

    # -- faults ------------------------------------------------------------

    def apply_fault(self, shard_id: int | None, fault: faults.Fault) -> int:
        """Do ``fault`` to the shard now; returns how many live connections it reached.

        ``shard_id`` may be None only for `faults.RefuseConnections`.
        """
        if isinstance(fault, faults.RefuseConnections):
            self._refusals_left += fault.count
            connections: list[GatewayConnection] = []
        else:
            if shard_id is None:
                raise ConfigError(f"{type(fault).__name__} needs a shard id")
            connections = self.live(shard_id)
            self._apply_to_shard(self._shards[shard_id], connections, fault)
        self._record(
            self.records.faults,
            FaultRecord(
                time=time.monotonic(),
                shard_id=shard_id,
                fault=fault,
                connections=len(connections),
            ),
        )
        return len(connections)

    def _apply_to_shard(
        self, shard: ShardState, connections: list[GatewayConnection], fault: faults.Fault
    ) -> None:
        if isinstance(fault, faults.CloseConnection):
            for conn in connections:
                self._close(conn, fault.code, fault.reason)
        elif isinstance(fault, faults.DropConnection):
            for conn in connections:
                self._detach(conn, end_session=False)
                conn.wire.drop()
        elif isinstance(fault, faults.Reconnect):
            for conn in connections:
                conn.wire.send(RECONNECT)
                # Discord sends nothing more on a connection it asked to leave:
                # later dispatches wait in the session for the RESUME.
                self._detach(conn, end_session=False)
        elif isinstance(fault, faults.InvalidateSession):
            if not fault.resumable and shard.session is not None:
                self._end_session(shard.session)
            for conn in connections:
                if not fault.resumable:
                    # The connection may IDENTIFY again, as after a failed RESUME.
                    conn.authenticated = False
                conn.wire.send(INVALID_SESSION[fault.resumable])
        elif isinstance(fault, faults.RequestHeartbeat):
            for conn in connections:
                conn.wire.send(HEARTBEAT_REQUEST)
        elif isinstance(fault, faults.StopHeartbeatAcks):
            for conn in connections:
                conn.acks_heartbeats = False
        elif isinstance(fault, faults.GarbageFrame):
            for conn in connections:
                if fault.kind == "zlib" and conn.wire.compressed:
                    conn.wire.send_raw(GARBAGE_ZLIB)
                else:
                    conn.wire.send(GARBAGE_TEXT)
        elif isinstance(fault, faults.UnknownOpcode):
            frame = encode({"t": None, "s": None, "op": fault.op, "d": None})
            for conn in connections:
                conn.wire.send(frame)
        elif isinstance(fault, faults.HugeDispatch):
            number = shard.stream.claim_number()
            guild = shard.guilds[number % len(shard.guilds)]
            data = payloads.guild_create(guild, size_bytes=fault.size_bytes)
            data[payloads.NUMBER_KEY] = number
            intents = self.intents_for("GUILD_CREATE", data)
            self.deliver(shard.id, "GUILD_CREATE", encode(data), number, intents)
        elif isinstance(fault, faults.Stall):
            for conn in connections:
                conn.wire.stall(fault.seconds)
        elif isinstance(fault, faults.ExpireSession):
            if shard.session is not None:
                self._end_session(shard.session)
            for conn in connections:
                if fault.code is None:
                    conn.wire.drop()
                else:
                    conn.wire.close(fault.code, fault.reason)
        else:  # pragma: no cover - the Fault union is closed
            raise TypeError(f"not a fault: {fault!r}")

    def arm(self, plan: faults.FaultPlan) -> None:
        """Count dispatches toward ``plan`` (one with ``after_dispatches``)."""
        assert plan.after_dispatches is not None and plan.shard_id is not None
        if plan.after_dispatches == 0:
            self.apply_fault(plan.shard_id, plan.fault)
        else:
            self._shards[plan.shard_id].plans.append(_ArmedPlan(plan, plan.after_dispatches))

    # -- internals ---------------------------------------------------------

    def _record(self, records: list[Any], record: Any) -> None:
        records.append(record)
        self.records.notify()

    def _record_resume(
        self,
        conn: GatewayConnection,
        shard_id: int | None,
        session_id: str,
        seq: int | None,
        replayed: int,
        *,
        ok: bool,
    ) -> None:
        self._record(
            self.records.resumes,
            ResumeRecord(
                time=time.monotonic(),
                shard_id=shard_id,
                connection_id=conn.id,
                session_id=session_id,
                seq=seq,
                replayed=replayed,
                ok=ok,
            ),
        )

    def _attach(self, conn: GatewayConnection, session: Session) -> None:
        conn.session = session
        conn.shard_id = session.shard_id
        conn.authenticated = True
        session.connection = conn

    def _detach(self, conn: GatewayConnection, *, end_session: bool) -> None:
        session = conn.session
        if session is None:
            return
        if session.connection is conn:
            session.connection = None
        elif session.connection is not None:
            # Resumed elsewhere meanwhile: this connection no longer speaks for it.
            return
        if end_session:
            self._end_session(session)

    def _end_session(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        shard = self._shards[session.shard_id]
        if shard.session is session:
            shard.session = None
        if session.connection is not None:
            session.connection.session = None
            session.connection = None

    def _close(self, conn: GatewayConnection, code: int, reason: str) -> None:
        # Detach at once, so dispatches from now on are kept for a RESUME
        # instead of being queued behind the close frame and lost.
        self._detach(conn, end_session=rules.server_close_ends_session(code))
        conn.wire.close(code, reason)

    def _quote(self, name: str) -> str:
        quoted = self._quoted_names.get(name)
        if quoted is None:
            quoted = self._quoted_names[name] = encode(name)
        return quoted

    def _emit(
        self, session: Session, name: str, d_json: str, number: int | None, intents: int = 0
    ) -> None:
        if intents and not session.intents & intents:
            self._record(
                self.records.withheld,
                WithheldRecord(
                    time=time.monotonic(),
                    shard_id=session.shard_id,
                    session_id=session.id,
                    t=name,
                    number=number,
                    intents=intents,
                ),
            )
            return
        s = session.seq + 1
        session.seq = s
        # Discord's key order puts "t" first, so clients can peek at it.
        frame = f'{{"t":{self._quote(name)},"s":{s},"op":0,"d":{d_json}}}'
        session.log.append((frame, name, number))
        conn = session.connection
        if conn is not None:
            self._send_dispatch(conn, session, s, frame, name, number)

    def _send_dispatch(
        self,
        conn: GatewayConnection,
        session: Session,
        s: int,
        frame: str,
        name: str,
        number: int | None,
    ) -> None:
        conn.wire.send(frame, (session.shard_id, conn.id, session.id, s, name, number))
        plans = self._shards[session.shard_id].plans
        if plans:
            self._count_toward_plans(session.shard_id, plans)

    def _count_toward_plans(self, shard_id: int, plans: list[_ArmedPlan]) -> None:
        due = []
        for armed in plans:
            armed.remaining -= 1
            if armed.remaining == 0:
                due.append(armed)
        for armed in due:
            plans.remove(armed)
            self.apply_fault(shard_id, armed.plan.fault)

    def on_written(self, receipts: list[Any]) -> None:
        """Record dispatches whose bytes reached a socket (the wire's callback)."""
        now = time.monotonic()
        append = self.records.dispatches.append
        for shard_id, connection_id, session_id, s, name, number in receipts:
            append(
                DispatchRecord(
                    time=now,
                    shard_id=shard_id,
                    connection_id=connection_id,
                    session_id=session_id,
                    s=s,
                    t=name,
                    number=number,
                )
            )
        self.records.notify()

    def _members_chunk(self, shard_id: int, data: Any) -> dict[str, Any] | None:
        if not isinstance(data, dict):
            return None
        try:
            guild_id = int(data["guild_id"])
            user_ids = data.get("user_ids")
            if isinstance(user_ids, str | int):
                user_ids = [user_ids]
            requested = tuple(int(u) for u in user_ids) if user_ids else None
        except (KeyError, TypeError, ValueError):
            return None
        shard_guilds = self._shards[shard_id].guilds
        guild = next((g for g in shard_guilds if g.id == guild_id), None)
        if guild is None:
            # Not one of the shard's guilds: Discord would answer with what it
            # has; a same-shaped guild under the asked-for id keeps tests simple.
            guild = dataclasses.replace(shard_guilds[0], id=guild_id)
        members = guild.member_ids
        not_found: list[str] = []
        if requested is not None:
            not_found = [str(u) for u in requested if u not in members]
            members = tuple(u for u in requested if u in members)
        nonce = data.get("nonce")
        query = data.get("query")
        limit = data.get("limit")
        return payloads.guild_members_chunk(
            guild,
            members,
            nonce=nonce if isinstance(nonce, str) else None,
            query=query if isinstance(query, str) else None,
            limit=limit if isinstance(limit, int) else 0,
            presences=data.get("presences") is True,
            not_found=not_found,
        )
