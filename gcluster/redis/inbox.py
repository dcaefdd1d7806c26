"""CommandInbox: gateway commands from worker processes, sent through the shard that owns them.

A worker handling an event often has to answer on the gateway (a presence, a
voice state, a member request), but only the gateway process holding a
shard's connection can send through it. Each shard has an inbox, a Redis
stream `{namespace}:commands:<shard_id>`; a worker appends the encoded
command to the inbox of the shard it is for (`StreamWorker.send_command`),
and the gateway process holding that shard reads its shards' inboxes and
sends each command with `cluster.command()`, which waits for the shard's rate
limit. A process running only some shards (`ShardScheme.process`) reads only
their inboxes, so a command always reaches the process that can send it.

Entry fields: `p`, the command's payload as JSON (validated and size-checked
by the sender); `by`, who sent it (for the log).

The inboxes are read through one consumer group (`gcluster-gateway`); a
command is acknowledged once it was sent or dropped, so a process that dies
leaves its unsent commands to the next one holding the shard. A command older
than `ttl` (by the Redis server's clock) is dropped with a warning rather than
sent late. The keys share the namespace's hash tag, so one XREADGROUP reads
every inbox of a process on Redis Cluster too. `{namespace}:shards` holds the
bot's shard count, for workers that route commands by guild.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import gevent
import ujson
from gevent.event import Event as Flag
from gevent.queue import Queue

from gcluster._json import JsonReady
from gcluster.backoff import Backoff
from gcluster.errors import (
    ClusterNotUp,
    CommandSendingError,
    ConfigError,
    InvalidCommand,
    InvalidState,
    RedisCallError,
    ShardNonexistent,
)
from gcluster.redis._calls import call, stream_reply
from gcluster.redis._client import Client, RedisTarget, hash_tag, make_client

__all__ = [
    "INBOX_GROUP",
    "INBOX_MAXLEN",
    "CommandInbox",
    "InboxStats",
    "inbox_key",
    "shard_count_key",
]

log = logging.getLogger(__name__)

#: The consumer group every gateway process reads its inboxes through.
INBOX_GROUP: Final = "gcluster-gateway"
#: Each inbox is trimmed to about this many commands.
INBOX_MAXLEN: Final = 10_000
# Commands read per XREADGROUP.
_READ_COUNT: Final = 100
# Between two attempts to send through a shard that is not connected.
_RETRY_SEND: Final = 0.25
_STOP: Final = object()


class _Stop(BaseException):
    """Thrown into the reading greenlet by `stop()`; a BaseException so no handler eats it."""


def inbox_key(namespace: str, shard_id: int) -> str:
    """The stream holding commands for one shard."""
    return f"{hash_tag(namespace)}:commands:{shard_id}"


def shard_count_key(namespace: str) -> str:
    """The key holding the bot's shard count (all processes together)."""
    return f"{hash_tag(namespace)}:shards"


