"""Coordination through Redis, for shards spread over processes and machines (extra: redis).

`RedisQueue` spaces IDENTIFYs and keeps the day's session-start budget for
every process of one bot; `RedisSessionStore` keeps resumable sessions so a
restarted process RESUMEs instead of identifying. Both fail closed: when Redis
cannot answer they raise a gcluster error and nothing identifies.

Install with ``pip install 'gcluster[redis]'``; ``import gcluster`` alone never
imports redis.
"""

from __future__ import annotations

try:
    import redis as _redis  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError("gcluster.redis needs redis-py: pip install 'gcluster[redis]'") from err

from gcluster.redis.queue import RedisQueue
from gcluster.redis.sessions import RedisSessionStore, SessionStoreError

__all__ = ["RedisQueue", "RedisSessionStore", "SessionStoreError"]
