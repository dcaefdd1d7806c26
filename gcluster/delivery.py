"""The queue between the shards' readers and the `events()` iterators.

Two choices keep a busy stream cheap:

- Dispatches wait in the queue *undecoded*. The reader needs only a dispatch's
  `t` and `s` (peeked from the raw JSON), so it queues the raw bytes and the
  iterator decodes them as it hands the event over. Bytes are invisible to the
  garbage collector, and the decoded dicts then live only as long as the
  application holds the event. Decoding in the reader kept every queued
  event's dicts alive across collections, and collecting was a third of the
  per-event cost (benchmarks/receive_profile.py).
- A deque and a wake-up flag instead of a gevent Queue: putting and taking are
  single C calls, and a waiting iterator is woken once per batch a reader put,
  not once per event.

What the queue holds, always a tuple:

    (shard_id, kind, name, sequence, payload)   a dispatch, payload still raw JSON
    (shard_id, event)                           an Event the shard made, or a SessionMark
    (None, END) or (None, error)                the stream ended; every shard failed
"""

from __future__ import annotations

import importlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import ujson
from gevent.event import Event as Flag

from gcluster.events import Event

__all__ = ["DECODERS", "END", "EventQueue", "Loads", "resolve_decoder"]

log = logging.getLogger("gcluster.shard")

END: Final = object()  # no more events: the shard or cluster was shut down

Loads = Callable[[bytes], Any]

# Decoders by name, and the extra that installs each. ujson is the default;
# orjson decodes these payloads about 1.5x faster, but turns integers past
# 64 bits into floats (Discord sends snowflakes as strings, so none are lost).
DECODERS: Final = {"ujson": "ujson", "orjson": "gcluster[orjson]"}


def resolve_decoder(decoder: str | Loads) -> Loads:
    """The `loads` function for `decoder`: a name from DECODERS or a callable.

    Raises:
        ValueError: an unknown name, or a decoder that is not installed.
    """
    if callable(decoder):
        return decoder
    if decoder not in DECODERS:
        raise ValueError(
            f"decoder must be one of {', '.join(DECODERS)} or a callable, not {decoder!r}"
        )
    try:
        module = importlib.import_module(decoder)
    except ImportError:
        raise ValueError(
            f"decoder {decoder!r} is not installed: pip install '{DECODERS[decoder]}'"
        ) from None
    loads: Loads = module.loads
    return loads


class EventQueue:
    """First in, first out, for any number of readers and iterators in one hub."""

    __slots__ = ("_items", "_sleeping", "_wake", "loads")

    def __init__(self, loads: Loads = ujson.loads) -> None:
        self.loads = loads
        self._items: deque[tuple[Any, ...]] = deque()
        self._sleeping = False
        self._wake = Flag()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: tuple[Any, ...]) -> None:
        self._items.append(item)
        if self._sleeping:
            self._sleeping = False
            self._wake.set()

    def get(self) -> tuple[Any, ...]:
        """The next item as queued, waiting for one if there is none."""
        items = self._items
        while not items:
            self._sleeping = True
            self._wake.clear()
            self._wake.wait()
        return items.popleft()

    def next_event(self) -> tuple[Any, Any]:
        """`(shard_id, Event or SessionMark)`, or `(None, END or error)`.

        A dispatch is decoded here. One that is not valid JSON despite a
        well-formed envelope is logged and skipped: its sequence was already
        counted, and resuming would only replay the same bytes.
        """
        items = self._items
        loads = self.loads
        while True:
            # get(), inlined: this runs for every event.
            while not items:
                self._sleeping = True
                self._wake.clear()
                self._wake.wait()
            item = items.popleft()
            if len(item) == 2:
                return item
            shard_id, kind, name, sequence, payload = item
            try:
                data = loads(payload)["d"]
            except (ValueError, KeyError, TypeError) as err:
                log.error(
                    "shard %d: dispatch %s s=%s is not valid JSON (%s); skipped",
                    shard_id,
                    name,
                    sequence,
                    err,
                )
                continue
            return shard_id, Event(kind, name, shard_id, sequence, data)
