"""Coordination through Redis, for shards spread over processes and machines (extra: redis).

`RedisQueue` spaces IDENTIFYs and keeps the day's session-start budget for
every process of one bot; `RedisSessionStore` keeps resumable sessions so a
restarted process RESUMEs instead of identifying. Both fail closed: when Redis
cannot answer they raise a gcluster error and nothing identifies.

`StreamSink` publishes a cluster's events to Redis Streams and serves the
command inbox (`CommandInbox`); `StreamWorker` reads them in other processes
through a consumer group and sends commands back to the shard that owns them.
`ShardLease` lets a standby process take over a dead one's shards.

redis-py's exceptions never leave this package: a failed Redis call is a
`RedisCallError` (the redis-py exception is its `__cause__`), which the
queue, the session store and the worker raise their own errors from.

Install with ``pip install 'gcluster[redis]'``; ``import gcluster`` alone never
imports redis.
"""

from __future__ import annotations

try:
    import redis as _redis  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("gcluster.redis needs redis-py: pip install 'gcluster[redis]'") from err

from gcluster.errors import LeaseConflict, RedisCallError
from gcluster.redis.inbox import CommandInbox, InboxStats, inbox_key, shard_count_key
from gcluster.redis.lease import ShardLease, handoff_key, holder_key, lease_key, live_key
from gcluster.redis.queue import RedisQueue
from gcluster.redis.sessions import RedisSessionStore, SessionStoreError
from gcluster.redis.streams import (
    DEFAULT_STREAM,
    SinkStats,
    StreamError,
    StreamSink,
    decode_event,
    default_stream,
    encode_event,
    event_stream_key,
)
from gcluster.redis.worker import StreamWorker, WorkerStats

__all__ = [
    "DEFAULT_STREAM",
    "CommandInbox",
    "InboxStats",
    "LeaseConflict",
    "RedisCallError",
    "RedisQueue",
    "RedisSessionStore",
    "SessionStoreError",
    "ShardLease",
    "SinkStats",
    "StreamError",
    "StreamSink",
    "StreamWorker",
    "WorkerStats",
    "decode_event",
    "default_stream",
    "encode_event",
    "event_stream_key",
    "handoff_key",
    "holder_key",
    "inbox_key",
    "lease_key",
    "live_key",
    "shard_count_key",
]
