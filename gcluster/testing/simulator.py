"""`GatewaySimulator`: a local Discord gateway (v10) and REST API for tests and demos.

Loopback tests need a peer that behaves like Discord — HELLO, IDENTIFY and
READY, sequence numbers, RESUME with replay, the close codes — and that a test
can script: send it events, make it fail, and ask afterwards what happened.
This is the public face of that peer; the work is split among `server` (one
port for HTTP and websockets, optionally over TLS), `wire` (websocket I/O),
`connection` (what a client may send), `gateway` (sessions, delivery and the
identify and session start rules), `blast` (pre-encoded bulk sends),
`apply_faults` (what each fault does), `faults` and `records`.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import gevent
from gevent.pool import Group

from gcluster.errors import ConfigError, InvalidState

from . import apply_faults, faults, rest, rules
from .blast import Blast, queue_blast
from .connection import GatewayConnection
from .gateway import Gateway, GatewayConfig, SessionInfo, encode
from .payloads import GuildFixture, event_number
from .records import BlastRecord, ConnectionRecord, Records, RequestRecord, Traffic
from .server import Server
from .streams import STREAM_KINDS
from .traffic import BLAST_KINDS
from .wire import COMPRESSIONS, WebSocket

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

__all__ = ["GatewaySimulator", "PacedSend", "serving_in_thread"]

log = logging.getLogger(__name__)

# send_events yields to the hub this often, so a big batch neither blocks other
# greenlets nor piles everything up before the writers can start sending.
_YIELD_EVERY = 256

# Simulators started and not stopped, for `serving_in_thread`.
_serving: weakref.WeakSet[GatewaySimulator] = weakref.WeakSet()


def serving_in_thread(ident: int | None = None) -> bool:
    """Whether a started, not yet stopped simulator serves from thread ``ident``'s hub.

    ``ident`` defaults to the calling thread. `gcluster.ThreadedCluster` asks:
    its calls block the calling thread, and with it a simulator in that thread.
    """
    if ident is None:
        ident = threading.get_ident()
    return any(sim._thread == ident for sim in list(_serving))


class PacedSend:
    """Dispatches sent at a steady rate (`GatewaySimulator.send_paced`).

    Attributes:
        start: ``time.monotonic()`` at which the first is due; dispatch ``d``
            is due at ``start + payloads.due_offset(d)``.
        rate: dispatches per second, over all its shards.
        blasts: one per shard.
    """

    def __init__(self, start: float, rate: float, blasts: list[Blast]) -> None:
        self.start = start
        self.rate = rate
        self.blasts = blasts

    def __repr__(self) -> str:
        return f"<PacedSend rate={self.rate:g}/s shards={[b.shard_id for b in self.blasts]}>"

    @property
    def events(self) -> int:
        return sum(blast.events for blast in self.blasts)

    def wait(self, timeout: float | None = None) -> list[BlastRecord] | None:
        """Wait until every dispatch was written (or its connection ended).

        Returns:
            The blasts' records, or None when ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        records = []
        for blast in self.blasts:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            record = blast.wait(left)
            if record is None:
                return None
            records.append(record)
        return records


