"""Blocking library calls (requests, redis-py) that block only the calling greenlet.

Unless the application monkey-patched sockets, such a call runs in gevent's
thread pool, so the hub (and every shard's heartbeat) keeps running. An
exception raised in the pool thread is caught there and re-raised in the
calling greenlet: gevent's pool reports every exception a task raises to the
hub, which prints its traceback, and during an outage that would be one
traceback per retry, burying the log line that says what is going on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent import monkey

__all__ = ["call_blocking"]

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


def call_blocking(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`func(*args, **kwargs)`, blocking only the calling greenlet; raises what it raises."""
    if monkey.is_module_patched("socket"):
        return func(*args, **kwargs)
    result = gevent.get_hub().threadpool.apply(_capture, (func, args, kwargs))
    if isinstance(result, _Raised):
        raise result.error
    value: T = result
    return value
