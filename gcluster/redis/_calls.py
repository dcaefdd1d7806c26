"""Every redis-py call of gcluster.redis, and the one place its exceptions become gcluster's.

`call` runs a client method (or a script, or a function that drives a
pipeline) so that it blocks only the calling greenlet (see
`gcluster._blocking`), and turns whatever redis-py raises into `RedisCallError`
with the original as its `__cause__`: `RedisError` and its subclasses, the
Redis Cluster exceptions that are not among them (`RedisClusterException`,
`SlotNotCoveredError`), and the socket's `OSError`. The sink, the worker, the
command inbox, the lease, the queue and the session store catch only
`RedisCallError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from redis.exceptions import (
    AskError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from gcluster._blocking import call_blocking
from gcluster.errors import RedisCallError

__all__ = ["call", "stream_reply", "unreachable"]

T = TypeVar("T")

# What a redis-py call raises when Redis cannot be reached or refuses the
# command; RedisClusterException (SlotNotCoveredError among them) is not a RedisError.
_FAILURES: Final = (RedisError, RedisClusterException, OSError)
# Error replies of a Redis Cluster between two masters of a slot (a failover,
# a slot moving), or of a demoted master: they pass without anyone's help.
_TOPOLOGY_ERRORS: Final = (AskError, TryAgainError, ClusterDownError, ReadOnlyError)


def _translate(err: Exception) -> RedisCallError:
    reply = str(err) if isinstance(err, ResponseError) else None
    return RedisCallError(str(err), reply=reply)


def call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`func(*args, **kwargs)`, blocking only the calling greenlet.

    Raises:
        RedisCallError: redis-py or the socket raised; the original is the cause.
    """
    try:
        return call_blocking(func, *args, **kwargs)
    except _FAILURES as err:
        raise _translate(err) from err


def stream_reply(reply: Any) -> Iterable[tuple[Any, Any]]:
    """`(key, entries)` pairs of an XREAD/XREADGROUP reply, whichever shape redis-py gave it."""
    if not reply:
        return ()
    if isinstance(reply, dict):
        return reply.items()
    return [(item[0], item[1]) for item in reply]


def unreachable(err: RedisCallError) -> bool:
    """Whether a failure is one of reaching Redis, rather than Redis refusing the command.

    No answer at all (the server or the slot's master is down), or a Redis
    Cluster between masters (CLUSTERDOWN, TRYAGAIN, MOVED, ASK, READONLY).
    """
    return err.reply is None or isinstance(err.__cause__, _TOPOLOGY_ERRORS)
