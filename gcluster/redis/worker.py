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
died before that stays pending, and after `claim_idle` seconds another worker
of the group claims it (XAUTOCLAIM) and handles it. A restarted worker with
the same consumer name first takes back its own pending events. So a crash
may deliver an event twice, never zero times, as long as the stream still
holds it (the sink trims to about `maxlen` entries).

It is plain blocking code: Redis calls run in gevent's thread pool unless
sockets are monkey-patched, so it suits an ordinary program, a gevent program
with or without monkey-patching, and a `Dispatcher` (which reads any
`events()` source).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from gcluster._json import JsonReady
from gcluster.backoff import Backoff
from gcluster.commands import Command, encode, shard_for_guild
from gcluster.errors import ConfigError, RedisCallError
from gcluster.events import Event, EventType, EventTypeFlags
from gcluster.redis._calls import call, stream_reply
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
    """

    received: int
    acked: int
    claimed: int
    lost: int
    undecodable: int
    commands: int
    failures: int


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
        block: seconds one read waits for events; `stop()` takes effect within it.
        claim_idle: seconds an event may stay unacknowledged before another
            worker claims it; longer than the slowest handler.
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
        self.ack_batch = ack_batch
        self.start = start
        self.keys = _stream_keys(stream, event_types)
        self._total = total
        self._total_given = total is not None
        self._total_at = 0.0
        self._owns_client = client is None
        self._redis = make_client(url, client, connect_timeout=connect_timeout, timeout=timeout)
        self._stopped = False
        self._unacked: list[tuple[str, Any]] = []
        self._received = 0
        self._acked = 0
        self._claimed = 0
        self._lost = 0
        self._undecodable = 0
        self._commands = 0
        self._failures = 0
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

        Each event is acknowledged when the loop comes back for the next one;
        leaving the loop (break, an exception) leaves the current event
        unacknowledged, to be delivered again.

        Raises:
            StreamError: Redis could not be reached to set up the group. Later
                failures are logged and retried.
        """
        self._stopped = False
        self._setup_groups()
        own = {key: "0" for key in self.keys}  # our own pending events, paged through first
        claim_cursors = dict.fromkeys(self.keys, "0-0")
        next_claim = time.monotonic() + self.claim_idle / 2
        backoff = Backoff(base=0.1, cap=5.0)
        try:
            while not self._stopped:
                try:
                    if own:
                        entries = self._read_own(own)
                    elif time.monotonic() >= next_claim:
                        entries = self._claim(claim_cursors)
                        if all(c in ("0-0", b"0-0") for c in claim_cursors.values()):
                            next_claim = time.monotonic() + max(1.0, self.claim_idle / 2)
                    else:
                        self._flush_acks()
                        entries = self._read_new()
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
                if self._failing_since is not None:
                    log.info(
                        "stream worker: Redis answers again after %.1f s",
                        time.monotonic() - self._failing_since,
                    )
                    self._failing_since = None
                backoff = backoff.reset()
                for key, message_id, fields in entries:
                    if self.stopped:
                        break
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

    @property
    def stopped(self) -> bool:
        """`stop()` was called (or `close()`)."""
        return self._stopped

    def stop(self) -> None:
        """End `events()` after the current event (within `block` seconds). Thread-safe."""
        self._stopped = True

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
            StreamError: Redis could not take it, or the shard count is unknown.
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
            try:
                raw = call(self._client.get, shard_count_key(self.namespace))
            except RedisCallError as err:
                raise StreamError(f"stream worker: could not read the shard count: {err}") from err
            if raw is None:
                raise StreamError(
                    f"the shard count is not in Redis ({shard_count_key(self.namespace)}): "
                    "no gateway process serves commands yet; pass total= to route by guild"
                )
            self._total = int(raw)
            self._total_at = now
        return self._total

    # --- Redis ---------------------------------------------------------------------

    def _setup_groups(self) -> None:
        try:
            self._create_groups(self.start)
        except RedisCallError as err:
            raise StreamError(
                f"stream worker: could not create group {self.group!r} at Redis "
                f"{self._redis.describe()}: {err}"
            ) from err
        warn_of_old_stream(self._redis, self.stream, self.namespace, "stream worker")

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

    def _read_new(self) -> list[tuple[str, Any, Any]]:
        reply = call(
            self._client.xreadgroup,
            self.group,
            self.consumer,
            {key: ">" for key in self.keys},
            count=self.batch,
            block=int(self.block * 1000),
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
        # Early once the stream's slot is served again (a promoted replica).
        self._redis.sleep_until_served(self.keys[0], backoff.delay(random.random), err)
        return backoff


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
