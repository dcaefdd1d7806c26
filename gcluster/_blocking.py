"""Blocking library calls (requests, redis-py) that block only the calling greenlet.

Every blocking call of the library goes through here. Unless the application
monkey-patched sockets, such a call runs in a thread pool, so the hub (and
every shard's heartbeat) keeps running: gevent's shared pool
(`call_blocking`), or one of the caller's own (`ThreadPoolCaller`) for calls
that may wait a long time and would otherwise hold the shared pool's threads.

An exception raised in the pool thread is caught there and re-raised in the
calling greenlet: gevent's pool reports every exception a task raises to the
hub, which prints its traceback, and during an outage that would be one
traceback per retry, burying the log line that says what is going on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent import monkey
from gevent.threadpool import ThreadPool

__all__ = ["ThreadPoolCaller", "call_blocking"]

T = TypeVar("T")


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _capture(func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return func(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - handed back to the caller below
        return _Raised(err)


def _run_in(
    pool: ThreadPool, func: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    result = pool.apply(_capture, (func, args, kwargs))
    if isinstance(result, _Raised):
        raise result.error
    value: T = result
    return value


def call_blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`func(*args, **kwargs)`, blocking only the calling greenlet; raises what it raises."""
    if monkey.is_module_patched("socket"):
        return func(*args, **kwargs)
    return _run_in(gevent.get_hub().threadpool, func, args, kwargs)


class ThreadPoolCaller:
    """`call_blocking` in a thread pool of its own, of `size` threads.

    For calls that may wait a long time (a queue service holding a request
    until the shard's slot): they wait in these threads, not in gevent's
    shared pool, which other blocking calls need. The pool is made on first
    use, and again when used from another thread's hub (a pool delivers its
    results to the hub of the thread that made it).

    Args:
        size: threads that may wait at once.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: ThreadPool | None = None

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`func(*args, **kwargs)` in one of the pool's threads; raises what it raises."""
        if monkey.is_module_patched("socket"):
            return func(*args, **kwargs)
        hub = gevent.get_hub()
        pool = self._pool
        if pool is None or pool.hub is not hub:
            pool = self._pool = ThreadPool(self.size, hub=hub)
        return _run_in(pool, func, args, kwargs)

    def close(self) -> None:
        """Stop the pool (threads still in a call finish it first)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.kill()
