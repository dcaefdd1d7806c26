"""The simulated gateway's state: shards, sessions, and where each dispatch goes.

Discord keeps a session per identified shard, numbers that session's
dispatches with ``s``, and replays the ones a client missed when it resumes.
This module holds exactly that bookkeeping — which connection serves which
session, each session's log, events waiting for a shard that never
identified — and answers IDENTIFY, RESUME and the other client messages.
Decoding client messages and deciding what they may do is `connection`'s
job; sockets are `wire`'s. Blasts (pre-encoded bulk sends) are `blast`'s and
fault application is `apply_faults`'s: both act on the sessions kept here.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ujson

from gcluster.intents import Intents

from . import payloads, rules
from .records import (
    CloseRecord,
    CommandRecord,
    ConnectionRecord,
    DispatchRecord,
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
from .wire import COMPRESSIONS

if TYPE_CHECKING:
    from .connection import GatewayConnection
    from .traffic import BodyPool
    from .wire import Ending

__all__ = ["Gateway", "GatewayConfig", "SessionInfo", "encode"]

# Privileged intent bit -> the application flag that allows it (GATEWAY_*).
_INTENT_FLAGS = {1 << 1: 1 << 14, 1 << 8: 1 << 12, 1 << 15: 1 << 18}

HEARTBEAT_ACK = '{"t":null,"s":null,"op":11,"d":null}'
INVALID_SESSION = {
    True: '{"t":null,"s":null,"op":9,"d":true}',
    False: '{"t":null,"s":null,"op":9,"d":false}',
}


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
    members_per_chunk: int = 1000
    """Members in one GUILD_MEMBERS_CHUNK (Discord: up to 1000)."""
    members_window: float = rules.MEMBERS_WINDOW
    """Seconds between two requests for all of a guild's members; 0: no limit."""
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


class _Countdown:
    """Something to do after a number of dispatches to a shard (`Gateway.after_dispatches`)."""

    __slots__ = ("action", "remaining")

    def __init__(self, remaining: int, action: Callable[[], object]) -> None:
        self.remaining = remaining
        self.action = action


