"""A shard: the greenlets that keep one gateway connection alive.

`ShardProtocol` decides; this module does the I/O it asks for. Each shard runs
one greenlet for its connection's life (connect, read, reconnect), which is
the only one that reads the socket, plus a heartbeat greenlet per connection
that only sends, and a short-lived one that waits for the identify queue so
the reader never stops reading (a reader blocked on the queue would leave
heartbeat ACKs unread and call a healthy connection a zombie).

Received messages go: socket → frames → zlib-stream inflater → peek at the
dispatch name (events filtered out are dropped undecoded) → ujson → protocol
→ the event queue the shard was given.

Reconnects back off only after failed attempts: a connection that could not
be opened, one that ended before READY or RESUMED, or one lost within a second
of it. A session that got going reconnects at once when it ends (op 7, a
resumable close, a dropped socket), so Discord's routine reconnects never cost
the backoff of an outage.
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gevent
import ujson
from gevent.event import Event as Flag

from gcluster import hubwatch
from gcluster._json import JsonReady
from gcluster._token import Token
from gcluster.backoff import Backoff
from gcluster.commands import Command, encode
from gcluster.delivery import EventQueue, Loads, RawDispatch
from gcluster.errors import (
    ClusterNotUp,
    CommandSendingError,
    ConfigError,
    ConnectionFailed,
    GClusterError,
    InvalidState,
    QueueError,
    SessionStartLimitExhausted,
)
from gcluster.events import Event, EventTypeFlags
from gcluster.frames import CLOSE_MESSAGE_TOO_BIG, DEFAULT_MAX_MESSAGE, OP_BINARY, OP_TEXT
from gcluster.inflate import MessageTooLarge, inflater_for, resolve_compression
from gcluster.members import MemberRequests
from gcluster.message import Message, MessageKind
from gcluster.protocol import (
    Action,
    CloseCode,
    Deliver,
    DeliverRaw,
    Fail,
    Heartbeat,
    Identify,
    Latency,
    Offer,
    Opcode,
    ReconnectAction,
    ResumeSession,
    Send,
    ShardProtocol,
    Skip,
    Stage,
)
from gcluster.proxy import Proxy, check_proxy_option
from gcluster.queue import NoOpQueue, Queue
from gcluster.ratelimit import CommandRatelimiter
from gcluster.sessions import SessionMark
from gcluster.stats import ShardStats
from gcluster.transport import Connection, ConnectionClosed

__all__ = ["Information", "Shard"]

log = logging.getLogger(__name__)

# Longest a reader keeps the hub while its socket keeps having data (seconds).
_TIME_SLICE = 0.001
# A session lost sooner than this after READY/RESUMED counts as a failed
# attempt, so a gateway that accepts and drops at once is still backed off.
_SHORT_SESSION = 1.0


def session_hint(session_id: str | None) -> str:
    """A session id shortened for logs: enough to tell sessions apart, not to RESUME one."""
    if not session_id:
        return "none"
    return session_id[: min(6, len(session_id) // 2)] + "…"


@dataclass(frozen=True, slots=True)
class Information(JsonReady):
    """A snapshot of one shard, as `Cluster.info()` returns it.

    `to_dict()` gives it as a dict `json.dumps` takes as it is: stage as its
    value ("connected"), latency as a dict, ratelimit as a list, error as its
    message.

    Attributes:
        id: the shard id.
        stage: where its connection is.
        latency: heartbeat round trips of the current connection.
        session_id, sequence, resume_url: the session it would resume.
        ratelimit: `(commands left, seconds until refilled)`, None when unlimited.
        error: what stopped it for good once stage is FATALLY_CLOSED: the
            fatal close's `GatewayClosedError`, or `SessionStartLimitExhausted`.
    """

    id: int
    stage: Stage
    latency: Latency
    session_id: str | None
    sequence: int | None
    resume_url: str | None
    ratelimit: tuple[int, float] | None
    error: GClusterError | None


class Shard:
    """One gateway connection and its reconnects.

    Events are put as `(shard_id, Event)` into `events` (a gevent queue shared
    by a cluster); a shard built without one owns its queue and `events()`
    iterates it.

    Args:
        shard_id, total: which shard of how many.
        token: the bot token.
        intents: gateway intents.
        gateway_url: from GET /gateway/bot (e.g. "wss://gateway.discord.gg").
        event_types: which events to deliver.
        session: resume this session instead of identifying.
        queue: the identify queue; NoOpQueue when None.
        events: where to put events.
        compression: transport compression: True or "zlib-stream", "zstd-stream",
            "best", or False/None for none.
        connect_timeout: seconds for TCP + TLS + handshake, and for HELLO after it.
        max_message_size: the largest message, compressed or inflated, in
            bytes; a bigger one closes the connection with 1009 (resumable).
        ssl_context: a gevent SSL context for wss (verifying by default).
        proxy: a `Proxy` or http:// URL to tunnel through, False for none, or None to
            follow HTTPS_PROXY/NO_PROXY (read at each connection).
        on_fatal: called with the shard once it is fatally closed.
        ratelimit_payloads: hold commands to 120 per 60 s per connection.
        loads: the JSON decoder of a shard that owns its queue (a shared
            queue, given as `events`, brings its own).
        session_marks: put a `SessionMark` in `events` before each new session's
            events (for a cluster that saves consumed sessions).
        member_requests: the cluster's waiting member requests: offered every
            GUILD_MEMBERS_CHUNK and RATE_LIMITED dispatch (even filtered-out
            ones) while one waits on this shard, and told when the session ends.
        protocol_options: passed to `ShardProtocol` (properties, large_threshold, presence).

    Raises:
        ConfigError: `session` is of another shard id or total.
    """

    def __init__(
        self,
        shard_id: int,
        total: int,
        token: str | Token,
        intents: int,
        *,
        gateway_url: str,
        event_types: EventTypeFlags = EventTypeFlags.ALL,
        session: ResumeSession | None = None,
        queue: Queue | None = None,
        events: EventQueue | None = None,
        compression: bool | str | None = "zlib-stream",
        connect_timeout: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        ssl_context: Any = None,
        proxy: Proxy | str | bool | None = None,
        on_fatal: Callable[[Shard], None] | None = None,
        ratelimit_payloads: bool = True,
        session_marks: bool = False,
        member_requests: MemberRequests | None = None,
        rng: Callable[[], float] = random.random,
        loads: Loads = ujson.loads,
        **protocol_options: Any,
    ) -> None:
        if session is not None:
            why = session.mismatch(shard_id, total)
            if why is not None:
                raise ConfigError(f"shard {shard_id} cannot resume this session: {why}")
        self.id = shard_id
        self.total = total
        self._token = Token(token)
        self._gateway_url = gateway_url
        self._queue: Queue = queue if queue is not None else NoOpQueue()
        self._owns_events = events is None
        self._events: EventQueue = events if events is not None else EventQueue(loads)
        self._connect_timeout = connect_timeout
        self._max_message = max_message_size
        self._ssl_context = ssl_context
        try:
            self._proxy = check_proxy_option(proxy)
        except ValueError as err:  # never holds the credentials
            raise ConfigError(str(err)) from None
        self._on_fatal = on_fatal
        self._ratelimiter = CommandRatelimiter() if ratelimit_payloads else None
        self._session_marks = session_marks
        # The latest session as it was at its READY (what a new session's
        # saved state starts from; see sessions.ConsumedSessions).
        self.started_session: ResumeSession | None = session
        self._marked_session: str | None = session.session_id if session is not None else None
        self._member_requests = member_requests
        # The session member requests were last told about.
        self._requests_session: str | None = session.session_id if session is not None else None
        self._rng = rng
        self.stats = ShardStats()
        self._protocol = ShardProtocol(
            shard_id,
            total,
            self._token,
            intents,
            event_types=event_types,
            session=session,
            compression=resolve_compression(compression),
            rng=rng,
            loads=self._events.loads,
            stats=self.stats,
            offered=(
                EventTypeFlags.GUILD_MEMBERS_CHUNK | EventTypeFlags.RATE_LIMITED
                if member_requests is not None
                else EventTypeFlags(0)
            ),
            **protocol_options,
        )

        self._runner: gevent.Greenlet | None = None
        self._helpers: list[gevent.Greenlet] = []
        self._conn: Connection | None = None
        # (code, reason, cause) of a close this side sent; tells the reader why it ended.
        self._client_close: tuple[int, str, str] | None = None
        self._reconnect_delay = 0.0
        self._connected_at: float | None = None  # READY/RESUMED on this connection
        # The session RESUME was sent for on this connection (tells RESUMED from READY).
        self._resuming: ResumeSession | None = None
        # Why the last attempt or connection failed, for errors like up()'s timeout.
        self.last_failure: str | None = None
        self._stop = Flag()  # down() was called or the shard failed
        self._started = Flag()  # IDENTIFY or RESUME sent (or the shard failed)
        self._ready = Flag()  # connected: READY or RESUMED received (or the shard failed)
        self._stopped = Flag()
        self._shut_down = False  # down() was called: no restart

    def __repr__(self) -> str:
        return f"<Shard {self.id}/{self.total} {self._protocol.stage.value}>"

    # --- life ----------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; returns at once."""
        if self._runner is None:
            self._runner = gevent.spawn(self._run)
            self._runner.name = f"gcluster-shard-{self.id}"

    def wait_until_started(self, timeout: float | None = None) -> bool:
        """Wait until IDENTIFY or RESUME was sent, or the shard failed."""
        return bool(self._started.wait(timeout))

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Wait for READY or RESUMED; False on timeout or when the shard failed."""
        return bool(self._ready.wait(timeout)) and self._protocol.stage is Stage.CONNECTED

    def down(self, *, resumable: bool = False, timeout: float = 5.0) -> ResumeSession | None:
        """Close the connection and stop the shard's greenlets.

        Args:
            resumable: close with a code that keeps the session, and return it.
            timeout: seconds to wait for the greenlets to finish before killing them.

        Returns:
            the session to resume later, when `resumable` and the shard had one.
        """
        self._shut_down = True
        if self._stop.is_set() and self._stopped.is_set():
            return self._protocol.session if resumable else None
        self._stop.set()
        session = self._protocol.session if resumable else None
        code = self._protocol.shutting_down(resumable=resumable)
        runner = self._runner
        if self._conn is not None:
            # Let the reader see the close, so SHARD_DISCONNECTED is delivered.
            self._close_connection(code, "shard stopped", "shutdown")
            if runner is not None:
                runner.join(timeout)
        # Not connected (connecting, backing off, waiting): nothing to lose.
        if runner is not None and not runner.dead:
            runner.kill(block=True, timeout=timeout)
        self._kill_helpers()
        self._finish()
        # Wake whoever waits for READY: it will not come (wait_until_ready is False).
        self._started.set()
        self._ready.set()
        return session

    def restart(self) -> None:
        """Reconnect now: RESUME when the session allows it, else IDENTIFY anew.

        Also brings back a shard that was fatally closed (after the cause, a
        token or intents, was fixed on Discord's side).

        Raises:
            InvalidState: the shard was shut down with `down()`.
        """
        if self._shut_down:
            raise InvalidState(f"shard {self.id} was shut down; build a new cluster")
        runner = self._runner
        if runner is not None and not runner.dead and self._conn is not None:
            # The normal reconnect path: a resumable close, then RESUME.
            self._close_connection(CloseCode.RESUMABLE, "restart requested", "restart")
            return
        if runner is not None and not runner.dead:
            # Between connections (backing off, connecting): skip the rest of the wait.
            runner.kill(block=True)
            if self._protocol.stage not in (Stage.DISCONNECTED, Stage.FATALLY_CLOSED):
                # Killed while connecting: that attempt is over.
                self._handle(self._protocol.closed(None, "restart requested", by_client=True))
            self._handle(self._protocol.reconnecting())
        # Not running (never started, or stopped by a fatal close): start over.
        self._protocol.revive()
        self._stop = Flag()
        self._stopped = Flag()
        self._started.clear()
        self._ready.clear()
        self._runner = None
        self.start()

    @property
    def error(self) -> GClusterError | None:
        return self._protocol.error

    @property
    def stage(self) -> Stage:
        return self._protocol.stage

    @property
    def session(self) -> ResumeSession | None:
        return self._protocol.session

    def info(self) -> Information:
        p = self._protocol
        return Information(
            id=self.id,
            stage=p.stage,
            latency=p.latency,
            session_id=p.session_id,
            sequence=p.sequence,
            resume_url=p.resume_url,
            ratelimit=(
                (self._ratelimiter.remaining(), self._ratelimiter.refill_in())
                if self._ratelimiter is not None
                else None
            ),
            error=p.error,
        )

    def events(self) -> Iterator[tuple[int, Event]]:
        """Iterate this shard's events (only for a shard that owns its queue).

        Ends after `down()` or a fatal close (see `error`) once the events
        queued before it are read.

        Raises:
            InvalidState: the shard's events go to a shared queue (a cluster's).
            ClusterNotUp: the shard was never started (nor shut down), so no
                event would ever arrive.
        """
        if not self._owns_events:
            raise InvalidState("this shard's events go to a shared queue; read that instead")
        if self._runner is None and not self._stopped.is_set():
            raise ClusterNotUp(
                f"shard {self.id} was never started, so no event would arrive: "
                "call shard.start() first"
            )
        events = self._events
        while True:
            item = events.next_event()
            if item is None:
                return
            yield item

    # --- sending ---------------------------------------------------------------

    def command(
        self, command: Command | Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        """Send a gateway command (validated, at most 4096 bytes).

        Waits cooperatively for a rate-limit slot first.

        Args:
            timeout: seconds to wait for a slot; None waits as long as it takes.

        Raises:
            InvalidCommand / PayloadTooLarge: the command is not valid.
            CommandSendingError: not connected, no slot within `timeout`, or the send failed.
        """
        self._send_raw(encode(command), timeout)

    def command_raw(self, payload: bytes | str, *, timeout: float | None = None) -> None:
        self._send_raw(payload.encode() if isinstance(payload, str) else bytes(payload), timeout)

    def send(self, message: Message) -> None:
        """Send a raw websocket message; a close frame makes the shard reconnect."""
        if message.kind is MessageKind.CLOSE:
            assert message.code is not None
            if self._conn is None:
                raise CommandSendingError(f"shard {self.id} is not connected", shard_id=self.id)
            self._close_connection(message.code, message.reason, "user_close")
            return
        conn = self._connection_for_send()
        try:
            if message.kind is MessageKind.TEXT:
                conn.send(message.payload)
            else:
                conn.send_binary(message.payload)
        except ConnectionClosed as err:
            raise CommandSendingError(f"shard {self.id}: {err}", shard_id=self.id) from err

    def _send_raw(self, payload: bytes, timeout: float | None) -> None:
        self._connection_for_send()
        limiter = self._ratelimiter
        if limiter is not None and limiter.remaining() == 0:
            started = time.monotonic()
            acquired = limiter.acquire(timeout)
            self.stats.ratelimit_waits += 1
            self.stats.ratelimit_wait_seconds += time.monotonic() - started
        else:
            acquired = limiter is None or limiter.acquire(timeout)
        if not acquired:
            raise CommandSendingError(
                f"shard {self.id}: no rate-limit slot within {timeout} s", shard_id=self.id
            )
        # The wait may have outlived the connection: look again.
        conn = self._connection_for_send()
        try:
            conn.send(payload)
        except ConnectionClosed as err:
            raise CommandSendingError(f"shard {self.id}: {err}", shard_id=self.id) from err

    def _connection_for_send(self) -> Connection:
        conn = self._conn
        stage = self._protocol.stage
        if conn is None or conn.closed or stage is not Stage.CONNECTED:
            raise CommandSendingError(
                f"shard {self.id} is not connected (stage {stage.value})", shard_id=self.id
            )
        return conn

    # --- the connection loop -------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff()
        try:
            while not self._stop.is_set():
                url = self._protocol.url(self._gateway_url)
                resume_url = self._protocol.resume_url
                via_resume_url = resume_url is not None and url.startswith(resume_url.rstrip("/"))
                self._handle(self._protocol.connecting(url))
                try:
                    conn = Connection.open(
                        url,
                        timeout=self._connect_timeout,
                        ssl_context=self._ssl_context,
                        proxy=self._proxy,
                        max_message=self._max_message,
                        redact=self._token.redact,
                    )
                except ConnectionFailed as err:
                    self.last_failure = str(err)  # redacted by the transport
                    if via_resume_url:
                        self._abandon_resume_url()
                    self._handle(self._protocol.closed(None, "connect failed"))
                    backoff = backoff.increment()
                    delay = backoff.delay(self._rng)
                    log.warning(
                        "shard %d: connect failed: %s; retrying in %.1f s",
                        self.id,
                        err,
                        delay,
                        extra={"shard": self.id, "step": "connect_failed", "retry_in": delay},
                    )
                    self._pause(delay)
                    continue
                if self._stop.is_set():
                    conn.close(CloseCode.NORMAL, "shard stopped")
                    break
                self._conn = conn
                if self._ratelimiter is not None:
                    self._ratelimiter.reset()
                self._client_close = None
                self._reconnect_delay = 0.0
                self._connected_at = None
                self._resuming = None
                failure_before = self.last_failure
                self._spawn_helper(self._await_hello, conn)
                try:
                    code, reason, by_client, cause = self._read(conn)
                except Exception:
                    # A bug, not a gateway condition: keep the shard alive and say so.
                    log.exception("shard %d: reader failed; reconnecting", self.id)
                    self._close_connection(CloseCode.RESUMABLE, "reader failed", "reader_error")
                    code, reason, by_client, cause = (
                        CloseCode.RESUMABLE,
                        "reader failed",
                        True,
                        "reader_error",
                    )
                self._kill_helpers()
                self._conn = None
                self._ready.clear()
                self.stats.close_codes[code] += 1
                # (Set by _handle while reading; the annotation keeps mypy from
                # assuming the None assigned before the read.)
                connected_at: float | None = self._connected_at
                self._connected_at = None
                if connected_at is None and self.last_failure is failure_before:
                    # Nothing more telling was noted while it lasted.
                    self.last_failure = (
                        f"the connection ended before READY or RESUMED "
                        f"({'no HELLO' if cause == 'no_hello' else f'close code {code}'}"
                        f"{': ' + reason if reason else ''})"
                    )
                    if via_resume_url and cause == "no_hello":
                        self._abandon_resume_url()
                self._handle(self._protocol.closed(code, reason, by_client=by_client))
                closed = (code, "client" if by_client else "gateway", cause, reason)
                if self._protocol.stage is Stage.FATALLY_CLOSED or self._stop.is_set():
                    fatal = self._protocol.stage is Stage.FATALLY_CLOSED
                    self._log_disconnected(*closed, "stopped for good" if fatal else "stopped")
                    break
                kind = "resume" if self._protocol.session is not None else "identify"
                self.stats.reconnects[(kind, cause)] += 1
                if connected_at is not None and time.monotonic() - connected_at >= _SHORT_SESSION:
                    backoff = backoff.reset()  # a session that got going: back at once
                else:
                    backoff = backoff.increment()  # a failed attempt
                delay = max(self._reconnect_delay, backoff.delay(self._rng))
                self._log_disconnected(*closed, f"will {kind} in {delay:.1f} s")
                self._handle(self._protocol.reconnecting())
                self._pause(delay)
        finally:
            self._conn = None
            self._kill_helpers()
            self._started.set()
            self._ready.set()
            if self._protocol.stage is Stage.FATALLY_CLOSED:
                self._finish()
                if self._on_fatal is not None:
                    self._on_fatal(self)

    def _pause(self, seconds: float) -> None:
        if seconds > 0 and not self._stop.is_set():
            gevent.sleep(seconds)

    def _read(self, conn: Connection) -> tuple[int | None, str, bool, str]:
        """Read until the connection ends; return its close code, reason, who closed, and why."""
        inflater = inflater_for(self._protocol.compression, self._max_message)
        receive = self._protocol.receive
        put = self._events.put
        # The hub loop's clock only moves when the loop goes round, which it
        # can only do while this greenlet waits: a changed value means the
        # last receive blocked and everything else has had its turn.
        loop = gevent.get_hub().loop
        hub_clock = loop.now()
        slice_started = time.monotonic()
        while True:
            try:
                messages = conn.receive()
            except ConnectionClosed as closed:
                if closed.failed:
                    # The peer broke the websocket rules, or sent too much.
                    too_big = closed.code == CLOSE_MESSAGE_TOO_BIG
                    self._failed_connection(closed.code, closed.reason, too_big)
                    cause = "message_too_large" if too_big else "protocol_error"
                    return closed.code, closed.reason, True, cause
                if self._client_close is not None:
                    code, reason, cause = self._client_close
                    return code, reason, True, cause
                cause = "dropped" if closed.code is None else "gateway_close"
                return closed.code, closed.reason, False, cause
            now = time.monotonic()
            for opcode, payload in messages:
                if opcode == OP_BINARY and inflater is not None:
                    try:
                        whole = inflater.feed(payload)
                    except MessageTooLarge as err:
                        self._failed_connection(CLOSE_MESSAGE_TOO_BIG, str(err), True)
                        self._close_connection(CLOSE_MESSAGE_TOO_BIG, str(err), "message_too_large")
                        break
                    except zlib.error as err:
                        self._corrupt_stream(str(err))
                        break
                    if whole is None:
                        continue
                    payload = whole
                elif opcode not in (OP_TEXT, OP_BINARY):
                    continue
                result = receive(payload, now)
                # (A class check, not isinstance: the hot path, and a list is never one.)
                if result.__class__ is RawDispatch:
                    put(result)
                elif result is not None:
                    # Even no actions at all (READY with READY and SHARD_CONNECTED
                    # filtered out) may be a new stage that waiters must hear of.
                    self._handle(result)  # type: ignore[arg-type]
            # A socket that always has data never blocks, so the reader would
            # keep the hub from the consumer, the other shards and the
            # heartbeats. Yielding after every read would cost a trip through
            # the hub per read at moderate rates, where the next receive
            # blocks (and so yields) anyway: yield once a time slice is used up
            # without the hub having run.
            clock = loop.now()
            if clock != hub_clock:
                hub_clock = clock
                slice_started = now
            elif now - slice_started >= _TIME_SLICE:
                gevent.sleep(0)
                hub_clock = loop.now()
                slice_started = time.monotonic()

    def _skip(self, skip: Skip) -> None:
        # Counted by the protocol; only logged here.
        if skip.what == "duplicate":
            log.debug("shard %d: %s; skipped", self.id, skip.reason)
            return
        # Rate-limited, and the same limit as a dispatch events() cannot decode.
        self._events.skips.error(self.id, self._token.redact(skip.reason), skip.what)

    def _failed_connection(self, code: int | None, reason: str, too_big: bool) -> None:
        if too_big:
            log.warning(
                "shard %d: %s (max_message_size is %d bytes); closing with %s to resume",
                self.id,
                reason,
                self._max_message,
                code,
            )
        else:
            log.warning("shard %d: the gateway broke the websocket rules: %s", self.id, reason)
        self.last_failure = reason

    def _corrupt_stream(self, error: str) -> None:
        # The stream's state is lost with this message: only a new connection
        # (and a new stream) can go on, resuming where this one stopped.
        log.warning("shard %d: corrupt compressed stream (%s); resuming", self.id, error)
        self.last_failure = f"corrupt compressed stream: {error}"
        self._close_connection(CloseCode.RESUMABLE, "corrupt stream", "corrupt_stream")

    def _abandon_resume_url(self) -> None:
        if self._protocol.abandon_resume_url():
            log.warning(
                "shard %d: the resume URL failed; resuming on the main gateway instead", self.id
            )

    # --- lifecycle log lines -----------------------------------------------------
    # One INFO line per step of a session, with the facts as `extra` fields
    # for structured logs (never the token, never the whole session id).

    def _log_resuming(self) -> None:
        session = self._resuming
        log.info(
            "shard %d: resuming session %s at sequence %s",
            self.id,
            session_hint(session.session_id if session else None),
            session.sequence if session else None,
            extra={
                "shard": self.id,
                "step": "resuming",
                "session": session_hint(session.session_id if session else None),
                "sequence": session.sequence if session else None,
            },
        )

    def _log_connected(self) -> None:
        session = session_hint(self._protocol.session_id)
        if self._resuming is not None:
            log.info(
                "shard %d: resumed session %s (replayed from sequence %d)",
                self.id,
                session,
                self._resuming.sequence,
                extra={
                    "shard": self.id,
                    "step": "resumed",
                    "session": session,
                    "sequence": self._resuming.sequence,
                },
            )
        else:
            log.info(
                "shard %d: ready: session %s",
                self.id,
                session,
                extra={"shard": self.id, "step": "ready", "session": session},
            )

    def _log_disconnected(
        self, code: int | None, by: str, cause: str, reason: str, then: str
    ) -> None:
        # The reason is the peer's text: repr keeps a hostile one on one line.
        log.info(
            "shard %d: disconnected code=%s by=%s cause=%s reason=%r; %s",
            self.id,
            code,
            by,
            cause,
            reason,
            then,
            extra={
                "shard": self.id,
                "step": "disconnected",
                "code": code,
                "by": by,
                "cause": cause,
                "then": then,
            },
        )

    # --- carrying out the protocol's actions ---------------------------------

    def _handle(self, actions: list[Action]) -> None:
        if self._session_marks:
            self._mark_new_session()
        for action in actions:
            if isinstance(action, Deliver):
                self._put(action.event)
            elif isinstance(action, DeliverRaw):
                self._events.put(action.dispatch)
            elif isinstance(action, Offer):
                self._offer(action)
            elif isinstance(action, Send):
                if action.heartbeat and self._ratelimiter is not None:
                    self._ratelimiter.heartbeat()
                elif action.op == Opcode.RESUME:
                    self.stats.resumes += 1
                    self._resuming = self._protocol.session
                    self._log_resuming()
                self._send_protocol(action.payload)
            elif isinstance(action, Heartbeat):
                if self._ratelimiter is not None:
                    self._ratelimiter.set_heartbeat_interval(action.interval)
                self._spawn_helper(self._heartbeat, action.interval, action.first_delay)
            elif isinstance(action, Identify):
                self._spawn_helper(self._identify)
            elif isinstance(action, ReconnectAction):
                # A protocol error's reason quotes what the gateway sent, which
                # may echo the token: it goes to the log, not back on the wire.
                reason = self._token.redact(action.reason)
                fields = {"shard": self.id, "step": "reconnect", "cause": action.cause}
                if action.cause == "protocol_error":
                    log.warning("shard %d: %s; reconnecting", self.id, reason, extra=fields)
                    self.last_failure = reason
                    reason = "protocol error"
                elif action.cause == "invalid_session":
                    fields["step"] = "invalidated"
                    fields["resumable"] = action.resume
                    log.info(
                        "shard %d: session invalidated (op 9, %s); reconnecting to %s",
                        self.id,
                        "resumable" if action.resume else "not resumable",
                        "resume" if action.resume else "identify again",
                        extra=fields,
                    )
                else:
                    log.info("shard %d: reconnecting (%s)", self.id, reason, extra=fields)
                self._reconnect_delay = action.delay
                self._close_connection(action.code, reason, action.cause)
            elif isinstance(action, Skip):
                self._skip(action)
            elif isinstance(action, Fail):
                log.error(
                    "shard %d: fatally closed: %s",
                    self.id,
                    action.error,
                    extra={"shard": self.id, "step": "fatally_closed"},
                )
                self.last_failure = str(action.error)
                self._stop.set()
                self._started.set()
                self._ready.set()
        requests = self._member_requests
        if (
            requests is not None
            and self._protocol.session_id != self._requests_session
            and not self._shut_down  # down() says so itself (_finish)
        ):
            # A new session (or none): answers owed to the old one never come.
            self._requests_session = self._protocol.session_id
            requests.session_changed(self.id, self._requests_session)
        stage = self._protocol.stage
        if stage is Stage.RESUMING or (stage is Stage.IDENTIFYING and self._protocol.identified):
            self._started.set()
        elif stage is Stage.CONNECTED:
            self._started.set()
            self._ready.set()
            if self._connected_at is None:
                self._connected_at = time.monotonic()
                self.last_failure = None
                self._log_connected()

    def _offer(self, offer: Offer) -> None:
        """A chunk or RATE_LIMITED dispatch: to the member request it answers, else as usual."""
        dispatch = offer.dispatch
        requests = self._member_requests
        if requests is not None and requests.waiting(self.id):
            if isinstance(dispatch, RawDispatch):
                try:
                    message = self._events.loads(dispatch.payload)
                except (ValueError, TypeError, OverflowError, RecursionError):
                    message = None  # queued as it is: events() skips it, and says so
                data = message.get("d") if isinstance(message, dict) else None
            else:
                data = dispatch.data
            if requests.offer(self.id, dispatch.name, data, time.monotonic()):
                # Delivered, to request_members rather than to events().
                self.stats.events[dispatch.name] += 1
                return
        if not offer.wanted:
            self.stats.filtered += 1
            return
        self.stats.events[dispatch.name] += 1
        if isinstance(dispatch, RawDispatch):
            self._events.put(dispatch)
        else:
            self._put(dispatch)

    def _mark_new_session(self) -> None:
        # The protocol has already taken READY's session when its actions come
        # here, so the mark goes into the queue ahead of the READY event.
        session = self._protocol.session
        if session is not None and session.session_id != self._marked_session:
            self._marked_session = session.session_id
            self.started_session = session
            self._put(SessionMark(session))

    def _put(self, event: Event | SessionMark) -> None:
        self._events.put((self.id, event))

    def _send_protocol(self, payload: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.send(payload)
        except ConnectionClosed as err:
            # The reader sees the same failure and reconnects; nothing to add here.
            log.debug("shard %d: send failed: %s", self.id, err)

    def _heartbeat(self, interval: float, first_delay: float) -> None:
        due = time.monotonic() + first_delay
        # Lateness past this means the hub was blocked (by application code,
        # usually): worth a warning, because Discord drops shards that miss beats.
        tolerance = max(0.25, interval * 0.1)
        while True:
            gevent.sleep(max(0.0, due - time.monotonic()))
            late = time.monotonic() - due
            if late > tolerance:
                log.warning(
                    "shard %d: heartbeat %.2f s late: the gevent hub was blocked%s",
                    self.id,
                    late,
                    hubwatch.describe_recent_block(),
                )
            if self._protocol.awaiting_ack:
                # The ACK may be in the socket, unread because the hub was busy:
                # let the reader have a turn before calling the connection a zombie.
                gevent.sleep(min(1.0, interval / 4) if late > tolerance else 0.01)
            self._handle(self._protocol.heartbeat(time.monotonic()))
            due += interval
            if due < time.monotonic():
                due = time.monotonic() + interval

    def _await_hello(self, conn: Connection) -> None:
        """Reconnect when the gateway accepts the socket but never says HELLO."""
        gevent.sleep(self._connect_timeout)
        if self._conn is conn and self._protocol.stage is Stage.CONNECTING:
            log.warning(
                "shard %d: no HELLO within %.1f s; reconnecting", self.id, self._connect_timeout
            )
            self._close_connection(CloseCode.RESUMABLE, "no HELLO", "no_hello")

    def _identify(self) -> None:
        started = time.monotonic()
        try:
            self._queue.request(self.id, self.total)
        except SessionStartLimitExhausted as err:
            # Retrying cannot help before the reset, and wait_for_reset on the
            # queue is how to ask for waiting: stop this shard, loudly.
            self._handle(self._protocol.give_up(err))
            self._close_connection(CloseCode.NORMAL, "session start limit", "session_start_limit")
            return
        except QueueError as err:
            # Fail closed: no IDENTIFY without a permit. The reconnect (with
            # backoff) asks the queue again.
            log.error(
                "shard %d: identify queue refused: %s; retrying",
                self.id,
                err,
                extra={"shard": self.id, "step": "queue_refused"},
            )
            self._close_connection(CloseCode.RESUMABLE, "identify queue refused", "queue_error")
            return
        waited = time.monotonic() - started
        self.stats.identify_waits += 1
        self.stats.identify_wait_seconds += waited
        # The connection may have ended, or been told to, while this waited.
        conn = self._conn
        if conn is not None and not conn.closed and self._protocol.stage is Stage.IDENTIFYING:
            self.stats.identifies += 1
            log.info(
                "shard %d: identifying (waited %.1f s for the identify queue)",
                self.id,
                waited,
                extra={"shard": self.id, "step": "identifying", "waited": round(waited, 3)},
            )
            self._handle(self._protocol.identify())

    def _spawn_helper(self, func: Callable[..., None], *args: Any) -> None:
        if func == self._heartbeat:
            # A new HELLO replaces the old timer.
            for helper in self._helpers:
                if getattr(helper, "is_heartbeat", False):
                    helper.kill(block=False)
        greenlet = gevent.spawn(func, *args)
        greenlet.is_heartbeat = func == self._heartbeat
        self._helpers = [g for g in self._helpers if not g.dead] + [greenlet]

    def _kill_helpers(self) -> None:
        helpers, self._helpers = self._helpers, []
        current = gevent.getcurrent()
        others = [g for g in helpers if g is not current]
        if others:
            gevent.killall(others, block=False)

    def _close_connection(self, code: int, reason: str, cause: str) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        self._client_close = (code, reason, cause)
        conn.close(code, reason)

    def _finish(self) -> None:
        if self._member_requests is not None:
            why = "the shard was shut down" if self._shut_down else "the shard stopped for good"
            self._member_requests.shard_stopped(self.id, why)
        if not self._stopped.is_set():
            self._stopped.set()
            if self._owns_events:
                self._events.close()
