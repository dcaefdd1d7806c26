"""StreamWorker: a worker process's view of the events a `StreamSink` publishes.

Workers read the event stream through a Redis consumer group: each event goes
to one worker of the group, and several groups (e.g. a moderation service and
a logger) each see every event. `events()` yields the same `(shard_id, Event)`
pairs as `cluster.events()`, so a handler moves from the gateway process to a
worker by changing the line that makes the iterator:

    for shard_id, event in cluster.events():                          # in process
    for shard_id, event in StreamWorker(url, "bot", "w1").events():   # in a worker

Delivery is at-least-once. An event is acknowledged (XACK) when the loop asks
for the next one, i.e. once its handler has returned; an event whose worker
died before that stays pending, and about `claim_idle` seconds later another
worker of the group claims it (XAUTOCLAIM) and handles it. A restarted worker
with the same consumer name first takes back its own pending events. So a
crash may deliver an event twice, never zero times, as long as the stream
still holds it (the sink trims to about `maxlen` entries). `stop()` (or a
signal, `stop_on_signals`) lets the worker handle what it has read before it
ends, so a worker that is told to stop leaves nothing pending for others to
wait `claim_idle` for. The claim pass also deletes from the group the
consumers of workers that are gone, once they hold nothing.

A worker started while Redis is down waits for it, as it does when Redis
goes away later: one warning, retries with a backoff, one line when Redis
answers again.

It is plain blocking code: Redis calls run in gevent's thread pool unless
sockets are monkey-patched, so it suits an ordinary program, a gevent program
with or without monkey-patching, and a `Dispatcher` (which reads any
`events()` source).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

import gevent

from gcluster._json import JsonReady
from gcluster.backoff import Backoff
from gcluster.commands import Command, encode, shard_for_guild
from gcluster.errors import ConfigError, RedisCallError
from gcluster.events import Event, EventType, EventTypeFlags
from gcluster.redis._calls import call, stream_reply, unreachable
from gcluster.redis._client import Client, hash_tag, make_client
from gcluster.redis.inbox import INBOX_MAXLEN, default_consumer, inbox_key, shard_count_key
from gcluster.redis.streams import (
    StreamError,
    decode_event,
    default_stream,
    event_stream_key,
    warn_of_old_stream,
)

__all__ = ["StreamWorker", "WorkerStats"]

log = logging.getLogger(__name__)

# How long the shard count read from Redis is trusted before it is read again.
_TOTAL_TTL: Final = 60.0
# The claim pass runs every claim_idle / _CLAIM_SLICES seconds, at least
# _CLAIM_EVERY_MIN apart. An event becomes claimable claim_idle after it was
# delivered, and is claimed at the first pass after that: within claim_idle
# × (1 + 1/8), plus the batch the worker is handling then. A pass at the exact
# due time would need the pending entries' idle times, which XPENDING's
# summary does not give: only listing every pending entry does, which costs
# more than the XAUTOCLAIM per stream it would save (every 3.75 s by default).
_CLAIM_SLICES: Final = 8
_CLAIM_EVERY_MIN: Final = 0.1
# A retry's wait looks at stop() and probes Redis this often. stop() may come
# from a signal handler or another thread, neither of which can wake a
# gevent wait, so the wait polls the flag.
_STOP_CHECK: Final = 0.1
# Error replies that pass without anyone's help (a server loading its data,
# a busy script, a replica without its master, memory freed by trimming):
# retried at start like an outage. Any other reply (WRONGTYPE: the key is not
# a stream; NOPERM) stays the same however long the worker waits.
_PASSING_REPLIES: Final = ("LOADING", "BUSY", "MASTERDOWN", "OOM")

# Deletes the group's consumers that hold no pending entry and have been idle
# (no read, claim or acknowledgement attempted) longer than ARGV[3] ms,
# except ARGV[2], the caller; returns name, idle ms, name, idle ms, ... One
# script, so a consumer that reads between the look and the deletion cannot
# have its new entries deleted with it (XGROUP DELCONSUMER drops them).
_DELETE_DEAD_CONSUMERS: Final = """
local deleted = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local info = {}
    for i = 1, #consumer, 2 do
        info[consumer[i]] = consumer[i + 1]
    end
    if info['name'] ~= ARGV[2] and info['pending'] == 0
            and info['idle'] > tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
        deleted[#deleted + 1] = info['name']
        deleted[#deleted + 1] = info['idle']
    end
end
return deleted
"""


@dataclass(frozen=True, slots=True)
class WorkerStats(JsonReady):
    """A snapshot of a worker's counters (`StreamWorker.stats()`).

    Attributes:
        received: events read (new, claimed or taken back), including undecodable ones.
        acked: events acknowledged.
        claimed: events claimed from workers that stopped acknowledging.
        lost: events trimmed from the stream before any worker handled them.
        undecodable: entries that were not event envelopes (acknowledged and skipped).
        commands: commands sent to the gateway processes.
        failures: Redis calls that failed (each is retried).
        removed_consumers: consumers of stopped or dead workers this worker
            deleted from the group (XGROUP DELCONSUMER), each holding nothing.
    """

    received: int
    acked: int
    claimed: int
    lost: int
    undecodable: int
    commands: int
    failures: int
    removed_consumers: int = 0


class StreamWorker:
    """One consumer of a group reading the events a `StreamSink` publishes.

    Args:
        url: e.g. "redis://localhost:6379/0": a single server, or any node of a
            Redis Cluster (found out at first use); None with `client`.
        group: the consumer group: workers sharing it share the events.
        consumer: this worker's name in the group; default `host-pid`. A
            worker restarted with the same name takes back its pending events at once.
        stream: the sink's `stream`; default `default_stream(namespace)`,
            ``{namespace}:events``, the sink's default.
        event_types: for a sink with ``per_event_streams=True``: the event
            types (`EventTypeFlags`, or `EventType`\\ s or names) whose streams to
            read. None reads the one stream.
        namespace: the bot's namespace (the sink's): the default stream's
            and the command inboxes' key prefix and hash tag.
        batch: events read per XREADGROUP.
        block: seconds one read waits for events; `stop()` takes effect within
            it when no event comes.
        claim_idle: seconds an event may stay unacknowledged before another
            worker claims it (within claim_idle/8 more); longer than the
            slowest handler.
        dead_consumer_idle: seconds a consumer of the group may stay idle
            (no read attempted) while holding no pending event before this
            worker deletes it from the group, with one log line; default
            ``max(2 * claim_idle, 60)``: a dead worker's events are claimed
            after claim_idle, so by then it holds nothing, and a minute keeps
            a worker that only paused (a Redis outage on its side) in the
            group. A live worker reads every `block` seconds, and one
            handling an event holds it pending, so neither is ever deleted
            (and one deleted would be made again by its next read).
            ``math.inf`` deletes none.
        ack_batch: acknowledge this many handled events at once (1: each as
            soon as its handler returns; more: fewer round trips, more events
            handled twice after a crash).
        start: where a new group starts: "0" (everything the stream holds) or
            "$" (only events published from now on).
        total: the bot's shard count, to route commands by guild; default the
            count the gateway processes record in Redis.
        client: a ready redis-py client instead of `url`.
        connect_timeout, timeout: seconds to connect to Redis and to wait for a reply.

    Raises:
        ConfigError: bad numbers, names, event types or URL, or both or neither
            of url and client.

    Not thread-safe, except `stop()`: use one worker per thread.
    """

    def __init__(
        self,
        url: str | None,
        group: str,
        consumer: str | None = None,
        *,
        stream: str | None = None,
        event_types: EventTypeFlags | Iterable[EventType | str] | None = None,
        namespace: str = "gcluster",
        batch: int = 100,
        block: float = 1.0,
        claim_idle: float = 30.0,
        dead_consumer_idle: float | None = None,
        ack_batch: int = 1,
        start: str = "0",
        total: int | None = None,
        client: Client | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        if not group:
            raise ConfigError("group must be a non-empty name")
        if batch < 1 or ack_batch < 1:
            raise ConfigError("batch and ack_batch must be at least 1")
        if not 0 < block < timeout:
            raise ConfigError(f"block must be positive and below timeout ({timeout} s)")
        if claim_idle <= 0:
            raise ConfigError(f"claim_idle must be positive, not {claim_idle}")
        if dead_consumer_idle is None:
            dead_consumer_idle = max(2 * claim_idle, 60.0)
        if not dead_consumer_idle > block:
            # A live worker's consumer goes up to `block` seconds between reads.
            raise ConfigError(
                f"dead_consumer_idle must be longer than block ({block} s), "
                f"not {dead_consumer_idle}"
            )
        if total is not None and total < 1:
            raise ConfigError(f"total must be at least 1, not {total}")
        hash_tag(namespace)  # checks it
        if stream is None:
            stream = default_stream(namespace)
        self.group = group
        self.consumer = consumer or default_consumer()
        self.stream = stream
        self.namespace = namespace
        self.batch = batch
        self.block = block
        self.claim_idle = claim_idle
        self.dead_consumer_idle = dead_consumer_idle
        self.ack_batch = ack_batch
        self.start = start
        self.keys = _stream_keys(stream, event_types)
        self._total = total
        self._total_given = total is not None
        self._total_at = 0.0
        self._owns_client = client is None
        self._redis = make_client(url, client, connect_timeout=connect_timeout, timeout=timeout)
        self._stopped = False
        self._stopped_by: str | None = None  # the signal's name, when one stopped it
        self._gateway_seen: bool | None = None  # the shard count key exists; None: not known
        self._unacked: list[tuple[str, Any]] = []
        self._received = 0
        self._acked = 0
        self._claimed = 0
        self._lost = 0
        self._undecodable = 0
        self._commands = 0
        self._failures = 0
        self._removed_consumers = 0
        self._failing_since: float | None = None

    @property
    def _client(self) -> Client:
        # The first use asks the node whether it is part of a Redis Cluster.
        return self._redis.get()

    def __repr__(self) -> str:
        return (
            f"<StreamWorker {self._redis.describe()} group={self.group!r} "
            f"consumer={self.consumer!r} streams={self.keys}>"
        )

    def __enter__(self) -> StreamWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- events ------------------------------------------------------------------

    def events(self) -> Iterator[tuple[int, Event]]:
        """The group's events for this worker, as `(shard_id, Event)`, until `stop()`.

        Each event is acknowledged when the loop comes back for the next one.
        After `stop()` the loop still gets the events already read (they are
        delivered to this consumer: handling them is the cheapest way to
        leave nothing pending), acknowledges them and ends. Leaving the loop
        otherwise (break, an exception) leaves the current event, and the
        rest of its batch, pending: delivered again to this consumer name, or
        claimed by another worker after `claim_idle`.

        While Redis cannot be reached, at start too, the worker logs one
        warning and retries with a backoff until Redis answers (one line says
        so) or `stop()` is called (the loop then ends, without an error).

        Raises:
            StreamError: Redis refused to set up the group with an error
                waiting does not change: a key of the stream's name that is
                not a stream (WRONGTYPE), a missing permission (NOPERM).
        """
        if not self._set_up():
            return
        self._look_for_gateway()
        own = {key: "0" for key in self.keys}  # our own pending events, paged through first
        claim_cursors = dict.fromkeys(self.keys, "0-0")
        claim_every = max(_CLAIM_EVERY_MIN, self.claim_idle / _CLAIM_SLICES)
        next_claim = time.monotonic() + claim_every
        tidy = False  # a whole claim pass is done: dead consumers hold nothing now
        backoff = Backoff(base=0.1, cap=5.0)
        try:
            while not self._stopped:
                try:
                    now = time.monotonic()
                    if own:
                        entries = self._read_own(own)
                    elif tidy:
                        tidy = False  # a failure skips it until the next pass
                        entries = []
                        self._seen()
                        self._delete_dead_consumers()
                        self._look_for_gateway()
                    elif now >= next_claim:
                        entries = self._claim(claim_cursors)
                        if all(c in ("0-0", b"0-0") for c in claim_cursors.values()):
                            tidy = True
                            next_claim = time.monotonic() + claim_every
                    else:
                        self._flush_acks()
                        # No longer than until the next claim pass is due.
                        entries = self._read_new(min(self.block, next_claim - now))
                except RedisCallError as err:
                    if err.reply is not None and "NOGROUP" in err.reply:
                        # The stream or group is gone (Redis restarted, or someone
                        # deleted it): a new stream starts at its first entry.
                        log.warning(
                            "stream worker: group %r is gone from Redis; creating it again",
                            self.group,
                        )
                        self._unacked.clear()
                        self._safe_setup(backoff)
                        continue
                    backoff = self._failure(err, backoff)
                    continue
                self._answering()
                backoff = backoff.reset()
                # Every entry read is handled, also after stop(): they are
                # pending under this consumer until acknowledged.
                for key, message_id, fields in entries:
                    self._received += 1
                    try:
                        item = decode_event(fields)
                    except ValueError as err:
                        self._undecodable += 1
                        log.warning(
                            "stream worker: skipping entry %s of %s: %s",
                            _text(message_id),
                            key,
                            err,
                        )
                        self._ack(key, message_id)
                        continue
                    yield item
                    self._ack(key, message_id)
        finally:
            try:
                self._flush_acks()
            except RedisCallError as err:
                log.warning(
                    "stream worker: %d handled events left unacknowledged (%s); "
                    "they will be delivered again",
                    len(self._unacked),
                    err,
                )
            if self._stopped_by is not None:
                log.info("stream worker: %r stopped on %s", self.consumer, self._stopped_by)

    @property
    def stopped(self) -> bool:
        """`stop()` was called (or `close()`, or a signal of `stop_on_signals`)."""
        return self._stopped

    def stop(self) -> None:
        """End `events()` after the events already read; thread-safe and final.

        The loop gets the rest of the batch in hand (no more is read),
        acknowledges it and ends: a worker told to stop leaves nothing
        pending. With no event in hand it ends within `block` seconds (a
        read in progress), or at once while it waits to retry Redis.
        `events()` called after `stop()` ends at once.
        """
        self._stopped = True

    def stop_on_signals(self, *signals: int) -> None:
        """Call `stop()` when one of `signals` arrives, e.g. SIGTERM and SIGINT.

        Installs plain `signal.signal` handlers, which Python runs in the
        main thread: call it there, before `events()`. The first signal puts
        the previous handlers back, so a second one does what it did before
        (a second Ctrl-C raises KeyboardInterrupt in a handler that hangs;
        a second SIGTERM ends the process).

        Raises:
            ConfigError: called from another thread than the main one, no
                signal named, or one Python cannot handle (SIGKILL).
        """
        if not signals:
            raise ConfigError("name at least one signal, e.g. signal.SIGTERM")
        if threading.current_thread() is not threading.main_thread():
            raise ConfigError(
                "stop_on_signals() must be called from the main thread (Python runs "
                "signal handlers only there); from another thread, call worker.stop() "
                "from a handler of your own"
            )
        previous: dict[int, Any] = {}

        def stop(number: int, frame: FrameType | None) -> None:
            # Only a flag, and the handlers put back: no lock is taken in a
            # signal handler (the loop logs the stop when it ends).
            for installed, handler in previous.items():
                signal.signal(installed, handler)
            self._stopped_by = _signal_name(number)
            self._stopped = True

        for number in signals:
            try:
                old = signal.signal(number, stop)
            except (ValueError, OSError, TypeError) as err:
                for installed, handler in previous.items():
                    signal.signal(installed, handler)
                raise ConfigError(f"cannot handle signal {number!r}: {err}") from err
            # None: a handler not installed from Python; the default is the closest.
            previous[int(number)] = signal.SIG_DFL if old is None else old

    def close(self) -> None:
        """Stop, and close the connections of a client this worker made."""
        self._stopped = True
        if self._owns_client:
            self._redis.close()

    def stats(self) -> WorkerStats:
        """The counters now."""
        return WorkerStats(
            received=self._received,
            acked=self._acked,
            claimed=self._claimed,
            lost=self._lost,
            undecodable=self._undecodable,
            commands=self._commands,
            failures=self._failures,
            removed_consumers=self._removed_consumers,
        )

    # --- commands ------------------------------------------------------------------

    def send_command(
        self,
        command: Command | Any,
        *,
        guild_id: int | str | None = None,
        shard_id: int | None = None,
    ) -> str:
        """Send a gateway command through the shard that owns a guild, or through a shard.

        The command is validated and encoded here (`InvalidCommand` and
        `PayloadTooLarge` are raised at the caller's line) and appended to the
        shard's inbox; the gateway process holding the shard sends it, within
        its rate limit. Without `guild_id` and `shard_id`, a command with a
        `guild_id` of its own (RequestGuildMembers, UpdateVoiceState) goes to that guild's shard.

        Returns:
            The inbox entry's id.

        Raises:
            InvalidCommand, PayloadTooLarge: the command is not valid.
            ConfigError: both or neither of guild_id and shard_id, or a shard
                id outside the bot's shards.
            StreamError: Redis could not take it, or the shard count to route
                by guild is not in Redis (no gateway process has run on the
                namespace: a wrong namespace?).
        """
        payload = encode(command)
        if guild_id is None and shard_id is None:
            guild_id = getattr(command, "guild_id", None)
        if (guild_id is None) == (shard_id is None):
            raise ConfigError("give exactly one of guild_id and shard_id")
        if guild_id is not None:
            target = shard_for_guild(guild_id, self._shard_total())
        else:
            assert shard_id is not None
            if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
                raise ConfigError(f"shard_id must be an int >= 0, not {shard_id!r}")
            if self._total is not None and shard_id >= self._total:
                raise ConfigError(f"no shard {shard_id}: the bot runs {self._total} shards")
            target = shard_id
        fields = {"p": payload, "by": self.consumer}
        try:
            message_id = call(
                self._client.xadd,
                inbox_key(self.namespace, target),
                fields,
                maxlen=INBOX_MAXLEN,
            )
        except RedisCallError as err:
            raise StreamError(
                f"stream worker: could not send a command to shard {target}'s inbox "
                f"at Redis {self._redis.describe()}: {err}"
            ) from err
        self._commands += 1
        return _text(message_id)

    def command(self, shard_id: int, command: Command | Any) -> str:
        """`send_command(command, shard_id=shard_id)`, shaped like `Cluster.command`."""
        return self.send_command(command, shard_id=shard_id)

    def _shard_total(self) -> int:
        if self._total_given and self._total is not None:
            return self._total
        now = time.monotonic()
        if self._total is None or now - self._total_at > _TOTAL_TTL:
            key = shard_count_key(self.namespace)
            try:
                raw = call(self._client.get, key)
            except RedisCallError as err:
                raise StreamError(
                    f"stream worker: could not read the shard count of namespace "
                    f"{self.namespace!r} ({key}) at Redis {self._redis.describe()}: {err}"
                ) from err
            if raw is None:
                raise StreamError(
                    f"stream worker: the shard count of namespace {self.namespace!r} is "
                    f"unknown ({key} is absent): no gateway process has run on this "
                    "namespace; is namespace= right? Pass total= to route by guild "
                    "without it"
                )
            try:
                total = int(raw)
            except ValueError:
                total = 0
            if total < 1:
                raise StreamError(
                    f"stream worker: {key} holds {_text(raw)!r}, not a shard count "
                    f"(namespace {self.namespace!r}); pass total= to route by guild"
                )
            self._total = total
            self._total_at = now
        return self._total

    # --- Redis ---------------------------------------------------------------------

    def _set_up(self) -> bool:
        """Create the group on every stream, waiting for Redis; False once stopped first."""
        backoff = Backoff(base=0.1, cap=5.0)
        while not self._stopped:
            try:
                self._create_groups(self.start)
            except RedisCallError as err:
                if _permanent(err):
                    wrong_type = err.reply is not None and "WRONGTYPE" in err.reply
                    raise StreamError(
                        f"stream worker: could not create group {self.group!r} on "
                        f"{', '.join(self.keys)} at Redis {self._redis.describe()}: {err}"
                        + (" (the key holds something other than a stream)" if wrong_type else "")
                    ) from err
                backoff = self._failure(err, backoff)
                continue
            self._answering()
            warn_of_old_stream(self._redis, self.stream, self.namespace, "stream worker")
            return True
        return False

    def _safe_setup(self, backoff: Backoff) -> None:
        try:
            self._create_groups("0")
        except RedisCallError as err:
            self._failure(err, backoff)

    def _create_groups(self, start: str) -> None:
        for key in self.keys:
            try:
                call(self._client.xgroup_create, key, self.group, id=start, mkstream=True)
            except RedisCallError as err:
                if err.reply is None or "BUSYGROUP" not in err.reply:
                    raise

    def _read_new(self, block: float) -> list[tuple[str, Any, Any]]:
        reply = call(
            self._client.xreadgroup,
            self.group,
            self.consumer,
            {key: ">" for key in self.keys},
            count=self.batch,
            block=max(1, int(block * 1000)),  # BLOCK 0 would wait for ever
        )
        return self._entries(reply)

    def _read_own(self, own: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """The next page of events delivered to this consumer before and not acknowledged."""
        reply: Any = call(self._client.xreadgroup, self.group, self.consumer, own, count=self.batch)
        found: dict[str, list[Any]] = {}
        for key, entries in stream_reply(reply):
            found[_text(key)] = entries
        for key in list(own):
            entries = found.get(key) or []
            if entries:
                own[key] = entries[-1][0]
            else:
                del own[key]
        return self._entries(reply)

    def _claim(self, cursors: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        """Events idle past `claim_idle` in other consumers (they died): now ours."""
        out: list[tuple[str, Any, Any]] = []
        for key, cursor in cursors.items():
            reply = call(
                self._client.xautoclaim,
                key,
                self.group,
                self.consumer,
                int(self.claim_idle * 1000),
                start_id=cursor,
                count=self.batch,
            )
            cursors[key] = reply[0]
            claimed = [(key, message_id, fields) for message_id, fields in reply[1] or ()]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:
                self._lost += len(deleted)
                log.warning(
                    "stream worker: %d pending events of %s were trimmed from the stream "
                    "before a worker handled them (maxlen too small for the backlog?)",
                    len(deleted),
                    key,
                )
            if claimed:
                self._claimed += len(claimed)
                log.info(
                    "stream worker: claimed %d events of %s left unacknowledged for %.0f s",
                    len(claimed),
                    key,
                    self.claim_idle,
                )
            out.extend(claimed)
        return out

    def _entries(self, reply: Any) -> list[tuple[str, Any, Any]]:
        out: list[tuple[str, Any, Any]] = []
        for key, entries in stream_reply(reply):
            name = _text(key)
            for message_id, fields in entries or ():
                if message_id is None:
                    continue
                if not fields:
                    # Trimmed from the stream while pending: nothing left to handle.
                    self._lost += 1
                    self._unacked.append((name, message_id))
                    continue
                out.append((name, message_id, fields))
        return out

    def _ack(self, key: str, message_id: Any) -> None:
        self._unacked.append((key, message_id))
        if len(self._unacked) >= self.ack_batch:
            try:
                self._flush_acks()
            except RedisCallError as err:
                # Kept: retried with the next flush.
                self._failures += 1
                log.warning("stream worker: could not acknowledge events: %s", err)

    def _flush_acks(self) -> None:
        if not self._unacked:
            return
        by_key: dict[str, list[Any]] = {}
        for key, message_id in self._unacked:
            by_key.setdefault(key, []).append(message_id)
        if len(by_key) == 1:
            key, ids = next(iter(by_key.items()))
            call(self._client.xack, key, self.group, *ids)
        else:
            call(self._xack_many, self._client, by_key)
        self._acked += len(self._unacked)
        self._unacked.clear()

    def _xack_many(self, client: Client, by_key: dict[str, list[Any]]) -> None:
        pipe = client.pipeline(transaction=False)
        for key, ids in by_key.items():
            pipe.xack(key, self.group, *ids)
        pipe.execute()

    def _seen(self) -> None:
        """Reset this consumer's idle time, which other workers' `_delete_dead_consumers` reads.

        Redis 7.0 counts neither a blocking read that returns nothing nor an
        XAUTOCLAIM that claims nothing as the consumer being seen, so a
        worker without events would look idle to the others and be deleted
        (harmless, its next read makes it again, but logged as a dead
        worker). A read of its own pending history counts on every version;
        what it returns is discarded (those events are in hand already).
        """
        call(
            self._client.xreadgroup,
            self.group,
            self.consumer,
            dict.fromkeys(self.keys, "0"),
            count=1,
        )

    def _delete_dead_consumers(self) -> None:
        """Delete the group's consumers that hold nothing and stopped reading (workers gone)."""
        if math.isinf(self.dead_consumer_idle):
            return
        script = self._redis.script(_DELETE_DEAD_CONSUMERS)
        idle_ms = int(self.dead_consumer_idle * 1000)
        for key in self.keys:
            try:
                reply: Any = call(script, keys=[key], args=[self.group, self.consumer, idle_ms])
            except RedisCallError as err:
                if _permanent(err) and "NOGROUP" not in (err.reply or ""):
                    # Refused for good (an ACL without XGROUP DELCONSUMER, a
                    # proxy without scripts): reading matters, tidying does not.
                    log.warning(
                        "stream worker: cannot delete dead consumers from group %r (%s); "
                        "leaving them in the group",
                        self.group,
                        err,
                    )
                    self.dead_consumer_idle = math.inf
                    return
                raise
            for name, idle in zip(reply[::2], reply[1::2], strict=True):
                self._removed_consumers += 1
                log.info(
                    "stream worker: deleted consumer %r from group %r of %s: idle for "
                    "%.0f s with no pending event (its worker stopped or died)",
                    _text(name),
                    self.group,
                    key,
                    int(idle) / 1000,
                )

    def _look_for_gateway(self) -> None:
        """Warn once when no gateway process has run on the namespace; say when one has."""
        if self._gateway_seen:
            return
        key = shard_count_key(self.namespace)
        try:
            seen = bool(call(self._client.exists, key))
        except RedisCallError:
            return  # the next claim pass asks again; the calls that matter report failures
        if seen and self._gateway_seen is False:
            log.info(
                "stream worker: %s appeared: a gateway process runs on namespace %r",
                key,
                self.namespace,
            )
        elif not seen and self._gateway_seen is None:
            log.warning(
                "stream worker: no gateway process has run on namespace %r (%s is absent): "
                "is --namespace / namespace= right? Reading %s anyway",
                self.namespace,
                key,
                ", ".join(self.keys),
            )
        self._gateway_seen = seen

    def _answering(self) -> None:
        """Redis answered: say so once after a failure."""
        if self._failing_since is not None:
            log.info(
                "stream worker: Redis answers again after %.1f s",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None

    def _failure(self, err: RedisCallError, backoff: Backoff) -> Backoff:
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(
                "stream worker: Redis at %s failed: %s; retrying",
                self._redis.describe(),
                err,
            )
        backoff = backoff.increment()
        self._wait_to_retry(backoff.delay(random.random), err)
        return backoff

    def _wait_to_retry(self, delay: float, err: RedisCallError) -> None:
        """Sleep out `delay`; less on `stop()`, or once Redis answers again.

        Like `RedisTarget.sleep_until_served`: while Redis cannot be reached,
        the stream's node is probed every `_STOP_CHECK` seconds (a promoted
        replica is noticed at once); and the wait also ends on `stop()`.
        """
        deadline = time.monotonic() + delay
        probing = unreachable(err)
        while not self._stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            gevent.sleep(min(left, _STOP_CHECK))
            if probing and not self._stopped and self._redis.answers(self.keys[0]):
                return


def _permanent(err: RedisCallError) -> bool:
    """Redis refused a command in a way that waiting does not change."""
    if unreachable(err):
        return False
    reply = err.reply or ""
    return not reply.startswith(_PASSING_REPLIES)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stream_keys(
    stream: str, event_types: EventTypeFlags | Iterable[EventType | str] | None
) -> list[str]:
    if not stream:
        raise ConfigError("stream must be a non-empty key")
    if event_types is None:
        return [stream]
    names: list[str] = []
    if isinstance(event_types, EventTypeFlags):
        # The single-bit members set in event_types (what iterating a flag
        # value gives on 3.11+; 3.10 cannot iterate one, and iterating the
        # class there also yields the intent-named groups).
        names = [
            flag.name
            for flag in EventTypeFlags
            if flag.name and flag.value & (flag.value - 1) == 0 and flag in event_types
        ]
    else:
        for item in event_types:
            if isinstance(item, EventType):
                names.append(item.value)
            elif isinstance(item, str) and item:
                names.append(item)
            else:
                raise ConfigError(f"event_types holds {item!r}: not an EventType or a name")
    if not names:
        raise ConfigError("event_types names no event")
    return [event_stream_key(stream, name) for name in dict.fromkeys(names)]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