def default_consumer() -> str:
    """A consumer name unique to this process: `host-pid`."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class InboxStats(JsonReady):
    """A snapshot of an inbox's counters (`CommandInbox.stats()`).

    Attributes:
        received: commands read from the inboxes.
        sent: commands sent through their shard.
        expired: commands dropped for being older than `ttl`.
        failed: commands dropped because they were invalid or could not be sent in time.
        last_error: the latest Redis failure, or None.
    """

    received: int
    sent: int
    expired: int
    failed: int
    last_error: str | None


class CommandInbox:
    """Reads the command inboxes of a cluster's shards and sends the commands through them.

    `StreamSink` runs one (``commands=True``); it can also run alone.

    Args:
        cluster: the `Cluster`, already up (its shards and total are known).
        url: e.g. "redis://localhost:6379/0": a single server, or any node of a
            Redis Cluster (found out at first use). Or pass `client`.
        namespace: key prefix and Redis Cluster hash tag of the bot.
        consumer: this process's name in the consumer group; default `host-pid`.
        ttl: seconds after which an unsent command is dropped; None never drops.
        block: seconds one read waits for commands (bounds how long `stop()` waits).
        client: a ready redis-py client instead of `url`.
        connect_timeout, timeout: seconds to connect to Redis and to wait for a reply.

    Raises:
        ConfigError: a bad ttl, block, namespace or URL, or both or neither of url and client.

    .. important:: A gevent object: use it from the hub (thread) its cluster runs in.
    """

    def __init__(
        self,
        cluster: Any,
        url: str | None = None,
        *,
        namespace: str = "gcluster",
        consumer: str | None = None,
        ttl: float | None = 60.0,
        block: float = 0.5,
        client: Client | RedisTarget | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ConfigError(f"ttl must be positive (or None), not {ttl}")
        if not 0 < block < timeout:
            raise ConfigError(f"block must be positive and below timeout ({timeout} s)")
        hash_tag(namespace)  # checks it
        self.cluster = cluster
        self.namespace = namespace
        self.consumer = consumer or default_consumer()
        self.ttl = ttl
        self.block = block
        self._owns_client = client is None
        self._redis = make_client(url, client, connect_timeout=connect_timeout, timeout=timeout)
        self._keys: dict[bytes, int] = {}
        # (inbox, entry id) of commands routed and not yet acknowledged; ids
        # are only unique within one stream.
        self._in_flight: set[tuple[Any, Any]] = set()
        self._lanes: dict[int, Queue] = {}
        self._lane_greenlets: list[gevent.Greenlet] = []
        self._stopping = False
        self._done = Flag()
        self._wake = Flag()  # cuts a backoff short on stop()
        self._reader: gevent.Greenlet | None = None
        self._clock_offset = 0.0  # Redis clock minus ours, in seconds
        self._failing_since: float | None = None
        self._received = 0
        self._sent = 0
        self._expired = 0
        self._failed = 0
        self._last_error: str | None = None

    @property
    def _client(self) -> Client:
        # The first use asks the node whether it is part of a Redis Cluster.
        return self._redis.get()

    def __repr__(self) -> str:
        return (
            f"<CommandInbox {self._redis.describe()} namespace={self.namespace!r} "
            f"shards={sorted(self._keys.values())}>"
        )

    def stats(self) -> InboxStats:
        """The counters now."""
        return InboxStats(
            received=self._received,
            sent=self._sent,
            expired=self._expired,
            failed=self._failed,
            last_error=self._last_error,
        )

    # --- life ------------------------------------------------------------------

    def run(self) -> None:
        """Read and send commands until `stop()`.

        Redis failures are logged and retried with a backoff; they never reach
        the shards.

        Raises:
            ClusterNotUp: the cluster is not up.
            InvalidState: the inbox already ran.
        """
        if self._reader is not None or self._done.is_set():
            raise InvalidState("this inbox already ran")
        shard_ids = [shard.id for shard in self.cluster.shards()]
        if not shard_ids or self.cluster.total is None:
            raise ClusterNotUp("bring the cluster up before serving its command inbox")
        self._keys = {inbox_key(self.namespace, sid).encode(): sid for sid in shard_ids}
        self._reader = gevent.getcurrent()
        for shard_id in shard_ids:
            lane: Queue = Queue()
            self._lanes[shard_id] = lane
            self._lane_greenlets.append(gevent.spawn(self._send_lane, shard_id, lane))
        try:
            self._read_loop()
        except _Stop:
            pass
        finally:
            self._reader = None
            for lane in self._lanes.values():
                lane.put(_STOP)
            self._done.set()

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop reading; let each shard finish the command it is sending.

        The reader notices within `block` seconds (its Redis read is not cut
        short, so no connection is left mid-reply). Commands read and not sent
        stay pending in Redis, for the next process holding the shard. Idempotent.

        Returns:
            True when reading and every shard's lane finished within `timeout`.
        """
        self._stopping = True
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        reader = self._reader
        if reader is not None and reader is not gevent.getcurrent():
            if not self._done.wait(_remaining(deadline)):
                # Still in a Redis call past the timeout: cut it short.
                gevent.get_hub().loop.run_callback(self._interrupt, reader)
        for lane in self._lanes.values():
            lane.put(_STOP)
        finished = gevent.joinall(self._lane_greenlets, timeout=_remaining(deadline))
        reading_ended = reader is None or self._done.is_set()
        if len(finished) < len(self._lane_greenlets) or not reading_ended:
            gevent.killall(self._lane_greenlets, block=False)
            return False
        return True

    def _interrupt(self, reader: Any) -> None:
        current = self._reader
        if current is not None and current is reader and not current.dead:
            current.throw(_Stop)

    def close(self) -> None:
        """Close the connections of a client this inbox made (not of one it was given)."""
        if self._owns_client:
            self._redis.close()

    # --- reading -----------------------------------------------------------------

    def _read_loop(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        prepared = False
        streams = {key: ">" for key in self._keys}
        while not self._stopping:
            try:
                if not prepared:
                    self._prepare()
                    prepared = True
                reply: Any = call(
                    self._client.xreadgroup,
                    INBOX_GROUP,
                    self.consumer,
                    streams,
                    count=_READ_COUNT,
                    block=int(self.block * 1000),
                )
            except RedisCallError as err:
                if err.reply is not None and "NOGROUP" in err.reply:
                    # Redis lost the inboxes (a restart without persistence): make them again.
                    prepared = False
                    continue
                if err.reply is None:
                    # No answer: once there is one, prepare again (it may be an empty Redis).
                    prepared = False
                backoff = self._failure(err, backoff)
                continue
            if self._failing_since is not None:
                log.info(
                    "command inbox: Redis answers again after %.1f s",
                    time.monotonic() - self._failing_since,
                )
                self._failing_since = None
            backoff = backoff.reset()
            for key, entries in stream_reply(reply):
                self._route(key, entries)

    def publish_shard_count(self) -> None:
        """Record the bot's shard count for workers routing commands by guild.

        Raises:
            RedisCallError: Redis could not take it.
        """
        call(self._client.set, shard_count_key(self.namespace), int(self.cluster.total))

    def _prepare(self) -> None:
        """Create the inboxes and their group, publish the shard count, adopt orphans."""
        client = self._client
        for key in self._keys:
            try:
                call(client.xgroup_create, key, INBOX_GROUP, id="0", mkstream=True)
            except RedisCallError as err:
                if err.reply is None or "BUSYGROUP" not in err.reply:
                    raise
        self.publish_shard_count()
        now: Any = call(client.time)
        self._clock_offset = now[0] + now[1] / 1e6 - time.time()
        # Commands a previous holder of these shards read and never acknowledged
        # (it died, or it was this process before a restart) are ours now.
        for key in self._keys:
            cursor: Any = "0-0"
            while True:
                reply = call(
                    client.xautoclaim,
                    key,
                    INBOX_GROUP,
                    self.consumer,
                    0,
                    start_id=cursor,
                    count=_READ_COUNT,
                )
                cursor, entries = reply[0], reply[1]
                self._route(key, entries)
                if cursor in (b"0-0", "0-0"):
                    break
        log.info(
            "command inbox: reading the inboxes of shards %s (%s:commands:<shard>) as %r",
            shard_ranges(sorted(self._keys.values())),
            hash_tag(self.namespace),
            self.consumer,
        )

    def _route(self, key: Any, entries: Any) -> None:
        key = key if isinstance(key, bytes) else str(key).encode()
        shard_id = self._keys.get(key)
        if shard_id is None:
            return
        lane = self._lanes[shard_id]
        for message_id, fields in entries or ():
            # Already on its way: a reclaim after a Redis failure finds it again.
            if message_id is None or (key, message_id) in self._in_flight:
                continue
            self._in_flight.add((key, message_id))
            self._received += 1
            lane.put((key, message_id, fields))

    def _failure(self, err: RedisCallError, backoff: Backoff) -> Backoff:
        self._last_error = f"{type(err.__cause__).__name__}: {err}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.warning(
                "command inbox: Redis at %s failed: %s; retrying (the shards are not affected)",
                self._redis.describe(),
                self._last_error,
            )
        backoff = backoff.increment()
        # Woken by stop(), or early once the inboxes' slot is served again.
        self._redis.sleep_until_served(
            shard_count_key(self.namespace), backoff.delay(random.random), err, self._wake
        )
        return backoff

    # --- sending -------------------------------------------------------------------

    def _send_lane(self, shard_id: int, lane: Queue) -> None:
        """One shard's commands, one at a time and in order."""
        while True:
            item = lane.get()
            if item is _STOP or self._stopping:
                return
            key, message_id, fields = item
            try:
                self._deliver(shard_id, message_id, fields or {})
                call(self._client.xack, key, INBOX_GROUP, message_id)
            except RedisCallError as err:
                # Left pending: the next process to hold the shard sends it again.
                log.warning(
                    "command inbox: shard %d: could not acknowledge command %s: %s",
                    shard_id,
                    _text(message_id),
                    err,
                )
            finally:
                self._in_flight.discard((key, message_id))

    def _deliver(self, shard_id: int, message_id: Any, fields: Mapping[bytes, bytes]) -> None:
        sender = _text(fields.get(b"by", b"?"))
        try:
            payload = ujson.loads(fields[b"p"])
            if not isinstance(payload, dict) or "d" not in payload:
                raise ValueError("no d")
            op = payload["op"]
        except (KeyError, TypeError, ValueError):
            self._failed += 1
            log.warning(
                "command inbox: shard %d: dropping entry %s from %s: not a command payload",
                shard_id,
                _text(message_id),
                sender,
            )
            return
        left = None if self.ttl is None else self.ttl - self._age(message_id)
        if left is not None and left <= 0:
            self._expired += 1
            log.warning(
                "command inbox: shard %d: dropping command op %s from %s: %.0f s old (ttl %s s)",
                shard_id,
                op,
                sender,
                self._age(message_id),
                self.ttl,
            )
            return
        deadline = None if left is None else time.monotonic() + left
        while True:
            try:
                self.cluster.command(shard_id, payload, timeout=left)
            except CommandSendingError as err:
                left = None if deadline is None else deadline - time.monotonic()
                if self._stopping or (left is not None and left <= 0):
                    self._drop(shard_id, op, sender, err)
                    return
                # Not connected (a reconnect): wait for the shard, then try again.
                shard = self.cluster.shard(shard_id)
                if shard is not None:
                    shard.wait_until_ready(_RETRY_SEND if left is None else min(left, 5.0))
                gevent.sleep(_RETRY_SEND)
                continue
            except (InvalidCommand, ShardNonexistent) as err:
                self._drop(shard_id, op, sender, err)
                return
            self._sent += 1
            # One per command: at DEBUG, or a busy bot's log would be nothing else.
            log.debug("shard %d: sent command op %s from %s", shard_id, op, sender)
            return

    def _drop(self, shard_id: int, op: Any, sender: str, err: Exception) -> None:
        """Count and log a command that will not be sent."""
        self._failed += 1
        log.warning(
            "command inbox: shard %d: dropping command op %s from %s: %s", shard_id, op, sender, err
        )

    def _age(self, message_id: Any) -> float:
        """Seconds since Redis took the entry, by Redis's clock (its id is that time in ms)."""
        millis = int(_text(message_id).split("-", 1)[0])
        return time.time() + self._clock_offset - millis / 1000.0


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def shard_ranges(ids: list[int]) -> str:
    """Shard ids for a log line: `[0, 1, 2, 5]` → "0-2, 5"."""
    parts: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif prev is not None and i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)