class GatewaySimulator:
    """A real server on localhost speaking Discord's gateway (API v10) and REST API.

    One port serves both: plain HTTP gets REST answers (``GET
    /api/v10/gateway/bot``), ``Upgrade: websocket`` becomes a gateway
    connection. With ``ssl_context`` both are served over TLS (``wss://``
    and ``https://``). It runs as greenlets in the hub of the thread that calls
    `start`, never monkey-patches, and every method must be called from that
    hub; none blocks for long (so `gcluster.ThreadedCluster`, which blocks
    its caller, refuses to run in that thread). As on Discord, a session gets
    only the dispatches its IDENTIFY's intents bring (see `dispatch`).

    All arguments are keyword-only.

    Args:
        shards: the shard count IDENTIFY must use (``d.shard[1]``).
        recommended_shards: what /gateway/bot recommends; defaults to ``shards``.
        max_concurrency: identify buckets (``shard_id % max_concurrency``).
        heartbeat_interval: seconds; HELLO sends it in milliseconds.
        token: the bot token clients must send, without "Bot ". Never shown
            in a repr or log.
        privileged_intents: which of GUILD_MEMBERS (1 << 1), GUILD_PRESENCES
            (1 << 8) and MESSAGE_CONTENT (1 << 15) the application may use;
            others close with 4014.
        session_start_limit_total: the daily IDENTIFY budget /gateway/bot reports.
        session_start_remaining: what is left of it; each accepted IDENTIFY
            spends one. An IDENTIFY with none left is closed with 4004 and
            recorded as a violation.
        session_start_reset_after: seconds until the budget is back at
            ``session_start_limit_total``, counted from `start` and then from
            each reset; /gateway/bot reports what is left of it in ms.
        host: the address to listen on.
        port: the port; 0 picks a free one (see `port`).
        guilds_per_shard: how many guilds READY lists for each shard.
        identify_interval: seconds an identify bucket (``shard_id %
            max_concurrency``) must leave between two accepted IDENTIFYs. A
            faster one gets op 9 ``d = false``, starts no session, spends no
            session start and is recorded in ``records.violations``; the
            client may IDENTIFY again on the same connection. 0 disables it.
        replay_limit: how many of a session's latest dispatches are kept for
            RESUME. A RESUME that missed older ones gets op 9 ``d = false``
            and ends the session, as on Discord when too much was missed.
        members_per_chunk: members in one GUILD_MEMBERS_CHUNK of an answer to
            request guild members (op 8); Discord sends up to 1000. With
            fewer, a guild's 24 members come in several chunks.
        members_window: seconds a guild must wait between two requests for
            all of its members (empty query, limit 0); a faster one is
            answered with a RATE_LIMITED dispatch instead of chunks, as
            Discord does since August 2025. 0 disables it.
        login_endpoints: also answer GET /users/@me and
            /oauth2/applications/@me (with the Bot token), which other
            client libraries such as discord.py ask for when they log in.
        ssl_context: a server-side `ssl.SSLContext` (see
            `gcluster.testing.tls.make_certificates`); the simulator then
            speaks TLS, and `url`, `resume_url` and `api_base` are
            ``wss://`` and ``https://``.

    .. important:: Not thread-safe: a gevent hub belongs to one thread.
    """

    def __init__(
        self,
        *,
        shards: int = 1,
        recommended_shards: int | None = None,
        max_concurrency: int = 1,
        heartbeat_interval: float = 41.25,
        token: str = "test-token",
        privileged_intents: int = rules.PRIVILEGED_INTENTS,
        session_start_limit_total: int = 1000,
        session_start_remaining: int = 1000,
        session_start_reset_after: float = 86_400.0,
        host: str = "127.0.0.1",
        port: int = 0,
        guilds_per_shard: int = 2,
        identify_interval: float = 5.0,
        replay_limit: int = 100_000,
        members_per_chunk: int = 1000,
        members_window: float = rules.MEMBERS_WINDOW,
        login_endpoints: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if shards < 1:
            raise ConfigError("shards must be >= 1")
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be >= 1")
        if heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval must be > 0")
        if guilds_per_shard < 1:
            raise ConfigError("guilds_per_shard must be >= 1")
        if session_start_reset_after <= 0:
            raise ConfigError("session_start_reset_after must be > 0")
        if identify_interval < 0:
            raise ConfigError("identify_interval must be >= 0")
        if replay_limit < 1:
            raise ConfigError("replay_limit must be >= 1")
        if isinstance(members_per_chunk, bool) or not isinstance(members_per_chunk, int):
            raise ConfigError(f"members_per_chunk must be an int, got {members_per_chunk!r}")
        if not 1 <= members_per_chunk <= 1000:
            raise ConfigError("members_per_chunk must be 1..1000 (Discord sends up to 1000)")
        if not 0 <= members_window < math.inf:
            raise ConfigError(f"members_window must be >= 0 seconds, got {members_window!r}")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError("ssl_context must be an ssl.SSLContext")
        self.records = Records()
        """What the simulator saw and did; see `gcluster.testing.records`."""
        self._config = GatewayConfig(
            shards=shards,
            recommended_shards=shards if recommended_shards is None else recommended_shards,
            max_concurrency=max_concurrency,
            heartbeat_interval=heartbeat_interval,
            token=rules.strip_bot_prefix(token),
            privileged_intents=privileged_intents,
            session_start_limit_total=session_start_limit_total,
            session_start_reset_after=session_start_reset_after,
            guilds_per_shard=guilds_per_shard,
            identify_interval=identify_interval,
            replay_limit=replay_limit,
            members_per_chunk=members_per_chunk,
            members_window=members_window,
            login_endpoints=login_endpoints,
        )
        self._ssl_context = ssl_context
        self._session_start_remaining = session_start_remaining
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: Server | None = None
        self._gateway: Gateway | None = None
        self._stopped = False
        self._thread: int | None = None
        self._connection_ids = itertools.count(1)
        # Greenlets of faults planned for later, killed on stop().
        self._timers = Group()

    @property
    def token(self) -> str:
        """The token clients must present (a test token, not a secret)."""
        return self._config.token

    def __repr__(self) -> str:
        where = self.url if self._gateway is not None else "not started"
        return f"<GatewaySimulator {where} shards={self._config.shards}>"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        """Bind and start serving in the current hub; returns self.

        Raises:
            InvalidState: if already started.
            OSError: if the address cannot be bound.
        """
        if self._server is not None:
            raise InvalidState("the simulator was already started")
        server = Server(
            self._host,
            self._requested_port,
            on_rest=self._rest,
            on_websocket=self._serve_websocket,
            on_request=self._record_request,
            admit=self._admit,
            ssl_context=self._ssl_context,
        )
        self._port = server.bind()
        self._gateway = Gateway(
            self._config,
            url=self.url,
            resume_url=self.resume_url,
            records=self.records,
            session_start_remaining=self._session_start_remaining,
        )
        server.start()
        self._server = server
        self._thread = threading.get_ident()
        _serving.add(self)
        log.debug("gateway simulator listening on %s", self.url)
        return self

    def stop(self, timeout: float = 0.5) -> None:
        """Close every connection (1001) and the server; idempotent.

        Args:
            timeout: seconds to let clients answer the close frames before
                their connections are cut.
        """
        if self._server is None or self._stopped:
            return
        self._stopped = True
        _serving.discard(self)
        self._timers.kill(block=False)
        for conn in self._require().all_connections():
            conn.wire.close(1001, "Simulator stopping.")
        self._server.stop(timeout)
        log.debug("gateway simulator on %s stopped", self.url)

    def __enter__(self) -> Self:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where it is -------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""
        if self._port is None:
            raise InvalidState("the simulator is not started")
        return self._port

    @property
    def tls(self) -> bool:
        """Whether it speaks TLS (it was given an ``ssl_context``)."""
        return self._ssl_context is not None

    @property
    def url(self) -> str:
        """The gateway URL, ``ws://127.0.0.1:PORT`` (``wss://`` with TLS), as
        /gateway/bot reports it."""
        return f"{'wss' if self.tls else 'ws'}://{self._host}:{self.port}"

    @property
    def resume_url(self) -> str:
        """What READY gives as ``resume_gateway_url``: a distinct path, so a test
        can tell a connection there (``ConnectionRecord.path``) from a fresh one."""
        return f"{self.url}/resume"

    @property
    def api_base(self) -> str:
        """The REST base URL, ``http://127.0.0.1:PORT/api/v10`` (``https://`` with TLS)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._host}:{self.port}{rest.API_PREFIX}"

    # -- scripted events ---------------------------------------------------

    def dispatch(self, shard_id: int, name: str, data: Any) -> None:
        """Send one dispatch ``t = name``, ``d = data`` to the shard.

        A shard with a live session gets it at once with the session's next
        ``s``; a session waiting to be resumed logs it for the replay; a shard
        that never identified gets it after its next READY. As on Discord, a
        session whose IDENTIFY had none of the intents that bring the
        dispatch (a TYPING_START in a guild needs GUILD_MESSAGE_TYPING; a
        ``d`` without ``guild_id`` is a DM one) never gets it: it is recorded
        in ``records.withheld`` instead and takes no ``s``.
        """
        gateway = self._require()
        self._check_shard(shard_id)
        if not isinstance(name, str) or not name:
            raise ConfigError("name must be a dispatch name such as 'MESSAGE_CREATE'")
        number = event_number(data) if isinstance(data, dict) else None
        gateway.deliver(shard_id, name, encode(data), number, gateway.intents_for(name, data))

    def send_events(
        self, shard_id: int, count: int, kinds: Iterable[str] | None = None
    ) -> list[int]:
        """Send ``count`` realistic dispatches to the shard, numbered per shard.

        They cycle through MESSAGE_CREATE, MESSAGE_UPDATE, MESSAGE_DELETE,
        TYPING_START and PRESENCE_UPDATE (or ``kinds``), in the shard's guilds,
        delivered like `dispatch`: a session identified without
        GUILD_MESSAGE_TYPING or GUILD_PRESENCES gets no TYPING_START or
        PRESENCE_UPDATE (`STREAM_INTENTS` brings them all). Numbers continue
        across calls: 1, 2, 3, ... Read one back with
        `gcluster.testing.event_number`.

        Returns:
            The numbers given, in sending order (withheld ones too).

        Raises:
            ConfigError: for a bad shard id, count or kind.
        """
        gateway = self._require()
        self._check_shard(shard_id)
        if count < 0:
            raise ConfigError("count must be >= 0")
        events = gateway.stream(shard_id).take(count, kinds)
        deliver = gateway.deliver
        intents_for = gateway.intents_for
        numbers = []
        may_yield = gevent.getcurrent() is not gevent.get_hub()
        for name, data, number in events:
            deliver(shard_id, name, encode(data), number, intents_for(name, data))
            numbers.append(number)
            if may_yield and number % _YIELD_EVERY == 0:
                gevent.sleep(0)
        return numbers

    def blast(
        self,
        shard_id: int,
        count: int,
        kinds: Iterable[str] | None = None,
        *,
        hold: bool = False,
    ) -> Blast:
        """Blast ``count`` varied dispatches to the shard's live connection, for benchmarks.

        The whole stream is built (realistic ~1.2 KB MESSAGE_CREATEs by
        default, varied so zlib-stream gets a real-world ratio of about 4.5x,
        see `gcluster.testing.traffic`), encoded, compressed with the
        connection's compressor (zlib-stream, zstd-stream or none), framed
        and queued before anything is written; the connection's writer then
        hands it to the socket in chunks of about 256 KB, so the simulator
        is never what limits the client. The returned `Blast` gives a
        `BlastRecord` with the send rate once written.

        Dispatches are numbered per shard like `send_events` and take the
        session's next sequence numbers; they are logged for replay, so a
        client that drops during a blast resumes and gets the rest. Unlike
        `send_events` they get one `BlastRecord` instead of a
        `DispatchRecord` each, and do not count toward fault plans.

        Args:
            shard_id: the shard; it must have a live connection.
            count: how many dispatches.
            kinds: names to cycle through (default MESSAGE_CREATE only), from
                `STREAM_KINDS`.
            hold: queue it, but write nothing until `Blast.release` (so the
                writing can be timed apart from the preparation); what is
                queued on the connection after it waits too.

        Raises:
            ConfigError: for a bad shard id, count or kind, a shard with no
                live connection, or a kind the shard's session did not
                identify with an intent for.
        """
        gateway = self._require()
        self._check_shard(shard_id)
        if count < 1:
            raise ConfigError("count must be >= 1")
        return queue_blast(gateway, shard_id, count, self._kinds(kinds), hold=hold)

    def send_paced(
        self,
        shard_ids: Iterable[int],
        count: int,
        rate: float,
        kinds: Iterable[str] | None = None,
        *,
        lead: float = 0.05,
    ) -> PacedSend:
        """Send ``count`` varied dispatches at ``rate`` per second, round-robin over shards.

        For latency measurements: like `blast`, everything is encoded and
        compressed up front; then each dispatch is written on its own at its
        due time (to within microseconds: the simulator's hub spins for the
        last stretch). Each ``d`` carries its due time as an offset from
        `PacedSend.start` (`payloads.due_offset`), so the client can tell
        how long it took from the simulator's send to its own hands. Anything
        else queued on those connections meanwhile (heartbeat ACKs too) goes
        out after the run.

        Args:
            shard_ids: the shards; each must have a live connection.
            count: how many dispatches in all.
            rate: dispatches per second in all.
            kinds: as for `blast`.
            lead: seconds between the end of the preparation and the first
                dispatch's due time.

        Raises:
            ConfigError: as for `blast`, or a rate that is not positive.
        """
        gateway = self._require()
        ids = list(shard_ids)
        if not ids:
            raise ConfigError("shard_ids must not be empty")
        for shard_id in ids:
            self._check_shard(shard_id)
        if count < len(ids):
            raise ConfigError("count must give every shard at least one dispatch")
        if rate <= 0:
            raise ConfigError("rate must be > 0")
        names = self._kinds(kinds)
        blasts = []
        for position, shard_id in enumerate(ids):
            due = [index / rate for index in range(position, count, len(ids))]
            blasts.append(queue_blast(gateway, shard_id, len(due), names, due=due))
        start = time.monotonic() + lead
        for blast in blasts:
            blast.release(start)
        return PacedSend(start, rate, blasts)

    # -- server-side controls ----------------------------------------------

    def close_shard(self, shard_id: int, code: int, reason: str = "") -> int:
        """Close the shard's connections with ``code`` (after what was already sent).

        The codes Discord marks as not resumable (4001, 4003, 4004, 4005,
        4007, 4009-4014) also end the session; others, 1000 and 1001
        included, keep it resumable. Returns how many connections it closed.
        """
        return self.apply_fault(shard_id, faults.CloseConnection(code=code, reason=reason))

    def reconnect_shard(self, shard_id: int) -> int:
        """Send op 7 RECONNECT to the shard's connections; returns how many."""
        return self.apply_fault(shard_id, faults.Reconnect())

    def invalidate_session(self, shard_id: int, resumable: bool) -> int:
        """Send op 9 INVALID_SESSION ``d = resumable``; False also ends the session.

        Returns how many connections it reached (0 still ends the session).
        """
        return self.apply_fault(shard_id, faults.InvalidateSession(resumable=resumable))

    def drop_shard(self, shard_id: int) -> int:
        """Reset the shard's TCP connections with no close frame; returns how many."""
        return self.apply_fault(shard_id, faults.DropConnection())

    def request_heartbeat(self, shard_id: int) -> int:
        """Send op 1 HEARTBEAT to the shard's connections; returns how many."""
        return self.apply_fault(shard_id, faults.RequestHeartbeat())

    def refuse_connections(self, count: int = 1) -> None:
        """Answer the next ``count`` websocket upgrades (any shard) with HTTP 503.

        See `faults.RefuseConnections`; each refusal is recorded in ``records.refusals``.
        """
        self.apply_fault(None, faults.RefuseConnections(count=count))

    def apply_fault(self, shard_id: int | None, fault: faults.Fault) -> int:
        """Apply any `gcluster.testing.faults` value to the shard now.

        It is recorded in ``records.faults``. Returns how many live
        connections it reached (0 for `faults.RefuseConnections`, which
        concerns future connections of any shard and takes ``shard_id=None``).

        Raises:
            ConfigError: for a bad shard id, or None with a fault that needs a shard.
        """
        gateway = self._require()
        self._check_fault_target(shard_id, fault)
        return apply_faults.apply_fault(gateway, shard_id, fault)

    def schedule_fault(
        self,
        shard_id: int | None,
        fault: faults.Fault,
        *,
        after_dispatches: int | None = None,
        delay: float | None = None,
    ) -> faults.FaultPlan:
        """Plan a fault: right after ``after_dispatches`` more dispatches were
        sent to the shard's live connection, or ``delay`` seconds from now.

        Raises:
            ConfigError: unless exactly one of the two is given, for a bad
                shard id, or for None with a fault that needs a shard.
        """
        gateway = self._require()
        self._check_fault_target(shard_id, fault)
        plan = faults.FaultPlan(
            shard_id=shard_id, fault=fault, after_dispatches=after_dispatches, delay=delay
        )
        if plan.delay is not None:
            self._timers.add(
                gevent.spawn_later(plan.delay, apply_faults.apply_fault, gateway, shard_id, fault)
            )
        else:
            apply_faults.arm(gateway, plan)
        return plan

    @property
    def session_start_reset_after(self) -> float:
        """Seconds until the session start budget is back at its total."""
        return self._require().session_start_reset_after()

    # -- state for assertions ----------------------------------------------

    def session(self, shard_id: int) -> SessionInfo | None:
        """The shard's current session (id, last ``s``, connected), or None."""
        gateway = self._require()
        self._check_shard(shard_id)
        return gateway.session_info(shard_id)

    @property
    def sessions(self) -> dict[int, SessionInfo]:
        """Every shard's current session, by shard id."""
        gateway = self._require()
        infos = (gateway.session_info(i) for i in range(self._config.shards))
        return {info.shard_id: info for info in infos if info is not None}

    def live_connections(self, shard_id: int) -> int:
        """How many open, not closing, connections identified or resumed as the shard."""
        gateway = self._require()
        self._check_shard(shard_id)
        return len(gateway.live(shard_id))

    def guild_ids(self, shard_id: int) -> list[int]:
        """The ids of the guilds READY lists for the shard (all map to it)."""
        gateway = self._require()
        self._check_shard(shard_id)
        return gateway.guild_ids(shard_id)

    def guilds(self, shard_id: int) -> list[GuildFixture]:
        """The shard's guild fixtures, e.g. for `payloads.guild_create`."""
        gateway = self._require()
        self._check_shard(shard_id)
        return gateway.guilds(shard_id)

    @property
    def session_start_remaining(self) -> int:
        """What is left of the IDENTIFY budget."""
        if self._gateway is None:
            return self._session_start_remaining
        return self._gateway.session_start_remaining

    def wait_until(self, predicate: Callable[[], object], timeout: float = 5.0) -> bool:
        """Wait cooperatively until ``predicate()`` is true; False on timeout.

        Re-checked whenever a record is added, and every 50 ms.
        """
        return self.records.wait_until(predicate, timeout)

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _kinds(kinds: Iterable[str] | None) -> tuple[str, ...]:
        names = BLAST_KINDS if kinds is None else tuple(kinds)
        if not names or any(name not in STREAM_KINDS for name in names):
            raise ConfigError(f"kinds must be a non-empty subset of {STREAM_KINDS}, got {names}")
        return names

    def _require(self) -> Gateway:
        if self._gateway is None:
            raise InvalidState("the simulator is not started")
        return self._gateway

    def _check_fault_target(self, shard_id: int | None, fault: faults.Fault) -> None:
        if shard_id is None:
            if not isinstance(fault, faults.RefuseConnections):
                raise ConfigError(f"{type(fault).__name__} needs a shard id")
        else:
            self._check_shard(shard_id)

    def _admit(self, target: str, address: tuple[str, int]) -> bool:
        return self._require().admit(urlsplit(target).path or "/", address[1])

    def _check_shard(self, shard_id: int) -> None:
        if type(shard_id) is not int or not 0 <= shard_id < self._config.shards:
            raise ConfigError(f"no shard {shard_id!r}: shards are 0..{self._config.shards - 1}")

    def _rest(
        self, method: str, path: str, authorization: str | None
    ) -> tuple[int, dict[str, Any]]:
        return rest.route(method, path, authorization, self._require())

    def _record_request(self, method: str, path: str, status: int) -> None:
        self.records.requests.append(
            RequestRecord(time=time.monotonic(), method=method, path=path, status=status)
        )
        self.records.notify()

    def _serve_websocket(self, sock: Any, ws: Any, target: str, address: tuple[str, int]) -> None:
        gateway = self._require()
        try:
            # As a real gateway does: a dispatch goes out when it is written,
            # not when Nagle's algorithm has seen the previous one acknowledged.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a test's socket pair): nothing to delay
        split = urlsplit(target)
        query: dict[str, str] = {}
        for key, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(key, value)
        compression = query.get("compress")
        connection_id = next(self._connection_ids)
        traffic = self.records.traffic[connection_id] = Traffic(connection_id=connection_id)
        wire = WebSocket(
            sock,
            ws,
            # An unserved value is closed with 4002 by the gateway, uncompressed.
            compression=compression if compression in COMPRESSIONS else None,
            on_written=gateway.on_written,
            traffic=traffic,
        )
        conn = GatewayConnection(connection_id, wire, gateway)
        record = ConnectionRecord(
            id=connection_id,
            time=time.monotonic(),
            path=split.path or "/",
            query=query,
            compression=compression,
            remote_port=address[1],
        )
        try:
            gateway.open(conn, record)
            ending = wire.receive(conn.on_message)
            gateway.closed(conn, ending)
            wire.finish()
        finally:
            wire.kill()
