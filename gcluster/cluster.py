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
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent.event import Event as Flag

from gcluster._token import Token
from gcluster.commands import Command, shard_for_guild
from gcluster.config import ClusterBuilder, ClusterConfig, ClusterOptions, make_config
from gcluster.delivery import EventQueue, resolve_decoder
from gcluster.errors import (
    ClusterNotUp,
    ClusterStartError,
    ClusterStartErrorType,
    EventStreamBusy,
    GClusterError,
    ShardNonexistent,
)
from gcluster.events import Event
from gcluster.http import GatewayBot, get_gateway_bot
from gcluster.interface import ClusterLifecycle
from gcluster.message import Message
from gcluster.protocol import ResumeSession, Stage
from gcluster.queue import ConfigurableQueue, LocalQueue, Queue
from gcluster.sessions import ConsumedSessions, SessionStore
from gcluster.shard import Information, Shard

if TYPE_CHECKING:
    # Only annotations use it, and they are strings at run time: typing_extensions
    # (whose stub type checkers carry) is never imported, on 3.10 as on 3.13.
    from typing_extensions import Unpack

__all__ = ["Cluster", "ClusterBuilder", "ClusterConfig", "ClusterOptions"]

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

    The options are typed by `ClusterOptions`, so mypy reports a misspelled
    or mistyped one.

    Raises:
        ConfigError: an option is out of range or unknown.
    """

    def __init__(self, token: str | Token, intents: int, **options: Unpack[ClusterOptions]) -> None:
        self._config = make_config(token, intents, options)
        self._events = EventQueue(resolve_decoder(self._config.decoder))
        self._shards: dict[int, Shard] = {}
        self._gateway: GatewayBot | None = None
        self._started = False
        self._stopped = False
        # What the application has finished with; only kept with a session store.
        self._consumed: ConsumedSessions | None = None
        # events(manual_finish=True): what was given and not finished yet, in order.
        # An events() iterator is open: a second one would get nothing.
        self._reading = False
        self._housekeeper: gevent.Greenlet | None = None
        self._queue: Queue | None = None
        # Shards closed for good, in the order they were, and a flag that
        # wakes up() when one is.
        self._failed_order: dict[int, None] = {}
        self._fatal = Flag()

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
        `block` it waits again.

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
            True once they all have; False on timeout, when a shard was
            closed for good, or when the cluster was never brought up.
        """
        if not self._shards:
            return False
        if not self._wait_all(Shard.wait_until_ready, timeout):
            return False
        return all(shard.wait_until_ready(0) for shard in self._shards.values())

    # --- shards --------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """The bot's shard count (all processes together); None before `up()`."""
        for shard in self._shards.values():
            return shard.total
        return None

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
        spent = sum(shard.stats.identifies for shard in self._shards.values())
        return max(0, self._gateway.session_start_limit.remaining - spent)

    @property
    def backlog(self) -> int:
        """Events queued for `events()` and not read yet."""
        return len(self._events)

    # --- internals -------------------------------------------------------------

    def _get(self, shard_id: int) -> Shard:
        shard = self._shards.get(shard_id)
        if shard is None:
            if not self._started:
                raise ClusterNotUp(self._not_up(f"has no shard {shard_id} yet"))
            raise ShardNonexistent(shard_id)
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
            self._gateway = get_gateway_bot(config.api_base, config.token)
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
        if config.session_store is not None:
            # Sessions given explicitly win over stored ones.
            sessions = {**config.session_store.load(ids), **sessions}
            self._consumed = ConsumedSessions(sessions)
        if isinstance(queue, ConfigurableQueue):
            # Fail before any IDENTIFY rather than spend the day's last session starts.
            queue.check_budget(sum(1 for shard_id in ids if shard_id not in sessions))
        for shard_id in ids:
            self._shards[shard_id] = Shard(
                shard_id,
                total,
                config.token,
                config.intents,
                gateway_url=gateway_url,
                event_types=config.event_types,
                session=sessions.get(shard_id),
                queue=queue,
                events=self._events,
                compression=config.compression,  # the shard resolves it
                connect_timeout=config.connect_timeout,
                max_message_size=config.max_message_size,
                ssl_context=config.ssl_context,
                on_fatal=self._shard_failed,
                ratelimit_payloads=config.ratelimit_payloads,
                session_marks=self._consumed is not None,
                properties=config.identify_properties,
                large_threshold=config.large_threshold,
                presence=self._presence_for(shard_id),
            )

    def _presence_for(self, shard_id: int) -> dict[str, Any] | None:
        config = self._config
        presence = config.shard_presence(shard_id) if config.shard_presence else None
        presence = presence or config.presence
        return presence.data() if presence is not None else None

    def _wait_all(self, wait: Callable[[Shard, float | None], bool], timeout: float | None) -> bool:
        """Run `wait(shard, remaining)` for each shard within one overall timeout.

        Returns False on timeout; stops early (True) when a shard failed, so the
        caller can raise its error without waiting for the others.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for shard in self._shards.values():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if shard.error is None and not wait(shard, remaining) and shard.error is None:
                return False
            if shard.error is not None:
                return True
        return True

    def _wait_for_sessions(self, timeout: float | None) -> None:
        """up()'s wait: every shard READY or RESUMED, or else the first fatal close."""
        error = self._fatal_error()
        if error is not None:
            raise error
        shards = list(self._shards.values())
        if all(shard.stage is Stage.CONNECTED for shard in shards):
            return
        # Nothing is down for good now: only a close from here on sets it.
        self._fatal.clear()

        def each_ready() -> None:
            # A shard closed for good is "ready" too (its flag is set): the
            # error check below tells the two apart.
            for shard in shards:
                shard.wait_until_ready()

        walker = gevent.spawn(each_ready)
        try:
            # The walker waits for the shards in id order; the flag wakes
            # this wait as soon as any shard, waited for yet or not, is closed.
            gevent.wait([walker, self._fatal], timeout=timeout, count=1)
            finished = walker.ready()
        finally:
            walker.kill(block=False)
        error = self._fatal_error()
        if error is not None:
            raise error
        if self._stopped:
            raise ClusterStartError(
                "the cluster was shut down while it was starting",
                kind=ClusterStartErrorType.SHARD_START,
            )
        if not finished:
            waiting = [shard for shard in shards if shard.stage is not Stage.CONNECTED]
            raise ClusterStartError(
                f"not every shard was ready within {timeout} s: "
                + "; ".join(_why_not_ready(shard) for shard in waiting),
                kind=ClusterStartErrorType.TIMEOUT,
            )

    def _fatal_error(self) -> GClusterError | None:
        """The error of the first shard closed for good (and not restarted since)."""
        for shard_id in self._failed_order:
            error = self._shards[shard_id].error
            if error is not None:
                return error
        # Closed, but its greenlet has not reported it yet.
        for shard in self._shards.values():
            if shard.error is not None:
                return shard.error
        return None

    def _shard_failed(self, shard: Shard) -> None:
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
            self._consumed = None
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
        if store is None or consumed is None:
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


def _why_not_ready(shard: Shard) -> str:
    # The last failure is redacted already (the transport and shard see to it).
    why = shard.last_failure or "no failure seen yet"
    return f"shard {shard.id} ({shard.stage.value}): {why}"
