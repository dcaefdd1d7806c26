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

The inbox follows the cluster's shards as they come and go (`add_shard`,
`remove_shard`). Before each read it compares `cluster.shards()` with the
inboxes it reads: a shard that left stops being read, and the commands read
for it and not sent are left pending (neither acknowledged nor dropped) for
the process that runs it next; a shard that arrived has its inbox read from
then on, starting with every command pending there (XAUTOCLAIM), whoever
read it before. Every `claim_interval` seconds it also takes over what
another process left pending on the inboxes it reads (one that read a
command just as its shard left, or died): XPENDING tells, one call per
inbox. A command sent while its shard runs nowhere waits in the inbox for
the next process to run it, up to its `ttl`.

Polling rather than a callback from the cluster: the reader can only change
the streams it reads between two reads anyway, so a callback would set a
flag read at the same point. Polling needs no hook in `Cluster`, cannot miss
a change made before `run()` or during a Redis outage, and costs one look at
a dict per read; a send lane learns of a removal at once from
`ShardNonexistent`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import gevent
import ujson
from gevent.event import Event as Flag
from gevent.queue import Empty, Queue

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
    "CLAIM_INTERVAL",
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
#: Seconds between two looks for commands other processes left pending on this one's inboxes.
CLAIM_INTERVAL: Final = 5.0
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
        received: commands read from the inboxes (a command taken over again
            after its shard came back counts again).
        sent: commands sent through their shard.
        expired: commands dropped for being older than `ttl`.
        failed: commands dropped because they were invalid or could not be sent in time.
        last_error: the latest Redis failure, or None.
        left: commands read and not sent because their shard left this
            process (or the inbox stopped while sending one): left pending
            in Redis for the process that runs the shard next.
    """

    received: int
    sent: int
    expired: int
    failed: int
    last_error: str | None
    left: int = 0


class CommandInbox:
    """Reads the command inboxes of a cluster's shards and sends the commands through them.

    `StreamSink` runs one (``commands=True``); it can also run alone. It
    follows the cluster's shards: a shard added with `add_shard` has its
    inbox read (what is pending there first), and the commands of a shard
    removed with `remove_shard` are left in its inbox for the process that
    runs it next.

    Args:
        cluster: the `Cluster`, already up (its total is known).
        url: e.g. "redis://localhost:6379/0": a single server, or any node of a
            Redis Cluster (found out at first use). Or pass `client`.
        namespace: key prefix and Redis Cluster hash tag of the bot.
        consumer: this process's name in the consumer group; default
            `host-pid`. Two processes must not share one.
        ttl: seconds after which an unsent command is dropped; None never drops.
        block: seconds one read waits for commands (bounds how long `stop()`
            waits, and how soon a shard added or removed is noticed).
        claim_interval: seconds between two looks for commands another
            process left pending on this one's inboxes.
        client: a ready redis-py client instead of `url`.
        connect_timeout, timeout: seconds to connect to Redis and to wait for a reply.

    Raises:
        ConfigError: a bad ttl, block, claim_interval, namespace or URL, or
            both or neither of url and client.

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
        claim_interval: float = CLAIM_INTERVAL,
        client: Client | RedisTarget | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ConfigError(f"ttl must be positive (or None), not {ttl}")
        if not 0 < block < timeout:
            raise ConfigError(f"block must be positive and below timeout ({timeout} s)")
        if not claim_interval > 0:
            raise ConfigError(f"claim_interval must be positive, not {claim_interval}")
        hash_tag(namespace)  # checks it
        self.cluster = cluster
        self.namespace = namespace
        self.consumer = consumer or default_consumer()
        self.ttl = ttl
        self.block = block
        self.claim_interval = claim_interval
        self._owns_client = client is None
        self._redis = make_client(url, client, connect_timeout=connect_timeout, timeout=timeout)
        # The inboxes read now, each with its shard.
        self._keys: dict[bytes, int] = {}
        self._key_cache: dict[int, bytes] = {}
        # (inbox, entry id) of commands routed and not yet acknowledged or
        # left; ids are only unique within one stream.
        self._in_flight: set[tuple[Any, Any]] = set()
        # Handled (sent or dropped) but not acknowledged: Redis failed. Kept
        # in flight, so they are never taken over and sent again from here.
        self._unacked: set[tuple[Any, Any]] = set()
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
        self._left = 0
        self._last_error: str | None = None

    @property
    def _client(self) -> Client:
        # The first use asks the node whether it is part of a Redis Cluster.
        return self._redis.get()

    def __repr__(self) -> str:
        return (
            f"<CommandInbox {self._redis.describe()} namespace={self.namespace!r} "
            f"shards={self.shard_ids()}>"
        )

    def stats(self) -> InboxStats:
        """The counters now."""
        return InboxStats(
            received=self._received,
            sent=self._sent,
            expired=self._expired,
            failed=self._failed,
            last_error=self._last_error,
            left=self._left,
        )

    def shard_ids(self) -> list[int]:
        """The shards whose inboxes are read now, in id order.

        They follow the cluster's shards within `block` seconds of a change
        (and of Redis answering, during an outage).
        """
        return sorted(self._keys.values())

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
        if getattr(self.cluster, "total", None) is None:
            raise ClusterNotUp("bring the cluster up before serving its command inbox")
        self._reader = gevent.getcurrent()
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
        next_claim = 0.0
        while not self._stopping:
            try:
                if not prepared:
                    self._prepare()
                    prepared = True
                    next_claim = time.monotonic() + self.claim_interval
                self._follow_shards()
                if time.monotonic() >= next_claim:
                    self._claim_left()
                    next_claim = time.monotonic() + self.claim_interval
                if not self._keys:
                    # No shard here now: look again shortly.
                    self._wake.wait(self.block)
                    continue
                reply: Any = call(
                    self._client.xreadgroup,
                    INBOX_GROUP,
                    self.consumer,
                    {key: ">" for key in self._keys},
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
                key = key if isinstance(key, bytes) else str(key).encode()
                shard_id = self._keys.get(key)
                if shard_id is not None:
                    self._route(key, shard_id, entries)

    def publish_shard_count(self) -> None:
        """Record the bot's shard count for workers routing commands by guild.

        Raises:
            RedisCallError: Redis could not take it.
        """
        call(self._client.set, shard_count_key(self.namespace), int(self.cluster.total))

    def _prepare(self) -> None:
        """Publish the shard count, learn Redis's clock; have every inbox set up again."""
        self.publish_shard_count()
        now: Any = call(self._client.time)
        self._clock_offset = now[0] + now[1] / 1e6 - time.time()
        # Each inbox is made again (with its group) and its pending commands
        # taken over by _follow_shards; what is already on its way is not sent twice.
        self._keys.clear()

    def _key(self, shard_id: int) -> bytes:
        key = self._key_cache.get(shard_id)
        if key is None:
            key = self._key_cache[shard_id] = inbox_key(self.namespace, shard_id).encode()
        return key

    def _follow_shards(self) -> None:
        """Read the inboxes of the shards the cluster runs now, and only those."""
        running = {shard.id for shard in self.cluster.shards()}
        for shard_id in [sid for sid in self._lanes if sid not in running]:
            self._lose(shard_id)
        gained = [sid for sid in sorted(running) if self._key(sid) not in self._keys]
        for shard_id in gained:
            self._gain(shard_id)
        if gained:
            log.info(
                "command inbox: reading the inboxes of shards %s (%s:commands:<shard>) as %r",
                shard_ranges(gained),
                hash_tag(self.namespace),
                self.consumer,
            )

    def _gain(self, shard_id: int) -> None:
        """Start reading a shard's inbox: what is pending there first, whoever read it."""
        key = self._key(shard_id)
        try:
            call(self._client.xgroup_create, key, INBOX_GROUP, id="0", mkstream=True)
        except RedisCallError as err:
            if err.reply is None or "BUSYGROUP" not in err.reply:
                raise
        if shard_id not in self._lanes:
            lane: Queue = Queue()
            self._lanes[shard_id] = lane
            self._lane_greenlets = [g for g in self._lane_greenlets if not g.dead]
            self._lane_greenlets.append(gevent.spawn(self._send_lane, shard_id, lane))
        # Commands a previous holder of this shard read and did not send (it
        # removed the shard, or died, or it was this process before a restart)
        # are ours now. Read before any new one, so their order is kept.
        taken = self._take_over(key, shard_id)
        # Only now: if taking over failed, the next look does it all again.
        self._keys[key] = shard_id
        if taken:
            log.info(
                "command inbox: shard %d: took over %d commands read before and not sent",
                shard_id,
                taken,
            )

    def _lose(self, shard_id: int) -> None:
        """Stop reading a shard's inbox; leave what was read for it to its next holder."""
        self._keys.pop(self._key(shard_id), None)
        lane = self._lanes.pop(shard_id)
        queued = 0
        while True:
            try:
                item = lane.get_nowait()
            except Empty:
                break
            if item is not _STOP:
                self._in_flight.discard((item[0], item[1]))
                queued += 1
        self._left += queued
        # The command being sent (if any) finishes or is left by the lane itself.
        lane.put(_STOP)
        log.info(
            "command inbox: shard %d no longer runs here: its inbox is left to the process "
            "that runs it next (%d commands read and not sent)",
            shard_id,
            queued,
        )

    def _take_over(self, key: bytes, shard_id: int) -> int:
        """Claim and route every command pending in one inbox; how many were new here."""
        before = self._received
        cursor: Any = "0-0"
        # Bounded: an inbox holds about INBOX_MAXLEN entries, _READ_COUNT a call.
        for _ in range(INBOX_MAXLEN // _READ_COUNT * 2):
            reply: Any = call(
                self._client.xautoclaim,
                key,
                INBOX_GROUP,
                self.consumer,
                0,
                start_id=cursor,
                count=_READ_COUNT,
            )
            cursor, entries = reply[0], reply[1]
            self._route(key, shard_id, entries)
            if cursor in (b"0-0", "0-0"):
                break
        return self._received - before

    def _claim_left(self) -> None:
        """Take over what other processes left pending on the inboxes read here.

        A process whose shard left reads, at most, what its last read brought
        (within its `block`); that may land after this process took the
        shard's inbox over. One XPENDING per inbox tells whether anything
        but this process's own commands in flight is pending.
        """
        for entry in list(self._unacked):
            call(self._client.xack, entry[0], INBOX_GROUP, entry[1])
            self._unacked.discard(entry)
            self._in_flight.discard(entry)
        mine = Counter(key for key, _ in self._in_flight)
        for key, shard_id in list(self._keys.items()):
            summary: Any = call(self._client.xpending, key, INBOX_GROUP)
            if isinstance(summary, dict):
                pending = int(summary.get("pending") or 0)
                others = [
                    consumer
                    for consumer in summary.get("consumers") or ()
                    if _text(consumer.get("name")) != self.consumer
                ]
                if pending == 0 or (not others and pending == mine[key]):
                    continue
            taken = self._take_over(key, shard_id)
            if taken:
                log.info(
                    "command inbox: shard %d: took over %d commands another process left pending",
                    shard_id,
                    taken,
                )

    def _route(self, key: bytes, shard_id: int, entries: Any) -> None:
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
            entry = (key, message_id)
            try:
                handled = self._deliver(shard_id, message_id, fields or {})
            except BaseException:
                self._in_flight.discard(entry)
                raise
            if not handled:
                # Left pending, unacknowledged: the shard's next holder sends it.
                self._left += 1
                self._in_flight.discard(entry)
                continue
            try:
                call(self._client.xack, key, INBOX_GROUP, message_id)
            except RedisCallError as err:
                # Stays in flight until acknowledged (retried with the next
                # look for left commands), so it is not taken over and sent again.
                self._unacked.add(entry)
                log.warning(
                    "command inbox: shard %d: could not acknowledge command %s yet: %s",
                    shard_id,
                    _text(message_id),
                    err,
                )
                continue
            self._in_flight.discard(entry)

    def _deliver(self, shard_id: int, message_id: Any, fields: Mapping[bytes, bytes]) -> bool:
        """Send one command; False when it is left for the shard's next holder.

        True once it was sent or dropped (invalid, expired): acknowledge it.
        """
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
            return True
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
            return True
        deadline = None if left is None else time.monotonic() + left
        while True:
            if self._stopping:
                return False
            try:
                self.cluster.command(shard_id, payload, timeout=left)
            except ShardNonexistent:
                # The shard left this process (remove_shard): not ours to send.
                return False
            except CommandSendingError as err:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._drop(shard_id, op, sender, err)
                    return True
                # Not connected (a reconnect, or the shard is being removed):
                # wait for the shard, then try again.
                shard = self.cluster.shard(shard_id)
                if shard is None:
                    return False
                shard.wait_until_ready(_RETRY_SEND if left is None else min(left, 5.0))
                gevent.sleep(_RETRY_SEND)
                continue
            except InvalidCommand as err:
                self._drop(shard_id, op, sender, err)
                return True
            self._sent += 1
            # One per command: at DEBUG, or a busy bot's log would be nothing else.
            log.debug("shard %d: sent command op %s from %s", shard_id, op, sender)
            return True

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
