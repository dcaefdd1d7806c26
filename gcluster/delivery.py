"""The queue between the shards' readers and the `events()` iterators.

Two choices keep a busy stream cheap:

- Dispatches wait in the queue *undecoded*. The reader needs only a dispatch's
  `t` and `s` (peeked from the raw JSON), so it queues the raw bytes and the
  iterator decodes them as it hands the event over. Bytes are invisible to the
  garbage collector, and the decoded dicts then live only as long as the
  application holds the event. Decoding in the reader kept every queued
  event's dicts alive across collections, and collecting was a third of the
  per-event cost (benchmarks/receive_profile.py).
- A deque instead of a gevent Queue: putting and taking are single C calls.
  An iterator that finds it empty waits on a bare gevent Waiter, woken by the
  next put; the readers' other puts until it runs cost nothing extra.

What the queue holds, told apart by type:

    RawDispatch(shard_id, kind, name, sequence, payload)   a dispatch, still raw JSON
    (shard_id, event)                  an Event the shard made, or a SessionMark

and `close(error=None)` ends it: every iterator, waiting or to come, gets
what is still queued and then the end (or the error).
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeAlias

import ujson
from gevent.hub import Waiter

from gcluster.backends import json_backend
from gcluster.errors import ConfigError
from gcluster.events import Event, EventType

__all__ = ["DECODERS", "EventQueue", "Item", "Loads", "RawDispatch", "resolve_decoder"]

log = logging.getLogger("gcluster.shard")

_new_tuple = tuple.__new__


class RawDispatch(NamedTuple):
    """A dispatch waiting in the queue undecoded (its `t` and `s` were peeked)."""

    shard_id: int
    kind: EventType
    name: str
    sequence: int
    payload: bytes


# A RawDispatch, or (shard_id, Event or a shard's marker such as SessionMark).
Item: TypeAlias = RawDispatch | tuple[int, Any]

Loads = Callable[[bytes], Any]

# Decoders by name, and the extra that installs each. "auto", the default,
# is orjson when installed (the `fast` extra) and ujson otherwise
# (gcluster.backends). orjson is faster (benchmarks/decoders.py), but turns
# integers past 64 bits into floats (Discord sends snowflakes as strings, so
# none are lost).
DECODERS: Final = {"auto": "ujson", "ujson": "ujson", "orjson": "gcluster[fast]"}


def resolve_decoder(decoder: str | Loads) -> Loads:
    """The `loads` function for `decoder`: a name from DECODERS or a callable.

    Raises:
        ConfigError: an unknown name, or a decoder that is not installed.
    """
    if callable(decoder):
        return decoder
    if decoder == "auto":
        auto: Loads = json_backend().namespace.loads
        return auto
    if decoder not in DECODERS:
        raise ConfigError(
            f"decoder must be one of {', '.join(DECODERS)} or a callable, not {decoder!r}"
        )
    try:
        module = importlib.import_module(decoder)
    except ImportError as err:
        raise ConfigError(
            f"decoder {decoder!r} is not installed: pip install '{DECODERS[decoder]}'"
        ) from err
    loads: Loads = module.loads
    return loads


class SkipLog:
    """Lines about skipped messages: one per shard per `interval`, then a count of the rest.

    A peer can send garbage as fast as it likes; the log must not follow.
    """

    __slots__ = ("_clock", "_interval", "_last", "_unlogged")

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[int, float] = {}
        self._unlogged: dict[int, int] = {}

    def error(self, shard_id: int, reason: str, what: str = "skipped") -> None:
        now = self._clock()
        last = self._last.get(shard_id)
        if last is not None and now - last < self._interval:
            self._unlogged[shard_id] = self._unlogged.get(shard_id, 0) + 1
            return
        unlogged = self._unlogged.pop(shard_id, 0)
        more = f" ({unlogged} more since the last line)" if unlogged else ""
        self._last[shard_id] = now
        log.error("shard %d: %s; %s%s", shard_id, reason, what, more)


class EventQueue:
    """First in, first out, for any number of readers and iterators in one hub."""

    __slots__ = ("_closed", "_error", "_items", "_waiters", "loads", "skips")

    def __init__(self, loads: Loads = ujson.loads) -> None:
        self.loads = loads
        # Shared with the readers that put into this queue: a message skipped
        # by a reader or by an iterator is logged the same way.
        self.skips = SkipLog()
        self._items: deque[Item] = deque()
        self._closed = False
        self._error: BaseException | None = None
        # Iterators waiting for an item, oldest first. A bare Waiter, not a
        # gevent Event: waking through it costs half as much, once per batch.
        self._waiters: deque[Waiter[Any]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> None:
        self._items.append(item)
        if self._waiters:
            self._wake_one()

    def close(self, error: BaseException | None = None) -> None:
        """End the stream once what is queued is read: iterators stop, or raise `error`."""
        self._closed = True
        self._error = error
        while self._waiters:
            self._wake_one()

    def reopen(self) -> None:
        """Undo a `close(error)`: a shard that had failed is running again."""
        if self._error is not None:
            self._closed = False
            self._error = None

    def _wait(self) -> None:
        """Return once an item is queued (at once if one already is)."""
        items = self._items
        waiters = self._waiters
        while not items and not self._closed:
            waiter: Waiter[Any] = Waiter()
            waiters.append(waiter)
            try:
                waiter.get()
            except BaseException:
                # Killed while waiting: drop out of the line, and pass on a
                # wake-up this waiter may already have been given.
                if waiter in waiters:
                    waiters.remove(waiter)
                elif items and waiters:
                    self._wake_one()
                raise

    def _wake_one(self) -> None:
        waiter = self._waiters.popleft()
        waiter.hub.loop.run_callback(waiter.switch, None)

    def next_event(self) -> tuple[int, Any] | None:
        """The next `(shard_id, Event or marker)`; None once the queue is closed and read.

        A dispatch is decoded here. One that is not valid JSON despite a
        well-formed envelope is logged and skipped: its sequence was already
        counted, and resuming would only replay the same bytes.

        Raises:
            the error the queue was closed with, once what was queued is read.
        """
        items = self._items
        loads = self.loads
        while True:
            if not items:
                self._wait()
                if not items:
                    if self._error is not None:
                        raise self._error
                    return None
            item = items.popleft()
            if type(item) is not RawDispatch:
                return item  # type: ignore[return-value]
            shard_id, kind, name, sequence, payload = item
            try:
                data = loads(payload)["d"]
            except (ValueError, KeyError, TypeError) as err:
                self.skips.error(
                    shard_id, f"dispatch {name} s={sequence} is not valid JSON ({err})"
                )
                continue
            # tuple.__new__ directly: Event(...) would add a Python-level call.
            return shard_id, _new_tuple(Event, (kind, name, shard_id, sequence, data))
