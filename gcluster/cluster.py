"""The cluster: many shards of one bot, managed together, with one event stream.

The twilight-gateway `Cluster` API in synchronous Python. The cluster resolves
the shard scheme (asking GET /gateway/bot when it must), builds the shards,
starts them through the identify queue, merges their events into one gevent
queue and answers for them: `info()`, `command()`, `send()`, `down()`. Its
options, their checks and the builder live in `gcluster.config`.

    cluster = Cluster(token, Intents.GUILD_MESSAGES)
    cluster.up()
    for shard_id, event in cluster.events():
        ...
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent.event import Event as Flag
from gevent.lock import Semaphore

from gcluster._token import Token
from gcluster.commands import Command, RequestGuildMembers, Snowflake, shard_for_guild
from gcluster.config import ClusterBuilder, ClusterConfig, ClusterOptions, make_config
from gcluster.delivery import EventQueue, resolve_decoder
from gcluster.errors import (
    ClusterNotUp,
    ClusterStartError,
    ClusterStartErrorType,
    CommandSendingError,
    ConfigError,
    EventStreamBusy,
    GClusterError,
    InvalidCommand,
    InvalidState,
    MembersRateLimited,
    ShardNonexistent,
    ShardSchemeError,
)
from gcluster.events import Event
from gcluster.http import GatewayBot, get_gateway_bot
from gcluster.intents import Intents
from gcluster.interface import ClusterLifecycle
from gcluster.members import (
    DEFAULT_MEMBERS_TIMEOUT,
    GuildMembers,
    MemberRequests,
    MembersAnswer,
    is_full_request,
)
from gcluster.message import Message
from gcluster.protocol import ResumeSession, Stage
from gcluster.queue import ConfigurableQueue, LocalQueue, Queue
from gcluster.sessions import ConsumedSessions, SessionStore, ShardRemoved
from gcluster.shard import Information, Shard
from gcluster.stats import ShardStats

if TYPE_CHECKING:
    # Only annotations use it, and they are strings at run time: typing_extensions
    # (whose stub type checkers carry) is never imported, on 3.10 as on 3.13.
    from typing_extensions import Unpack

    from gcluster.members import _Pending as PendingRequest

__all__ = [
    "Cluster",
    "ClusterBuilder",
    "ClusterConfig",
    "ClusterOptions",
    "check_members_timeout",
]

log = logging.getLogger(__name__)

_HOUSEKEEPING_INTERVAL: Final = 1.0


class Cluster(ClusterLifecycle):
    """Many shards of one bot, and their events as one stream.

    Args:
        token: the bot token, with or without "Bot ".
        intents: `Intents` (or their int value) to identify with.
        event_types: `EventTypeFlags` of the events to deliver; the rest are
            dropped before their JSON is decoded. Default: all but SHARD_PAYLOAD.
        shard_scheme: which shards to run; default `ShardScheme.auto()`.
        gateway_url: skip GET /gateway/bot and connect here.
        api_base: the REST base URL (default Discord's v10).
        large_threshold: IDENTIFY's large_threshold, 50..250.
        presence: an `UpdatePresence` sent in every IDENTIFY.
        shard_presence: `f(shard_id) -> UpdatePresence | None`, overriding `presence`.
        identify_properties: IDENTIFY's properties (os, browser, device).
        queue: the identify queue; default a `LocalQueue` sized by /gateway/bot.
        resume_sessions: `{shard_id: ResumeSession}`; those shards RESUME.
        ratelimit_payloads: keep commands within Discord's 120 per 60 s.
        compression: transport compression: True or "zlib-stream" (default),
            "zstd-stream" (needs the zstd extra), "best" (zstd when installed,
            else zlib), False for none.
        connect_timeout: seconds for one connection attempt (TCP, TLS, handshake)
            and for HELLO to follow.
        max_message_size: the largest gateway message accepted, in bytes,
            compressed or inflated (default 64 MiB, above the largest
            GUILD_CREATE); a bigger one closes the connection with 1009 and
            the shard resumes. At least 64 KiB.
        ssl_context: an `ssl.SSLContext` for wss (e.g. `ssl.create_default_context(
            cafile=...)` for a custom CA); the default verifies certificates and
            host names. The handshake runs on gevent's sockets either way.
        session_store: a `SessionStore` (e.g. `gcluster.redis.RedisSessionStore`):
            sessions saved there are resumed at start, and each shard's session
            is saved as the application finishes with its events.
        backlog_warning: log a warning when this many events wait unread in
            `events()` (a consumer falling behind).
        decoder: how dispatches' JSON is decoded: "auto" (the default:
            orjson when installed, as by the `gcluster[fast]` extra, else
            ujson), "ujson", "orjson" (faster, see README's benchmarks;
            integers past 64 bits become floats), or any callable taking
            bytes. Events are decoded by `events()` as it
            yields them, in the consumer's greenlet.
        proxy: an HTTP proxy for the websocket and GET /gateway/bot:
            "http://[user:password@]host:port" (or a `gcluster.proxy.Proxy`),
            reached with CONNECT, TLS to Discord running inside the tunnel;
            None (the default) follows HTTPS_PROXY/HTTP_PROXY/ALL_PROXY and
            NO_PROXY as requests does; False uses no proxy, whatever the
            environment says. See docs/proxies.rst.

    The options are typed by `ClusterOptions`, so mypy reports a misspelled
    or mistyped one.

    Raises:
        ConfigError: an option is out of range or unknown.
    """

    def __init__(self, token: str | Token, intents: int, **options: Unpack[ClusterOptions]) -> None:
        self._config = make_config(token, intents, options)
        self._events = EventQueue(resolve_decoder(self._config.decoder))
        self._shards: dict[int, Shard] = {}
        # Fixed by up(): every shard of this cluster is one of `_total`.
        self._total: int | None = None
        self._gateway_url = ""
        # Shard ids an add_shard or remove_shard is working on (each may wait
        # on the session store, the identify queue's budget or a close).
        self._changing: set[int] = set()
        # Set when a shard is added or removed: wakes up()'s wait to look again.
        self._membership = Flag()
        # The counters of shards removed, so cluster-wide totals never go down.
        self._removed_stats = ShardStats()
        self._gateway: GatewayBot | None = None
        self._started = False
        self._stopped = False
        # Held while up() creates the shards: that waits on REST and the
        # session store, and a second up() meanwhile must not create them too.
        self._creating = Semaphore()
        # What the application has finished with; only kept with a session store.
        self._consumed: ConsumedSessions | None = None
        self._sessions_ended = False  # down() ended them: nothing more is saved
        # events(manual_finish=True): what was given and not finished yet, in order.
        # An events() iterator is open: a second one would get nothing.
        self._reading = False
        self._housekeeper: gevent.Greenlet | None = None
        self._queue: Queue | None = None
        # Shards closed for good, in the order they were, and a flag that
        # wakes up() when one is.
        self._failed_order: dict[int, None] = {}
        self._fatal = Flag()
        self._member_requests = MemberRequests()

    @classmethod
    def new(cls, token: str | Token, intents: int, **options: Unpack[ClusterOptions]) -> Cluster:
        """Same as `Cluster(token, intents, **options)`, as twilight spells it."""
        return cls(token, intents, **options)

    @classmethod
    def builder(cls, token: str | Token, intents: int) -> ClusterBuilder:
        """A builder taking one option per method call: `.event_types(...).build()`."""
        return ClusterBuilder(token, intents)

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "up" if self._started else "new"
        return f"<Cluster {state} shards={sorted(self._shards)}>"

    def config(self) -> ClusterConfig:
        return self._config

    # --- life ----------------------------------------------------------------

    def up(self, block: bool = True, timeout: float | None = None) -> None:
        """Start every shard and, by default, wait until each one has a session.

        Whatever `block` says, the calling greenlet first does what can fail
        before any shard connects: GET /gateway/bot (skipped when
        `gateway_url` is given, the scheme is not auto and the queue needs no
        limits), the identify queue's check of the day's session starts, and
        the session store's load. Then every shard starts connecting in its
        own greenlets and IDENTIFYs when the identify queue lets it (one per
        5 s per bucket), or RESUMEs a session it was given.

        Calling it again on a cluster that is up starts nothing new; with
        `block` it waits again. A call made while another greenlet's `up()` is
        still making the shards waits for it, then does the same.

        Args:
            block: wait until every shard has received READY or RESUMED, or
                until the gateway closes a shard for good. False returns as
                soon as the shards are started; `wait_until_ready` waits
                later, and a fatal close shows in `info()[id].error`, as a
                SHARD_DISCONNECTED event, and from `events()` once every
                shard has stopped.
            timeout: seconds to wait for that; None waits as long as the
                identify queue needs (about 5 s per shard in a bucket).

        Raises:
            ClusterStartError: GET /gateway/bot failed (kind
                RETRIEVING_GATEWAY_INFO); not every shard was ready within
                `timeout` (kind TIMEOUT; the shards go on starting); the
                cluster was shut down, before or during the wait (kind
                SHARD_START).
            SessionStartLimitExhausted: too few of the day's session starts
                remain; raised before any shard connects.
            AuthenticationFailed, InvalidShard, ShardingRequired,
                InvalidApiVersion, InvalidIntents, DisallowedIntents: with
                `block`, the gateway closed a shard with 4004 or 4010-4014
                before every shard was ready. This is the error of the first
                shard closed so; the others keep running (`down()` stops them).
        """
        if self._stopped:
            raise ClusterStartError(
                "this cluster was shut down; build a new one",
                kind=ClusterStartErrorType.SHARD_START,
            )
        with self._creating:
            if not self._started:
                self._create_shards()
                self._started = True
                for shard in self._shards.values():
                    shard.start()
                self._housekeeper = gevent.spawn(self._housekeeping)
        if block:
            self._wait_for_sessions(timeout)

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Wait until every shard has received READY or RESUMED.

        Returns:
            True once they all have (at once when every shard was removed);
            False on timeout, when a shard was closed for good, when the
            cluster was never brought up or after `down()`.
        """
        if not self._started or self._stopped:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            shards = list(self._shards.values())
            for shard in shards:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                if shard.error is not None:
                    return False
                if not shard.wait_until_ready(remaining) and self._shards.get(shard.id) is shard:
                    return False  # timed out, or closed for good (not removed meanwhile)
            current = list(self._shards.values())
            if all(shard.wait_until_ready(0) for shard in current):
                return True
            if {id(shard) for shard in current} == {id(shard) for shard in shards}:
                return False  # one of them lost its connection since
            # Shards were added while this waited: wait for them too.

    # --- shards --------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """The bot's shard count (all processes together); None before `up()`.

        Fixed when the cluster comes up, also while shards are added and removed.
        """
        return self._total

    def shard_for(self, guild_id: int | str) -> int:
        """The id of the shard that receives a guild's events: `(guild_id >> 22) % total`.

        Raises:
            ClusterNotUp: `up()` was never called, so the total is unknown.
        """
        total = self.total
        if total is None:
            raise ClusterNotUp(self._not_up("does not know the shard count yet"))
        return shard_for_guild(guild_id, total)

    def shard(self, shard_id: int) -> Shard | None:
        """The shard with this id, or None when the cluster has none (before `up()`, none)."""
        return self._shards.get(shard_id)

    def shards(self) -> list[Shard]:
        """Every shard of this cluster, in id order (none before `up()`)."""
        return [self._shards[shard_id] for shard_id in sorted(self._shards)]

    def info(self) -> dict[int, Information]:
        """`{shard_id: Information}`, in id order: a snapshot of each shard ({} before `up()`)."""
        return {shard_id: self._shards[shard_id].info() for shard_id in sorted(self._shards)}

    # --- shards coming and going ----------------------------------------------

    def add_shard(self, shard_id: int, session: ResumeSession | None = None) -> Shard:
        """Start one more shard while the cluster runs; returns it at once.

        The shard RESUMEs `session` when given one, else the session the
        session store holds for it (if any), else IDENTIFYs through the
        cluster's identify queue like every other shard: it waits its turn in
        its bucket (`shard_id % max_concurrency`), behind shards still
        identifying. Its events join `events()`, and it shows in `info()`,
        `shards()` and the metrics from now on. `shard.wait_until_ready()`
        waits for its READY or RESUMED.

        The shard count is the cluster's `total`, fixed when it came up:
        the shards of a set identify with one total (Discord maps guilds to
        shards by it), so a shard of another total belongs in another cluster.

        Args:
            shard_id: a shard this cluster does not run, in 0..total-1.
            session: a `ResumeSession` of this shard (e.g. what another
                cluster's `remove_shard` returned).

        Raises:
            ClusterNotUp: `up()` was never called (the total is not known yet).
            InvalidState: the cluster was shut down; or the shard runs in this
                cluster already, or another call is adding or removing it.
            ShardSchemeError: `shard_id` is not an int in 0..total-1.
            ConfigError: `session` is of another shard or another total.
            SessionStartLimitExhausted: the shard would IDENTIFY and too few
                of the day's session starts remain (nothing was started).
            SessionStoreError: the session store could not be read.
        """
        _check_shard_id(shard_id)
        self._check_changeable("add", shard_id)
        total = self._total
        assert total is not None, "set by up()"
        if not 0 <= shard_id < total:
            raise ShardSchemeError(
                f"shard id {shard_id} is outside 0..{total - 1}: this cluster's shards are of "
                f"{total}, fixed when it came up; shards of another total are a new cluster"
            )
        if session is not None:
            if not isinstance(session, ResumeSession):
                # Its type only: a dict from to_dict() holds the session id.
                raise ConfigError(
                    f"session must be a ResumeSession or None, not {type(session).__name__}"
                    + ": ResumeSession.from_dict(data) reads a dict" * isinstance(session, Mapping)
                )
            why = session.mismatch(shard_id, total)
            if why is not None:
                raise ConfigError(f"shard {shard_id} cannot resume this session: {why}")
        self._check_not_running(shard_id)
        self._changing.add(shard_id)
        try:
            # Both may wait (on Redis, say): the checks above hold throughout,
            # as the id is marked as changing.
            if session is None and self._config.session_store is not None:
                session = _resumable(self._config.session_store.load([shard_id]), total).get(
                    shard_id
                )
            if session is None and isinstance(self._queue, ConfigurableQueue):
                self._queue.check_budget(1)
            if self._stopped:
                raise InvalidState(
                    f"the cluster was shut down while shard {shard_id} was being added"
                )
            shard = self._new_shard(shard_id, session)
            if self._consumed is not None:
                self._consumed.add(shard_id, session)
            self._shards[shard_id] = shard
            shard.start()
        finally:
            self._changing.discard(shard_id)
        self._membership.set()
        # Events flow again, even if every other shard had failed.
        self._events.reopen()
        return shard

    def remove_shard(self, shard_id: int, resumable: bool = True) -> ResumeSession | None:
        """Stop one shard and take it out of the cluster; return its session.

        The shard is gone from `shard()`, `info()`, `shards()` and the
        metrics at once; it closes its connection (a SHARD_DISCONNECTED event
        follows) and its session is returned, to resume elsewhere with
        `add_shard(shard_id, session)` or `resume_sessions`. The events it
        had received are still delivered by this cluster's `events()`, in
        order, and the session returned resumes after the last of them: a
        cluster resuming it delivers each event the gateway sends once,
        counting both clusters, as long as this one lives to deliver its
        queued events. With a session store, the session is also saved
        there (or, not resumable, removed).

        `events()` goes on when the last shard is removed: it ends only with
        `down()`, and `add_shard` may add shards again.

        Args:
            shard_id: a shard this cluster runs.
            resumable: close with a code that keeps the session (the
                default). False closes with 1000, ending the session, and
                returns None.

        Returns:
            the session to resume, or None when not `resumable` or the shard
            had no session yet (it had not received READY): whoever runs it
            next IDENTIFYs.

        Raises:
            ClusterNotUp: `up()` was never called.
            InvalidState: the cluster was shut down, or another call is
                adding or removing this shard.
            ShardNonexistent: the cluster runs no such shard.
            ShardSchemeError: `shard_id` is not an int.
        """
        _check_shard_id(shard_id)
        self._check_changeable("remove", shard_id)
        shard = self._shards.get(shard_id)
        if shard is None:
            raise ShardNonexistent(shard_id)
        self._changing.add(shard_id)
        try:
            del self._shards[shard_id]
            self._failed_order.pop(shard_id, None)
            self._membership.set()
            # It closes: the reader puts its last events and SHARD_DISCONNECTED
            # into the queue, then ends.
            session = shard.down(resumable=resumable)
            self._retire(shard)
            self._forget_session(shard_id, session if resumable else None)
        finally:
            self._changing.discard(shard_id)
        self._fail_if_all_failed()
        return session if resumable else None

    def command(
        self, shard_id: int, command: Command | Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        """Send a gateway command through one shard.

        Waits cooperatively (up to `timeout` seconds) for a rate-limit slot.

        Raises:
            ClusterNotUp: `up()` was never called, so there are no shards yet.
            ShardNonexistent: the cluster is up and has no such shard.
            CommandSendingError: the shard is not connected, no slot came
                within `timeout`, or the send failed.
            InvalidCommand, PayloadTooLarge: the command is invalid.
        """
        self._get(shard_id).command(command, timeout=timeout)

    def request_members(
        self,
        guild_id: Snowflake,
        *,
        query: str | None = None,
        limit: int = 0,
        user_ids: Any = None,
        presences: bool = False,
        timeout: float = DEFAULT_MEMBERS_TIMEOUT,
    ) -> GuildMembers:
        """Ask the gateway for members of a guild and wait for the whole answer.

        Sends Request Guild Members (op 8) with a nonce of its own through
        the shard that holds the guild, gathers every GUILD_MEMBERS_CHUNK
        with that nonce, and returns them together. Those chunks (and a
        RATE_LIMITED answer to the request) go to this call only, not to
        `events()`, whatever `event_types` says; other chunks are delivered
        as usual.

        Without `query` and `user_ids` it asks for every member. Discord
        allows that once per guild per 30 s, and it needs the GUILD_MEMBERS
        intent; a second one within the window is refused here, before it
        is sent.

        Args:
            guild_id: the guild (an int or its decimal string).
            query: members whose username starts with it (at most `limit`,
                and at most 100 whatever the limit).
            limit: with `query`, at most this many members: 1..100 (0 with
                an empty query means every member; Discord does not answer
                other queries with 0, so they are refused).
            user_ids: these users (at most 100); ids that are not members
                come back in `not_found`.
            presences: also fetch their presences (needs GUILD_PRESENCES).
            timeout: seconds to wait, for a rate-limit slot and for every
                chunk, all together.

        Returns:
            `GuildMembers`: `members`, `presences`, `not_found`, `nonce`,
            `chunk_count`.

        Raises:
            InvalidCommand: the arguments break Discord's rules, or the
                cluster's intents lack GUILD_MEMBERS (for every member) or
                GUILD_PRESENCES (for presences): Discord would not answer.
            ConfigError: `timeout` is not a positive number of seconds.
            ClusterNotUp: `up()` was never called.
            ShardNonexistent: the guild's shard runs in another process.
            CommandSendingError: the guild's shard is not connected, or no
                rate-limit slot came in time.
            MembersRateLimited: Discord answered RATE_LIMITED (`sent` True),
                or a request for every member of this guild was made less
                than 30 s ago (`sent` False); `retry_after` says how long to wait.
            MembersTimeout: not every chunk came within `timeout`; the
                message and `received` say which did.
            MembersRequestLost: the shard's session ended (a new session, a
                fatal close, `down()`) before the answer was whole.
            MembersRequestError: the answer broke the gateway's rules.
        """
        deadline = time.monotonic() + check_members_timeout(timeout)
        requests = self._member_requests
        nonce = requests.nonces.next()
        if query is None and user_ids is None:
            query = ""
        command = RequestGuildMembers(
            guild_id=guild_id,
            query=query,
            limit=limit,
            user_ids=user_ids,
            presences=presences,
            nonce=nonce,
        )
        if command.query and command.limit == 0:
            # Discord never answers that (discord-api-docs#662): the call
            # would only time out.
            raise InvalidCommand(
                f"request_members(query={command.query!r}) needs limit=1..100: Discord does not "
                "answer a query with limit 0 (only an empty query with limit 0, which asks for "
                "every member)"
            )
        guild = int(command.guild_id)
        full = command.user_ids is None and is_full_request(command.query, command.limit)
        _check_member_intents(self._config.intents, full=full, presences=presences)
        shard = self._shard_for_request(guild)
        if full:
            wait = requests.window.wait(guild, time.monotonic())
            if wait > 0:
                raise MembersRateLimited(
                    f"every member of guild {guild} was asked for less than "
                    f"{requests.window.window:g} s ago, and Discord allows that once per "
                    f"{requests.window.window:g} s per guild: ask again in {wait:.1f} s "
                    "(or keep the members up to date from GUILD_MEMBER_* events)",
                    guild_id=guild,
                    nonce=None,
                    retry_after=wait,
                    sent=False,
                )
        answer = MembersAnswer(guild, nonce, full=full)
        # Registered before sending: the first chunk may come while the send yields.
        pending = requests.begin(answer, shard.id)
        # Closed before the send, which may wait for a slot: a second full
        # request for the guild made meanwhile is refused above, not sent too.
        previous = requests.window.reserve(guild, time.monotonic()) if full else None

        def sent() -> None:
            # Right after the send, before anything else runs: the session
            # read now is the one that owes the answer (the wait for a slot
            # may have seen a new one), and an early RATE_LIMITED is not undone.
            requests.sent(pending, shard.info().session_id)
            if full:
                requests.window.sent(guild, time.monotonic())  # Discord's 30 s start now

        try:
            try:
                _send_member_request(shard, command, pending, deadline, sent)
            except BaseException:
                if full:
                    requests.window.release(guild, previous)  # nothing went out
                raise
            pending.done.wait(max(0.0, deadline - time.monotonic()))
            if pending.error is not None:
                raise pending.error
            if not answer.complete:
                raise requests.timed_out(pending, timeout)
            return answer.result()
        finally:
            requests.end(pending)

    def command_raw(self, shard_id: int, payload: bytes | str) -> None:
        """Send a raw payload through one shard. Deprecated: use `command` or `send`."""
        warnings.warn(
            "Cluster.command_raw is deprecated; use Cluster.command or Cluster.send",
            DeprecationWarning,
            stacklevel=2,
        )
        self._get(shard_id).command_raw(payload)

    def send(self, shard_id: int, message: Message) -> None:
        """Send a raw websocket message (e.g. `Message.close(4000)`) through one shard.

        Raises:
            ClusterNotUp, ShardNonexistent, CommandSendingError: as `command`.
        """
        self._get(shard_id).send(message)

    # --- events ----------------------------------------------------------------

    def events(self, *, manual_finish: bool = False) -> Iterator[tuple[int, Event]]:
        """Every delivered event of every shard, as `(shard_id, event)`.

        Order is kept within each shard. The iterator ends after `down()` once
        the events queued before it are drained; if every shard closed
        fatally, it raises the error of the last one to close instead of
        waiting forever.

        One iterator at a time: each event goes to one reader, so a second
        loop would get only what the first one left. An iterator holds the
        stream from the first time its loop asks for an event until the loop
        ends or the iterator is closed; then a new one carries on with the
        events still queued. To handle events concurrently, use one loop and
        a `Dispatcher`.

        With a session store, an event counts as finished (the saved session
        moves past it) when the loop asks for the next one. A consumer that
        is done with events later than that (e.g. one that publishes them in
        batches) passes ``manual_finish=True`` and calls `finish` instead.

        The checks below run when the loop asks for its first event (the
        iterator may be made before `up()`, as twilight's is).

        Raises:
            ClusterNotUp: the cluster was never brought up (and not shut
                down): no event would ever arrive.
            EventStreamBusy: another iterator of this cluster is open.
            GatewayClosedError (or SessionStartLimitExhausted): every shard
                was closed for good.
        """
        if not self._started and not self._stopped:
            raise ClusterNotUp(self._not_up("has no shards to deliver events"))
        if self._reading:
            raise EventStreamBusy(
                "another events() iterator of this cluster is open; read from one loop "
                "(a Dispatcher runs handlers concurrently) or end the first loop first"
            )
        self._reading = True
        queue = self._events
        consumed = self._consumed
        try:
            while True:
                item = queue.next_event()  # raises the error of the last shard to fail
                if item is None:
                    self._save_sessions()
                    return
                if consumed is None:
                    yield item
                    continue
                shard_id, event = item
                if not consumed.arrived(shard_id, event, manual=manual_finish):
                    continue  # a session mark, for the saved sessions only
                yield item
                if not manual_finish:
                    # Back for the next one: the application has finished with this event.
                    consumed.handled(shard_id, event.sequence)
        finally:
            self._reading = False

    def finish(self, count: int = 1) -> None:
        """Mark the next `count` events given by `events(manual_finish=True)` as finished.

        Events are finished in the order they were given; the saved sessions
        move past them. Without a session store this does nothing.
        """
        if self._consumed is not None:
            self._consumed.finish(count)

    def restart(self, shard_id: int) -> None:
        """Reconnect one shard now: RESUME if its session allows, else IDENTIFY.

        Also revives a shard that was fatally closed.

        Raises:
            ClusterNotUp: `up()` was never called.
            ShardNonexistent: the cluster is up and has no such shard.
        """
        self._get(shard_id).restart()
        # Events will flow again, even if every shard had failed.
        self._events.reopen()

    @property
    def session_starts_remaining(self) -> int | None:
        """IDENTIFYs left today as far as this process knows; None if it never asked.

        The identify queue's own count when it keeps one, else GET /gateway/bot's
        figure at start less the IDENTIFYs this cluster sent since.
        """
        remaining = getattr(self._queue, "remaining", None)
        if isinstance(remaining, int):
            return remaining
        if self._gateway is None:
            return None
        spent = self._removed_stats.identifies
        spent += sum(shard.stats.identifies for shard in self._shards.values())
        return max(0, self._gateway.session_start_limit.remaining - spent)

    @property
    def backlog(self) -> int:
        """Events queued for `events()` and not read yet."""
        return len(self._events)

    # --- internals -------------------------------------------------------------

    def _check_changeable(self, action: str, shard_id: int) -> None:
        """Raise unless shards may be added or removed now (the cluster is up)."""
        if self._stopped:
            raise InvalidState(
                f"the cluster was shut down, so it cannot {action} shard {shard_id}: "
                "build a new cluster"
            )
        if not self._started:
            raise ClusterNotUp(self._not_up(f"cannot {action} shard {shard_id} yet"))
        if shard_id in self._changing:
            raise InvalidState(
                f"shard {shard_id} is being added or removed by another call; "
                "wait for that call to return"
            )

    def _check_not_running(self, shard_id: int) -> None:
        shard = self._shards.get(shard_id)
        if shard is None:
            return
        what = "was closed for good (restart() it, or" if shard.error else "runs (or"
        raise InvalidState(
            f"shard {shard_id} already {what} remove_shard({shard_id}) first) in this cluster"
        )

    def _retire(self, shard: Shard) -> None:
        """Keep a removed shard's counters that cluster-wide totals are made of."""
        removed = self._removed_stats
        removed.identifies += shard.stats.identifies
        removed.identify_waits += shard.stats.identify_waits
        removed.identify_wait_seconds += shard.stats.identify_wait_seconds

    def _forget_session(self, shard_id: int, session: ResumeSession | None) -> None:
        """Save a removed shard's own session, and stop saving what is read of it."""
        consumed = self._consumed
        store = self._config.session_store
        if consumed is None or store is None:
            return
        consumed.remove(shard_id)
        # After the shard's last event: its events read from here on move nothing.
        self._events.put((shard_id, ShardRemoved()))
        self._store(store, shard_id, session)

    def _fail_if_all_failed(self) -> None:
        """With shards left and all of them closed for good, end `events()` with an error."""
        shards = list(self._shards.values())
        if not shards or any(shard.error is None for shard in shards):
            return
        error = self._fatal_error()
        assert error is not None
        self._events.close(error)

    def _get(self, shard_id: int) -> Shard:
        shard = self._shards.get(shard_id)
        if shard is None:
            if not self._started:
                raise ClusterNotUp(self._not_up(f"has no shard {shard_id} yet"))
            raise ShardNonexistent(shard_id)
        return shard

    def _shard_for_request(self, guild_id: int) -> Shard:
        """The connected shard that holds `guild_id`, or a clear error."""
        total = self.total
        if total is None:
            raise ClusterNotUp(self._not_up(f"does not know which shard holds guild {guild_id}"))
        shard_id = shard_for_guild(guild_id, total)
        shard = self._shards.get(shard_id)
        if shard is None:
            raise ShardNonexistent(
                shard_id,
                f"guild {guild_id} is on shard {shard_id} of {total} ((guild_id >> 22) % "
                f"{total}), which this cluster does not run (it runs "
                f"{_id_ranges(sorted(self._shards))}): ask the process that runs it",
            )
        if self._stopped:
            raise CommandSendingError(
                "the cluster was shut down, so no shard can ask for members", shard_id=shard_id
            )
        if shard.stage is not Stage.CONNECTED:
            raise CommandSendingError(
                f"shard {shard_id}, which holds guild {guild_id}, is not connected "
                f"(stage {shard.stage.value}): wait for it (shard.wait_until_ready()) "
                "and ask again",
                shard_id=shard_id,
            )
        return shard

    def _not_up(self, what: str) -> str:
        if self._stopped:
            return f"the cluster was shut down without being brought up, so it {what}"
        return f"the cluster is not up, so it {what}: call cluster.up() first"

    def _create_shards(self) -> None:
        config = self._config
        gateway_url = config.gateway_url
        recommended = 1
        queue = config.queue
        # A given gateway URL skips the lookup, unless the scheme needs Discord's
        # count or the queue needs the identify limits.
        if (
            gateway_url is None
            or config.shard_scheme.is_auto
            or isinstance(queue, ConfigurableQueue)
        ):
            self._gateway = get_gateway_bot(config.api_base, config.token, proxy=config.proxy)
            recommended = self._gateway.shards
            gateway_url = gateway_url or self._gateway.url
        limit = self._gateway.session_start_limit if self._gateway is not None else None
        if queue is None:
            queue = LocalQueue(session_start_limit=limit)
        elif isinstance(queue, ConfigurableQueue) and limit is not None:
            queue.configure(limit.max_concurrency, limit)
        self._queue = queue
        ids, total = config.shard_scheme.resolve(recommended)
        sessions = dict(config.resume_sessions)
        for shard_id, session in sessions.items():
            why = session.mismatch(shard_id, total)
            if why is not None:
                raise ConfigError(f"resume_sessions[{shard_id}] cannot be resumed: {why}")
        if config.session_store is not None:
            # Sessions given explicitly win over stored ones.
            stored = _resumable(config.session_store.load(ids), total)
            sessions = {**stored, **sessions}
            self._consumed = ConsumedSessions(sessions)
        if isinstance(queue, ConfigurableQueue):
            # Fail before any IDENTIFY rather than spend the day's last session starts.
            queue.check_budget(sum(1 for shard_id in ids if shard_id not in sessions))
        if self._stopped:  # down() came while this waited on REST or the store
            raise ClusterStartError(
                "the cluster was shut down while up() was starting it",
                kind=ClusterStartErrorType.SHARD_START,
            )
        self._total = total
        self._gateway_url = gateway_url
        for shard_id in ids:
            self._shards[shard_id] = self._new_shard(shard_id, sessions.get(shard_id))

    def _new_shard(self, shard_id: int, session: ResumeSession | None) -> Shard:
        config = self._config
        assert self._total is not None and self._queue is not None, "made by _create_shards"
        return Shard(
            shard_id,
            self._total,
            config.token,
            config.intents,
            gateway_url=self._gateway_url,
            event_types=config.event_types,
            session=session,
            queue=self._queue,
            events=self._events,
            compression=config.compression,  # the shard resolves it
            connect_timeout=config.connect_timeout,
            max_message_size=config.max_message_size,
            ssl_context=config.ssl_context,
            proxy=config.proxy,  # checked by the config: a Proxy, False or None
            on_fatal=self._shard_failed,
            ratelimit_payloads=config.ratelimit_payloads,
            session_marks=self._consumed is not None,
            member_requests=self._member_requests,
            properties=config.identify_properties,
            large_threshold=config.large_threshold,
            presence=self._presence_for(shard_id),
        )

    def _presence_for(self, shard_id: int) -> dict[str, Any] | None:
        config = self._config
        presence = config.shard_presence(shard_id) if config.shard_presence else None
        presence = presence or config.presence
        return presence.data() if presence is not None else None

    def _wait_for_sessions(self, timeout: float | None) -> None:
        """up()'s wait: every shard READY or RESUMED, or else the first fatal close."""
        error = self._fatal_error()
        if error is not None:
            raise error
        if all(shard.stage is Stage.CONNECTED for shard in self._shards.values()):
            return
        # Nothing is down for good now: only a close from here on sets it.
        self._fatal.clear()

        def each_ready(shards: list[Shard]) -> None:
            # A shard closed for good is "ready" too (its flag is set): the
            # error check below tells the two apart.
            for shard in shards:
                shard.wait_until_ready()

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # The shards as they are now; add_shard and remove_shard wake the
            # wait to take them again (a removed shard is never ready).
            self._membership.clear()
            walker = gevent.spawn(each_ready, list(self._shards.values()))
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # The walker waits for the shards in id order; the flag wakes
                # this wait as soon as any shard, waited for yet or not, is closed.
                gevent.wait([walker, self._fatal, self._membership], timeout=remaining, count=1)
                finished = walker.ready()
            finally:
                walker.kill(block=False)
            if not self._membership.is_set() or self._fatal.is_set() or self._stopped:
                break
            if deadline is not None and time.monotonic() >= deadline:
                finished = False
                break
        error = self._fatal_error()
        if error is not None:
            raise error
        if self._stopped:
            raise ClusterStartError(
                "the cluster was shut down while it was starting",
                kind=ClusterStartErrorType.SHARD_START,
            )
        if not finished:
            waiting = [s for s in self._shards.values() if s.stage is not Stage.CONNECTED]
            raise ClusterStartError(
                f"not every shard was ready within {timeout} s: "
                + "; ".join(_why_not_ready(shard) for shard in waiting),
                kind=ClusterStartErrorType.TIMEOUT,
            )

    def _fatal_error(self) -> GClusterError | None:
        """The error of the first shard closed for good (and not restarted since)."""
        for shard_id in self._failed_order:
            failed = self._shards.get(shard_id)
            if failed is not None and failed.error is not None:
                return failed.error
        # Closed, but its greenlet has not reported it yet.
        for shard in self._shards.values():
            if shard.error is not None:
                return shard.error
        return None

    def _shard_failed(self, shard: Shard) -> None:
        if self._shards.get(shard.id) is not shard:
            return  # removed as it failed: nothing of this cluster's any more
        self._failed_order.pop(shard.id, None)
        self._failed_order[shard.id] = None
        self._fatal.set()
        if all(s.error is not None for s in self._shards.values()):
            # Nothing will ever arrive again: wake the reader with the error.
            assert shard.error is not None
            self._events.close(shard.error)

    def _shutdown(self, *, resumable: bool) -> dict[int, ResumeSession]:
        if self._stopped:
            return {}
        self._stopped = True
        if self._housekeeper is not None:
            self._housekeeper.kill()
        shards = self.shards()
        jobs = [gevent.spawn(shard.down, resumable=resumable) for shard in shards]
        gevent.joinall(jobs)
        self._events.close()
        sessions = {shard.id: job.value for shard, job in zip(shards, jobs, strict=True)}
        store = self._config.session_store
        if store is not None and not resumable:
            # Closed with 1000: those sessions are over and must not be resumed.
            # The iterator still needs `_consumed` to take the session marks
            # out of what is left in the queue; nothing is saved any more.
            self._sessions_ended = True
            for shard in shards:
                self._store(store, shard.id, None)
        else:
            self._save_sessions()
        return {shard_id: s for shard_id, s in sessions.items() if s is not None}

    # --- housekeeping ------------------------------------------------------------

    def _housekeeping(self) -> None:
        """Once a second: save changed sessions and watch the backlog."""
        warned_at = 0
        while True:
            gevent.sleep(_HOUSEKEEPING_INTERVAL)
            self._save_sessions()
            warned_at = self._check_backlog(warned_at)

    def _check_backlog(self, warned_at: int) -> int:
        """Warn as the backlog crosses the threshold and each doubling; note recovery."""
        backlog = self.backlog
        threshold = self._config.backlog_warning
        if backlog >= max(threshold, warned_at * 2):
            log.warning(
                "events() is falling behind: %d events wait unread (threshold %d); "
                "shards keep their heartbeats, but memory grows",
                backlog,
                threshold,
            )
            return backlog
        if warned_at and backlog < threshold // 2:
            log.info("events() caught up: %d events wait unread", backlog)
            return 0
        return warned_at

    def _save_sessions(self) -> None:
        store = self._config.session_store
        consumed = self._consumed
        if store is None or consumed is None or self._sessions_ended:
            return
        for shard in self._shards.values():
            consumed.started(shard.id, shard.started_session)
        for shard_id, session in consumed.take_dirty().items():
            self._store(store, shard_id, session)

    def _store(self, store: SessionStore, shard_id: int, session: ResumeSession | None) -> None:
        try:
            store.save(shard_id, session)
        except Exception as err:  # noqa: BLE001 - a store outage must not stop the shards
            log.warning("shard %d: could not save its session: %s", shard_id, err)


def check_members_timeout(timeout: object) -> float:
    """`request_members`' timeout, checked: a positive, finite number of seconds.

    Raises:
        ConfigError: anything else (None included: the wait needs a deadline).
    """
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ConfigError(
            f"request_members' timeout must be a positive number of seconds, got {timeout!r}"
        )
    return float(timeout)


def _send_member_request(
    shard: Shard,
    command: RequestGuildMembers,
    pending: PendingRequest,
    deadline: float,
    sent: Callable[[], None],
) -> None:
    """Send op 8 and call `sent`; give up as soon as the request is lost while it waits for a slot.

    The wait for a rate-limit slot may last up to a minute; down() or
    remove_shard meanwhile fails the request (`MemberRequests.shard_stopped`),
    and the caller hears of it then, not once the slot comes.
    """

    def send() -> Exception | None:
        try:
            shard.command(command, timeout=max(0.0, deadline - time.monotonic()))
        except Exception as err:  # noqa: BLE001 - raised in the caller's greenlet below
            return err
        sent()
        return None

    sender = gevent.spawn(send)
    try:
        # The sender's own wait ends by the deadline, so this one does too.
        gevent.wait([sender, pending.done], count=1)
        if not sender.ready() and pending.error is not None:
            raise pending.error  # lost before it went out: nothing to wait for
        error = sender.get()
    finally:
        sender.kill()
    if error is not None:
        raise error


def _check_member_intents(intents: int, *, full: bool, presences: bool) -> None:
    # Discord's rules for op 8: every member needs GUILD_MEMBERS, presences
    # need GUILD_PRESENCES. Refused here rather than sent: without the first
    # the gateway closes the connection, without the second it drops the flag.
    missing = []
    if full and not intents & Intents.GUILD_MEMBERS:
        missing.append("GUILD_MEMBERS (to ask for every member)")
    if presences and not intents & Intents.GUILD_PRESENCES:
        missing.append("GUILD_PRESENCES (for presences=True)")
    if missing:
        raise InvalidCommand(
            "request_members needs the intent "
            + " and the intent ".join(missing)
            + ", which this cluster does not identify with: add it to the cluster's intents "
            "(and enable it in the Developer Portal), or ask by query or user_ids"
        )


def _id_ranges(ids: list[int]) -> str:
    """`[0, 1, 2, 5]` as "shards 0-2, 5"."""
    if not ids:
        return "no shards"
    parts = []
    start = previous = ids[0]
    for shard_id in [*ids[1:], None]:
        if shard_id is not None and shard_id == previous + 1:
            previous = shard_id
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if shard_id is not None:
            start = previous = shard_id
    return "shards " + ", ".join(parts)


def _check_shard_id(shard_id: object) -> None:
    if isinstance(shard_id, bool) or not isinstance(shard_id, int):
        raise ShardSchemeError(f"shard id {shard_id!r} is not an int")


def _resumable(stored: Mapping[int, ResumeSession], total: int) -> dict[int, ResumeSession]:
    """The stored sessions that may be resumed as the shard they are stored for.

    A store is keyed by shard id alone; a bot that changed its total finds the
    old total's sessions there. Resuming one would bring that shard's events
    under the new numbering, so it is left out (with a warning) and the shard
    identifies.
    """
    usable = {}
    for shard_id, session in stored.items():
        why = session.mismatch(shard_id, total)
        if why is None:
            usable[shard_id] = session
        else:
            log.warning("shard %d: not resuming its stored session: %s", shard_id, why)
    return usable


def _why_not_ready(shard: Shard) -> str:
    # The last failure is redacted already (the transport and shard see to it).
    why = shard.last_failure or "no failure seen yet"
    return f"shard {shard.id} ({shard.stage.value}): {why}"