class ShardState:
    """Everything the gateway keeps per shard id."""

    __slots__ = ("backlog", "bodies", "countdowns", "guilds", "id", "session", "stream", "total")

    def __init__(self, shard_id: int, total: int, guilds_per_shard: int) -> None:
        self.id = shard_id
        self.total = total
        # Varied bodies for blasts (`blast.queue_blast`), built on the first
        # one (it takes a moment).
        self.bodies: BodyPool | None = None
        self.guilds = payloads.guild_fixtures(shard_id, total, guilds_per_shard)
        self.stream = EventStream(self.guilds, payloads.Snowflakes(worker=shard_id % 32))
        self.session: Session | None = None
        # Dispatches for a shard without a session, sent after its next READY,
        # as (t, d, number, the intents that bring it).
        self.backlog: list[tuple[str, str, int | None, int]] = []
        # What is due after so many more dispatches (fault plans among them).
        self.countdowns: list[_Countdown] = []


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
        # Guild -> when its members were last all asked for (time.monotonic()).
        self._full_member_requests: dict[int, float] = {}

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
        self.record(
            self.records.refusals,
            RefusalRecord(time=time.monotonic(), path=path, remote_port=remote_port, status=503),
        )
        return False

    def open(self, conn: GatewayConnection, record: ConnectionRecord) -> None:
        """Register a new websocket and greet it (HELLO), or reject its URL."""
        self._connections[conn.id] = conn
        self.record(self.records.connections, record)
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
        self.detach(conn, end_session=ends_session)
        self.record(
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
        self.server_close(conn, rejection.code, rejection.reason)

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
        self.record(
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
        self.record(
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
            self.end_session(shard.session)
        session = Session(secrets.token_hex(16), shard_id, data["intents"], config.replay_limit)
        self._sessions[session.id] = session
        shard.session = session
        self._attach(conn, session)
        self.record(
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
            self.end_session(session)
            self.reject(conn, Rejection(Close.INVALID_SEQ, "Invalid seq."))
            return
        have = seq or 0
        if have + 1 < session.oldest_replayable:
            # More was missed than the log keeps: Discord cannot replay it and
            # invalidates the session, as for one that timed out.
            self._record_resume(conn, session.shard_id, session.id, seq, 0, ok=False)
            self.end_session(session)
            conn.wire.send(INVALID_SESSION[False])
            return
        previous = session.connection
        if previous is not None and previous is not conn:
            # The client came back before the server noticed the old socket
            # was gone; that socket no longer serves the session.
            previous.session = None
            self.server_close(previous, 1001, "Session resumed on another connection.")
        self._attach(conn, session)
        skip = have + 1 - session.oldest_replayable
        missed = list(itertools.islice(session.log, skip, None))
        for s, (frame, name, number) in enumerate(missed, start=have + 1):
            self._send_dispatch(conn, session, s, frame, name, number)
        self._record_resume(conn, session.shard_id, session.id, seq, len(missed), ok=True)
        self._emit(session, "RESUMED", encode(payloads.resumed()), None)

    def command(self, conn: GatewayConnection, op: int, data: Any) -> None:
        """Record a gateway command; answer REQUEST_GUILD_MEMBERS and REQUEST_CHANNEL_INFO."""
        self.record(
            self.records.commands,
            CommandRecord(
                time=time.monotonic(),
                shard_id=conn.shard_id,
                connection_id=conn.id,
                op=op,
                data=data,
            ),
        )
        session = conn.session
        if session is None:
            return
        if op == Op.REQUEST_GUILD_MEMBERS:
            self._request_members(conn, session, data)
        elif op == Op.REQUEST_CHANNEL_INFO:
            info = self._channel_info(session.shard_id, data)
            if info is None:
                self.reject(conn, Rejection(Close.DECODE_ERROR, "Error while decoding payload."))
            else:
                self._emit(session, "CHANNEL_INFO", encode(info), None)

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

    # -- what blasts and faults act on ------------------------------------

    def shard(self, shard_id: int) -> ShardState:
        """Everything kept for the shard: its session, stream, guilds and backlog."""
        return self._shards[shard_id]

    def record(self, records: list[Any], record: Any) -> None:
        """Append ``record`` to one of ``self.records``' lists and wake its waiters."""
        records.append(record)
        self.records.notify()

    def quote(self, name: str) -> str:
        """``name`` as a JSON string, for a dispatch's ``t`` (kept, as names recur)."""
        quoted = self._quoted_names.get(name)
        if quoted is None:
            quoted = self._quoted_names[name] = encode(name)
        return quoted

    def detach(self, conn: GatewayConnection, *, end_session: bool) -> None:
        """Stop ``conn`` serving its session; later dispatches wait there for a RESUME."""
        session = conn.session
        if session is None:
            return
        if session.connection is conn:
            session.connection = None
        elif session.connection is not None:
            # Resumed elsewhere meanwhile: this connection no longer speaks for it.
            return
        if end_session:
            self.end_session(session)

    def end_session(self, session: Session) -> None:
        """Forget ``session``: a RESUME of it fails, its waiting dispatches are lost."""
        self._sessions.pop(session.id, None)
        shard = self._shards[session.shard_id]
        if shard.session is session:
            shard.session = None
        if session.connection is not None:
            session.connection.session = None
            session.connection = None

    def server_close(self, conn: GatewayConnection, code: int, reason: str) -> None:
        """Close ``conn`` from the gateway's side; the codes Discord marks so end the session."""
        # Detach at once, so dispatches from now on are kept for a RESUME
        # instead of being queued behind the close frame and lost.
        self.detach(conn, end_session=rules.server_close_ends_session(code))
        conn.wire.close(code, reason)

    def refuse_connections(self, count: int) -> None:
        """Answer the next ``count`` websocket upgrades with 503 (see `admit`)."""
        self._refusals_left += count

    def after_dispatches(self, shard_id: int, count: int, action: Callable[[], object]) -> None:
        """Call ``action()`` right after ``count`` (at least 1) more dispatches
        were sent to the shard's live connection, replayed ones included."""
        self._shards[shard_id].countdowns.append(_Countdown(count, action))

    # -- internals ---------------------------------------------------------

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
        self.record(
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

    def _emit(
        self, session: Session, name: str, d_json: str, number: int | None, intents: int = 0
    ) -> None:
        if intents and not session.intents & intents:
            self.record(
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
        frame = f'{{"t":{self.quote(name)},"s":{s},"op":0,"d":{d_json}}}'
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
        countdowns = self._shards[session.shard_id].countdowns
        if countdowns:
            self._count_down(countdowns)

    def _count_down(self, countdowns: list[_Countdown]) -> None:
        due = []
        for countdown in countdowns:
            countdown.remaining -= 1
            if countdown.remaining == 0:
                due.append(countdown)
        for countdown in due:
            countdowns.remove(countdown)
            countdown.action()

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

    def _request_members(self, conn: GatewayConnection, session: Session, data: Any) -> None:
        """Answer op 8 as Discord does: chunks, RATE_LIMITED, or nothing."""
        chunks = self._members_chunks(session, data)
        if chunks is None:
            self.reject(conn, Rejection(Close.DECODE_ERROR, "Error while decoding payload."))
            return
        if data.get("user_ids") is None and data.get("query") and data.get("limit") == 0:
            # Discord answers a non-empty query with limit 0 with nothing at
            # all (discord-api-docs#662): nor does the simulator.
            return
        if rules.is_full_member_request(data):
            # Discord documents GUILD_MEMBERS as required here but not what it
            # does without it (trackers report silence); the simulator answers,
            # as it always has, and request_members refuses such a request unsent.
            guild_id = int(data["guild_id"])
            now = time.monotonic()
            retry_after = rules.members_retry_after(
                self._full_member_requests.get(guild_id), now, self.config.members_window
            )
            if retry_after is not None:
                meta: dict[str, Any] = {"guild_id": str(guild_id)}
                if isinstance(data.get("nonce"), str):
                    meta["nonce"] = data["nonce"]
                limited = {"opcode": Op.REQUEST_GUILD_MEMBERS, "retry_after": retry_after}
                self._emit(session, "RATE_LIMITED", encode({**limited, "meta": meta}), None)
                return
            self._full_member_requests[guild_id] = now
        for chunk in chunks:
            self._emit(session, "GUILD_MEMBERS_CHUNK", encode(chunk), None)

    def _channel_info(self, shard_id: int, data: Any) -> dict[str, Any] | None:
        if not isinstance(data, dict):
            return None
        fields = data.get("fields")
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            return None
        try:
            guild_id = int(data["guild_id"])
        except (KeyError, TypeError, ValueError):
            return None
        return payloads.channel_info(self._guild(shard_id, guild_id), fields)

    def _guild(self, shard_id: int, guild_id: int) -> payloads.GuildFixture:
        shard_guilds = self._shards[shard_id].guilds
        guild = next((g for g in shard_guilds if g.id == guild_id), None)
        if guild is None:
            # Not one of the shard's guilds: Discord would answer with what it
            # has; a same-shaped guild under the asked-for id keeps tests simple.
            guild = dataclasses.replace(shard_guilds[0], id=guild_id)
        return guild

    def _members_chunks(self, session: Session, data: Any) -> list[dict[str, Any]] | None:
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
        guild = self._guild(session.shard_id, guild_id)
        members = guild.member_ids
        not_found: list[str] = []
        if requested is not None:
            not_found = [str(u) for u in requested if u not in members]
            members = tuple(u for u in requested if u in members)
        nonce = data.get("nonce")
        query = data.get("query")
        limit = data.get("limit")
        return payloads.guild_members_chunks(
            guild,
            members,
            per_chunk=self.config.members_per_chunk,
            nonce=nonce if isinstance(nonce, str) else None,
            query=query if isinstance(query, str) else None,
            limit=limit if isinstance(limit, int) else 0,
            # Without GUILD_PRESENCES, Discord says, presences "will always be false".
            presences=data.get("presences") is True
            and bool(session.intents & Intents.GUILD_PRESENCES),
            not_found=not_found,
        )
