"""StreamSink: a cluster's events published to Redis Streams, for worker processes to handle.

One gateway process keeps the shards' connections; any number of worker
processes, on any machines, handle the events (see `gcluster.redis.worker`).
The sink reads `cluster.events()` and appends every event to a Redis stream
(`XADD ... MAXLEN ~`), pipelined in batches from gevent's thread pool, so the
shards' greenlets keep the hub while Redis answers.

Each stream entry is a compact envelope with the same four fields, which
Redis stores once per node of the stream:

    shard   the shard id
    t       the event's name (Discord's `t`, or the lifecycle kind)
    s       the dispatch sequence; empty for everything else
    d       the event's data as JSON (SHARD_PAYLOAD: the raw payload bytes)

Backpressure, when Redis is slow or unreachable: the sink keeps up to
`buffer` events it has read and not yet published, retrying the oldest batch
with a backoff. When the buffer is full it stops reading `cluster.events()`:
new events wait in the cluster's queue (`cluster.backlog`), the shards keep
reading their sockets and heartbeating, and a warning is logged. Reading
resumes as soon as Redis takes the buffered events. Nothing is dropped while
the process lives; `stop(timeout)` reports events it could not publish.

With a session store, the cluster saves each shard's session only up to the
events Redis has taken (the sink reads with ``events(manual_finish=True)``
and calls `Cluster.finish` after each pipeline): a gateway process that dies
with events in its buffer leaves a session that RESUMEs before them, so the
next process publishes them again rather than losing them.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, Protocol

import gevent
import redis
import ujson
from gevent.event import Event as Flag
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from gcluster._json import JsonReady
from gcluster.backoff import Backoff
from gcluster.errors import (
    ClusterNotUp,
    ConfigError,
    GClusterError,
    InvalidState,
    RedisCallError,
    StreamError,
)
from gcluster.events import Event, EventType
from gcluster.redis._calls import call
from gcluster.redis._client import Client, RedisTarget, hash_tag, make_client
from gcluster.redis.inbox import CommandInbox

__all__ = [
    "DEFAULT_STREAM",
    "SinkStats",
    "StreamError",
    "StreamSink",
    "decode_event",
    "default_stream",
    "encode_event",
    "event_stream_key",
]

log = logging.getLogger(__name__)

#: The default stream of gcluster before 0.2 (outside every namespace's hash
#: tag). Pass it as ``stream=`` to keep a deployment on it; the default is now
#: `default_stream(namespace)`.
DEFAULT_STREAM: Final = "gcluster:events"

# While the buffer stays full, repeat the warning at most this often.
_WARN_EVERY: Final = 10.0
# How long a batch waits for a replica of a cluster's master to confirm it
# (on a healthy link it takes well under a millisecond) ...
_WAIT_MS: Final = 500
# ... and how long the sink stops waiting after a replica failed to: a dead
# replica must not slow every batch down until the cluster forgets it.
_REPLICATION_PAUSE: Final = 10.0
_WAIT_COMMAND: Final = b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$%d\r\n%d\r\n" % (
    len(str(_WAIT_MS)),
    _WAIT_MS,
)

# Every kind by the name its events carry; dispatch names this version does not
# know decode as UNKNOWN, as they do in a shard.
_KIND_BY_NAME: Final[dict[str, EventType]] = {
    kind.value: kind for kind in EventType if kind is not EventType.UNKNOWN
}


class EventSource(Protocol):
    """What a sink reads: a `Cluster` (or anything with the same `events()`)."""

    def events(self) -> Iterator[tuple[int, Event]]: ...


# --- the envelope ---------------------------------------------------------------


def default_stream(namespace: str) -> str:
    """The stream events go to unless told otherwise: ``{namespace}:events``.

    It shares the namespace's Redis Cluster hash tag with every other key of
    the bot, so the sink's events, the command inboxes and the session store
    all live on one node of a cluster.

    Raises:
        ConfigError: the namespace is empty or holds braces.
    """
    return f"{hash_tag(namespace)}:events"


def warn_of_old_stream(target: RedisTarget, stream: str, namespace: str, who: str) -> None:
    """Log when the stream of gcluster < 0.2 still holds events and the default is in use.

    Best effort: a Redis failure here only skips the check (the calls that
    matter report it).
    """
    if stream != default_stream(namespace):
        return
    try:
        length = call(target.get().xlen, DEFAULT_STREAM)
    except RedisCallError:
        return
    if length:
        log.warning(
            "%s: %r holds %d events: the default stream of gcluster < 0.2. Events now go "
            "to %r; run a worker with stream=%r until it is empty, then delete it "
            "(or keep sink and workers on it with --stream %s)",
            who,
            DEFAULT_STREAM,
            length,
            stream,
            DEFAULT_STREAM,
            DEFAULT_STREAM,
        )


def event_stream_key(stream: str, name: str) -> str:
    """The stream of one event name, when every name has its own stream.

    The names share a Redis Cluster hash tag (the stream's own, or `{stream}`),
    so a worker can read several of them with one XREADGROUP.
    """
    if "{" in stream and "}" in stream:
        return f"{stream}:{name}"
    return f"{{{stream}}}:{name}"


def encode_event(shard_id: int, event: Event) -> dict[FieldT, EncodableT]:
    """The stream entry's fields for one event (see the module docstring)."""
    sequence = "" if event.sequence is None else event.sequence
    return {"shard": shard_id, "t": event.name, "s": sequence, "d": _encode_data(event)}


def _encode_data(event: Event) -> bytes:
    if event.kind is EventType.SHARD_PAYLOAD:
        return bytes(event.data)
    text: str = ujson.dumps(
        event.data, ensure_ascii=False, escape_forward_slashes=False, default=str
    )
    return text.encode()


def decode_event(fields: Mapping[bytes, bytes]) -> tuple[int, Event]:
    """The `(shard_id, Event)` a stream entry holds, as `cluster.events()` gave it.

    Raises:
        ValueError: the entry is not an event envelope.
    """
    try:
        shard_id = int(fields[b"shard"])
        name = fields[b"t"].decode()
        raw_sequence = fields[b"s"]
        raw_data = fields[b"d"]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ValueError(f"not an event envelope: {err!r}") from err
    kind = _KIND_BY_NAME.get(name, EventType.UNKNOWN)
    sequence = int(raw_sequence) if raw_sequence else None
    data = raw_data if kind is EventType.SHARD_PAYLOAD else ujson.loads(raw_data)
    return shard_id, Event(kind, name, shard_id, sequence, data)


# --- the sink -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SinkStats(JsonReady):
    """A snapshot of a sink's counters (`StreamSink.stats()`).

    Attributes:
        read: events read from the cluster.
        published: events Redis has taken.
        batches: pipelines sent successfully.
        failures: pipelines that failed (each is retried).
        buffered: events read and not yet published.
        paused: reading is stopped because the buffer is full.
        pauses: how many times reading stopped for a full buffer.
        outages: how many times Redis went from answering to failing.
        outage_seconds: total time spent failing, the current outage included.
        last_error: the latest failure, or None.
        unreplicated: events a Redis Cluster master took that no replica
            confirmed within 0.5 s (a failover at that moment would lose them).
    """

    read: int
    published: int
    batches: int
    failures: int
    buffered: int
    paused: bool
    pauses: int
    outages: int
    outage_seconds: float
    last_error: str | None
    unreplicated: int = 0


class _StopReading(BaseException):
    """Thrown into the reading greenlet by `stop()` while it waits for the next event.

    A BaseException so nothing between the cluster's queue and the sink swallows it.
    """


class StreamSink:
    """Publishes a cluster's events to Redis Streams for workers (`StreamWorker`) to handle.

    Args:
        cluster: the `Cluster` whose `events()` to publish (the sink is then
            its only reader).
        url: e.g. "redis://localhost:6379/0", a single server or any node of
            a Redis Cluster (or pass `client`).
        stream: the stream every event goes to; default
            `default_stream(namespace)`, ``{namespace}:events``.
        per_event_streams: one stream per event name instead, named by
            `event_stream_key(stream, name)`; workers then pick their names.
        maxlen: trim each stream to about this many entries (`MAXLEN ~`);
            None never trims.
        batch: at most this many events per pipeline.
        buffer: at most this many events read and not yet published; when
            full, the sink stops reading and events wait in the cluster's queue.
        namespace: key prefix (and Redis Cluster hash tag) of the bot's other
            keys: the command inbox and the shard count workers route by.
        commands: also serve the command inbox (`CommandInbox`): commands
            workers send to this process's shards are sent through them,
            following the shards the cluster gains and loses (`add_shard`,
            `remove_shard`).
        client: a ready redis-py client instead of `url`.
        connect_timeout, timeout: seconds to connect to Redis and to wait for a reply.
        retry: the backoff between failed pipelines (default 0.1 s doubling to 5 s).

    Raises:
        ConfigError: a bad number, namespace or URL, or both or neither of url and client.

    .. important:: A gevent object: use it from the hub (thread) its cluster runs in.
    """

    def __init__(
        self,
        cluster: Any,
        url: str | None = None,
        *,
        stream: str | None = None,
        per_event_streams: bool = False,
        maxlen: int | None = 1_000_000,
        batch: int = 500,
        buffer: int = 10_000,
        namespace: str = "gcluster",
        commands: bool = True,
        client: Client | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        retry: Backoff | None = None,
    ) -> None:
        if batch < 1:
            raise ConfigError(f"batch must be at least 1, not {batch}")
        if buffer < batch:
            raise ConfigError(f"buffer ({buffer}) must hold at least one batch ({batch})")
        if maxlen is not None and maxlen < 1:
            raise ConfigError(f"maxlen must be at least 1 (or None), not {maxlen}")
        if stream is None:
            stream = default_stream(namespace)  # checks the namespace
        if not stream:
            raise ConfigError("stream must be a non-empty key")
        hash_tag(namespace)  # checks it
        self.cluster = cluster
        self.stream = stream
        self.per_event_streams = per_event_streams
        self.maxlen = maxlen
        self.batch = batch
        self.buffer = buffer
        self.namespace = namespace
        self._owns_client = client is None
        self._redis = make_client(url, client, connect_timeout=connect_timeout, timeout=timeout)
        self._retry = retry if retry is not None else Backoff(base=0.1, cap=5.0)
        # A batch is packed by hand and sent on one connection to the server
        # (or to the master serving the stream's slot): redis-py's generic
        # packing costs more than the rest of publishing an event together.
        self._packer = _XaddPacker(maxlen)
        self._replication_wait_after = 0.0  # monotonic time before which WAIT is skipped
        self._unreplicated = 0
        self._keys: dict[str, str] = {}
        # A Cluster's sessions must not be saved past events Redis has not
        # taken: the sink finishes events itself, once published.
        self._finish: Callable[[int], None] | None = getattr(cluster, "finish", None)
        self._inbox: CommandInbox | None = None
        if commands:
            self._inbox = CommandInbox(cluster, client=self._redis, namespace=namespace)
        self._pending: deque[tuple[int, Event]] = deque()
        self._has_events = Flag()  # something to publish, or reading ended
        self._room = Flag()  # the buffer has room: reading may go on
        self._room.set()
        self._stopping = False
        self._reading_done = Flag()
        self._published_all = Flag()
        self._retry_now = Flag()  # cuts a backoff short on stop()
        self._reader: gevent.Greenlet | None = None
        self._publisher: gevent.Greenlet | None = None
        self._waiting_for_event = False
        self._error: BaseException | None = None
        self._running = False
        # counters
        self._read = 0
        self._published = 0
        self._batches = 0
        self._failures = 0
        self._pauses = 0
        # When the last "no longer reading" warning was logged: a buffer that
        # fills again at once pauses many times a second, and says so once.
        self._pause_warned_at = float("-inf")
        self._outages = 0
        self._outage_total = 0.0
        self._outage_since: float | None = None
        self._last_error: str | None = None

    @property
    def _client(self) -> Client:
        # The first use asks the node whether it is part of a Redis Cluster.
        return self._redis.get()

    def __repr__(self) -> str:
        target = "per-event streams" if self.per_event_streams else "stream"
        return (
            f"<StreamSink {self._redis.describe()} {target} {self.stream!r} "
            f"buffered={len(self._pending)}>"
        )

    @property
    def inbox(self) -> CommandInbox | None:
        """The `CommandInbox` the sink serves, or None (``commands=False``)."""
        return self._inbox

    def key(self, name: str) -> str:
        """The stream an event named `name` goes to."""
        key = self._keys.get(name)
        if key is None:
            key = event_stream_key(self.stream, name) if self.per_event_streams else self.stream
            self._keys[name] = key
        return key

    # --- life ------------------------------------------------------------------

    def run(self) -> None:
        """Publish the cluster's events until its stream ends or `stop()`; serve commands.

        Returns once every event read has been published (or `stop()` gave up
        on them). Raises what `cluster.events()` raises (e.g. the fatal close
        error when every shard is fatally closed), after publishing what came
        before it.

        Raises:
            InvalidState: the sink is already running.
            ClusterNotUp: it serves commands for a cluster that is not up.
        """
        if self._running:
            raise InvalidState("this sink is already running")
        if self._inbox is not None and getattr(self.cluster, "total", None) is None:
            raise ClusterNotUp("bring the cluster up first: the command inbox serves its shards")
        self._running = True
        inbox = None
        try:
            if self._inbox is not None:
                try:
                    # Before any event: a worker answering one may route by guild at once.
                    self._inbox.publish_shard_count()
                except RedisCallError as err:
                    log.debug("sink: shard count not recorded yet (the inbox retries): %s", err)
                inbox = gevent.spawn(self._inbox.run)
            self._publisher = gevent.spawn(self._publish_loop)
            self._reader = gevent.getcurrent()
            try:
                self._read_loop()
            finally:
                self._reader = None
                self._reading_done.set()
                self._has_events.set()
            self._published_all.wait()
        finally:
            if self._publisher is not None:
                self._publisher.kill()
            if inbox is not None and self._inbox is not None:
                self._inbox.stop(timeout=2.0)
                inbox.kill()
            self._running = False
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Stop reading events, publish the ones read, and let `run()` return.

        Idempotent. Events still in the cluster's queue are left there (with a
        session store, a resumed session delivers them again).

        Args:
            timeout: seconds to wait for Redis to take the buffered events;
                None waits as long as it takes.

        Returns:
            True when every event read was published; False when some were not
            within `timeout` (they are dropped, and the count is logged).
        """
        self._stopping = True
        reader = self._reader
        if reader is not None and reader is not gevent.getcurrent():
            gevent.get_hub().loop.run_callback(self._interrupt, reader)
        self._room.set()  # a reader paused on a full buffer sees _stopping
        self._retry_now.set()  # one last attempt at once
        if not self._running:
            return not self._pending
        if self._published_all.wait(timeout):
            return True
        lost = len(self._pending)
        config = getattr(self.cluster, "config", None)
        resumed = self._finish is not None and getattr(config, "session_store", None) is not None
        log.error(
            "sink: %d events read from the cluster were not published to Redis at %s "
            "within %s s; %s",
            lost,
            self._redis.describe(),
            timeout,
            # Sessions are saved only up to the events Redis took (see the module's notes).
            "the sessions saved for resuming stop before them: resuming delivers them again"
            if resumed
            else "without a session store they are lost",
        )
        publisher = self._publisher
        if publisher is not None:
            publisher.kill()
        self._pending.clear()
        self._published_all.set()
        return False

    def close(self) -> None:
        """Close the connections of a client this sink made (not of one it was given)."""
        if self._owns_client:
            self._redis.close()

    def stats(self) -> SinkStats:
        """The counters now."""
        outage = self._outage_total
        if self._outage_since is not None:
            outage += time.monotonic() - self._outage_since
        return SinkStats(
            read=self._read,
            published=self._published,
            batches=self._batches,
            failures=self._failures,
            buffered=len(self._pending),
            paused=not self._room.is_set(),
            pauses=self._pauses,
            outages=self._outages,
            outage_seconds=outage,
            last_error=self._last_error,
            unreplicated=self._unreplicated,
        )

    # --- reading -----------------------------------------------------------------

    def _read_loop(self) -> None:
        pending = self._pending
        has_events = self._has_events
        room = self._room
        bound = self.buffer
        if self._finish is not None:
            events = iter(self.cluster.events(manual_finish=True))
        else:
            events = iter(self.cluster.events())
        while not self._stopping:
            if len(pending) >= bound:
                self._pause()
                continue
            self._waiting_for_event = True
            try:
                item = next(events)
            except StopIteration:
                return
            except _StopReading:
                return
            except GClusterError as err:
                self._error = err
                return
            finally:
                self._waiting_for_event = False
            pending.append(item)
            self._read += 1
            if not has_events.is_set():
                has_events.set()
            if room.is_set() and len(pending) >= bound:
                room.clear()

    def _pause(self) -> None:
        """Wait, without reading, until the publisher makes room in the buffer."""
        self._pauses += 1
        room = self._room
        room.clear()
        warned = False
        while not room.is_set() and not self._stopping:
            now = time.monotonic()
            if now - self._pause_warned_at >= _WARN_EVERY:
                self._pause_warned_at = now
                warned = True
                log.warning(
                    "sink: %d events wait to be published (the buffer's bound); no longer "
                    "reading events: %d wait in the cluster's queue, and the shards keep "
                    "heartbeating. Last Redis error: %s",
                    len(self._pending),
                    _backlog(self.cluster),
                    self._last_error or "none (Redis is slower than the shards)",
                )
            room.wait(_WARN_EVERY)
        if warned and room.is_set() and not self._stopping:
            log.info(
                "sink: reading events again (%d buffered, %d in the cluster's queue)",
                len(self._pending),
                _backlog(self.cluster),
            )

    def _interrupt(self, reader: Any) -> None:
        # Runs in the hub: wake the reader only where it waits for the cluster,
        # so an event it already holds is still buffered.
        current = self._reader
        if self._waiting_for_event and current is not None and current is reader:
            if not current.dead:
                current.throw(_StopReading)

    # --- publishing ----------------------------------------------------------------

    def _publish_loop(self) -> None:
        warn_of_old_stream(self._redis, self.stream, self.namespace, "sink")
        pending = self._pending
        backoff = self._retry.reset()
        low_water = self.buffer - self.batch
        while True:
            if not pending:
                if self._reading_done.is_set():
                    self._published_all.set()
                    return
                self._has_events.clear()
                self._has_events.wait()
                continue
            items = list(islice(pending, self.batch))
            try:
                call(self._send, self._redis.get(), items)
            except RedisCallError as err:
                self._failed(err)
                backoff = backoff.increment()
                self._wait_to_retry(backoff.delay(random.random), err)
                continue
            if self._outage_since is not None:
                self._recovered()
            backoff = backoff.reset()
            for _ in items:
                pending.popleft()
            if self._finish is not None:
                self._finish(len(items))
            self._published += len(items)
            self._batches += 1
            if not self._room.is_set() and len(pending) <= low_water:
                self._room.set()

    def _wait_to_retry(self, delay: float, err: RedisCallError) -> None:
        """Sleep out `delay` before the next attempt; less on `stop()` or once Redis answers.

        See `RedisTarget.sleep_until_served`: the buffered events go as soon
        as a replica is promoted or Redis is back, not after the rest of a
        long backoff.
        """
        if self._redis.sleep_until_served(self.key(""), delay, err, self._retry_now):
            self._retry_now.clear()

    def _send(self, client: Client, items: list[tuple[int, Event]]) -> None:
        """Run in the thread pool: encode a batch and send it as one pipeline.

        On a Redis Cluster the batch goes to the master serving the stream's
        slot (every stream of a sink shares one hash tag), followed by ``WAIT
        1`` when the slot has a replica: the events leave the buffer (and
        the shards' sessions move past them) only once a replica holds them,
        so a master that dies right after taking a batch does not take the
        batch with it. A MOVED or a dead master fails the batch; the probe in
        `_wait_to_retry`, through the cluster client, refreshes its map of
        the slots and the next attempt goes to the new master.
        """
        batch = [(self.key(e.name), shard_id, e) for shard_id, e in items]
        if isinstance(client, RedisCluster):
            slot_key = batch[0][0]
            node = client.get_node_from_key(slot_key)  # type: ignore[no-untyped-call]
            wait = self._replicas_to_wait_for(client, slot_key)
            acked = self._packer.send(client.get_redis_connection(node), batch, wait)
            if wait and acked is not None and acked < 1:
                self._not_replicated(len(items))
            return
        if type(client) is redis.Redis:
            self._packer.send(client, batch, False)
            return
        pipe = client.pipeline(transaction=False)
        key = self.key
        maxlen = self.maxlen
        for shard_id, event in items:
            pipe.xadd(key(event.name), encode_event(shard_id, event), maxlen=maxlen)
        pipe.execute()

    def _replicas_to_wait_for(self, client: RedisCluster, key: str) -> bool:
        """Whether to WAIT for a replica: the slot has one, and the last WAIT did not time out."""
        if time.monotonic() < self._replication_wait_after:
            return False
        replica = client.get_node_from_key(key, replica=True)  # type: ignore[no-untyped-call]
        return replica is not None

    def _not_replicated(self, count: int) -> None:
        """A replica did not confirm a batch in time: count it, and stop waiting for a while."""
        self._unreplicated += count
        self._replication_wait_after = time.monotonic() + _REPLICATION_PAUSE
        log.warning(
            "sink: no replica of the stream's master confirmed %d events within %d ms: "
            "taken as published (a failover now would lose them); not waiting for "
            "replicas for %.0f s",
            count,
            _WAIT_MS,
            _REPLICATION_PAUSE,
        )

    def _failed(self, err: RedisCallError) -> None:
        self._failures += 1
        self._last_error = f"{type(err.__cause__).__name__}: {err}"
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._outages += 1
            log.warning(
                "sink: Redis at %s failed: %s; buffering events (up to %d) and retrying",
                self._redis.describe(),
                self._last_error,
                self.buffer,
            )
        else:
            log.debug("sink: Redis still failing: %s", self._last_error)

    def _recovered(self) -> None:
        assert self._outage_since is not None
        lasted = time.monotonic() - self._outage_since
        self._outage_total += lasted
        self._outage_since = None
        log.info(
            "sink: Redis at %s answers again after %.1f s; publishing %d buffered events",
            self._redis.describe(),
            lasted,
            len(self._pending),
        )


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class _XaddPacker:
    """XADD commands for a batch of events as one buffer of RESP, sent on one connection.

    What `client.pipeline()` + `xadd()` would send, byte for byte, without
    redis-py's per-argument encoding; replies are read with redis-py's own
    parser. Sent with a plain `redis.Redis` client: the server's, or that of
    the cluster node serving the batch's slot.
    """

    def __init__(self, maxlen: int | None) -> None:
        self._trim = [b"MAXLEN", b"~", b"%d" % maxlen] if maxlen is not None else []
        self._heads: dict[str, bytes] = {}
        self._shards: dict[int, bytes] = {}
        self._names: dict[str, bytes] = {}
        self._sequence_field = _bulk(b"s")
        self._data_field = _bulk(b"d")

    def _head(self, key: str) -> bytes:
        head = self._heads.get(key)
        if head is None:
            args = [b"XADD", key.encode(), *self._trim, b"*"]
            head = b"*%d\r\n" % (len(args) + 8) + b"".join(_bulk(arg) for arg in args)
            self._heads[key] = head
        return head

    def pack(self, key: str, shard_id: int, event: Event) -> bytes:
        shard = self._shards.get(shard_id)
        if shard is None:
            shard = self._shards[shard_id] = _bulk(b"shard") + _bulk(b"%d" % shard_id)
        name = self._names.get(event.name)
        if name is None:
            name = self._names[event.name] = _bulk(b"t") + _bulk(event.name.encode())
        data = _encode_data(event)
        sequence = b"" if event.sequence is None else b"%d" % event.sequence
        return b"".join(
            (
                self._head(key),
                shard,
                name,
                self._sequence_field,
                _bulk(sequence),
                self._data_field,
                _bulk(data),
            )
        )

    def send(
        self, client: redis.Redis, batch: list[tuple[str, int, Event]], wait: bool
    ) -> int | None:
        """XADD every event (then ``WAIT 1`` if `wait`); raise the first error Redis answered with.

        Runs inside `call`, which turns what it raises into `RedisCallError`;
        an error reply is only held here until every reply has been read.

        Returns:
            How many replicas confirmed the batch (WAIT's reply), or None without `wait`.
        """
        parts = [self.pack(key, shard_id, event) for key, shard_id, event in batch]
        if wait:
            # On the same connection: WAIT counts this connection's writes.
            parts.append(_WAIT_COMMAND)
        pool = client.connection_pool
        conn = _connection(pool)
        error: ResponseError | None = None
        acked: int | None = None
        try:
            conn.send_packed_command([b"".join(parts)])
            for _ in batch:
                try:
                    conn.read_response()
                except ResponseError as err:
                    error = error or err
            if wait:
                acked = int(conn.read_response())
        except BaseException:
            # Replies may be left unread: this connection cannot be reused.
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if error is not None:
            raise error
        return acked


def _connection(pool: Any) -> Any:
    try:
        return pool.get_connection()
    except TypeError:  # redis-py 5 wants a command name
        return pool.get_connection("XADD")


def _backlog(cluster: Any) -> int | str:
    backlog = getattr(cluster, "backlog", None)
    return backlog if isinstance(backlog, int) else "?"
