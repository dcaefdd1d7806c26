"""The dispatcher: every event's handlers in their own greenlet, from a bounded pool.

A `for` loop over `cluster.events()` handles one event at a time, so a handler
that waits on I/O (a REST call, a database) holds up every event behind it.
`Dispatcher` reads the stream and runs each event's handlers in a greenlet of
a `gevent.pool.Pool`: a slow handler delays neither other events nor the
shards' heartbeats (those run in the shards' own greenlets), and the pool size
bounds how many events are handled at once.

    dispatcher = Dispatcher(cluster, pool_size=100, ordering="channel")

    @dispatcher.on(EventType.MESSAGE_CREATE)
    def on_message(shard_id, event):
        ...

    dispatcher.run()  # until cluster.down() ends the stream

With an ordering key, events of one key (one shard, guild or channel) are
handled one at a time in the order they arrived, while different keys run
concurrently. Nothing grows without bound: when every pool slot is busy, or
`max_pending` events already wait behind their key, the dispatcher stops
reading and the events wait in the cluster's queue (`cluster.backlog`), with a
warning in the log; the shards keep reading their sockets and heartbeating.

A handler that raises does not stop the others. Its exception goes to the
`on_error` hook when one was given; otherwise it is logged on
``gcluster.dispatch`` when the application configured logging, and printed
to stderr with its traceback when it did not (as gevent prints a failed
greenlet's), so it is never lost to the NullHandler gcluster installs.

.. important:: A gevent object: use a dispatcher from the hub (thread) its
   cluster runs in. Handlers must not block the hub itself (CPU-heavy work,
   unpatched blocking I/O), or every shard waits too.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeAlias

import gevent
from gevent.event import Event as Flag
from gevent.pool import Pool

from gcluster._json import JsonReady
from gcluster.errors import ConfigError, InvalidState
from gcluster.events import Event, EventType

__all__ = ["Dispatcher", "DispatcherStats", "ErrorHook", "EventSource", "Handler", "Ordering"]

log = logging.getLogger(__name__)

#: `handler(shard_id, event)`; its return value is ignored.
Handler: TypeAlias = Callable[[int, Event], object]
#: `on_error(shard_id, event, handler, error)`: told of a handler call that raised.
ErrorHook: TypeAlias = Callable[[int, Event, Handler, BaseException], object]
#: What events of one key are handled in order: None (no order), or the key.
Ordering: TypeAlias = Literal["shard", "guild", "channel"] | None

_ORDERINGS: Final = (None, "shard", "guild", "channel")
# Events whose own `id` is the channel they are about.
_CHANNEL_EVENTS: Final = frozenset(
    {
        EventType.CHANNEL_CREATE,
        EventType.CHANNEL_UPDATE,
        EventType.CHANNEL_DELETE,
        EventType.THREAD_CREATE,
        EventType.THREAD_UPDATE,
        EventType.THREAD_DELETE,
    }
)
# While reading is held up by a full pool or backlog, warn at most this often.
_WARN_EVERY: Final = 10.0


class EventSource(Protocol):
    """Anything with `events()` yielding `(shard_id, Event)`: a `Cluster`, a stream worker."""

    def events(self) -> Iterable[tuple[int, Event]]: ...


@dataclass(frozen=True, slots=True)
class DispatcherStats(JsonReady):
    """A snapshot of a dispatcher's counters (`Dispatcher.stats()`).

    The ``events_`` fields count events; the ``calls_`` fields count handler
    calls (an event with three handlers makes three calls).

    Attributes:
        events_received: events read from the cluster.
        events_handled: events whose handlers have all run, returning or
            raising (events no handler is registered for are not counted).
        events_in_flight: events whose handlers are running now.
        events_pending: events read and waiting behind an earlier event of their key.
        peak_events_in_flight: the most events ever handled at once (at most `pool_size`).
        calls_returned: handler calls that returned.
        calls_failed: handler calls that raised (each one reported, see `Dispatcher`).
    """

    events_received: int
    events_handled: int
    events_in_flight: int
    events_pending: int
    peak_events_in_flight: int
    calls_returned: int
    calls_failed: int


class _StopReading(BaseException):
    """Thrown into the reading greenlet by `stop()` while it waits for the next event.

    A BaseException so nothing between the cluster's queue and `run()` swallows it.
    """


class Dispatcher:
    """Runs handlers for a cluster's events, each event in a greenlet of a bounded pool.

    Args:
        cluster: the `Cluster` (or any `EventSource`) to read.
        pool_size: at most this many events are handled at once.
        ordering: None to handle events in any order; "shard", "guild" or
            "channel" to handle the events of one shard, guild or channel one
            at a time, in arrival order. Events without a guild fall back to
            their channel (DMs), and events without either (lifecycle, READY,
            USER_UPDATE) to their shard; with "channel", CHANNEL_* and THREAD_*
            events use the channel's own id, and events without a channel fall
            back to their guild, then their shard.
        max_pending: with an ordering, at most this many events wait behind
            their key before reading pauses; default 10 × `pool_size`.
        on_error: called as ``on_error(shard_id, event, handler, error)`` in
            the handler's greenlet when a handler raises. Without it, the
            error is logged on ``gcluster.dispatch`` if the application
            configured logging (a handler other than a NullHandler on that
            logger or an ancestor it propagates to, the root included), and
            printed to stderr with its traceback if not. An exception from
            `on_error` itself is reported the same default way.

    Raises:
        ConfigError: a size is not positive or the ordering is unknown.
    """

    def __init__(
        self,
        cluster: EventSource,
        pool_size: int = 100,
        ordering: Ordering = None,
        *,
        max_pending: int | None = None,
        on_error: ErrorHook | None = None,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"pool_size must be a positive int, not {pool_size!r}")
        if ordering not in _ORDERINGS:
            raise ConfigError(
                f"ordering must be None, 'shard', 'guild' or 'channel', not {ordering!r}"
            )
        if max_pending is None:
            max_pending = 10 * pool_size
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ConfigError(f"max_pending must be a positive int, not {max_pending!r}")
        self._source = cluster
        self.pool_size = pool_size
        self.ordering: Ordering = ordering
        self.max_pending = max_pending
        self.on_error = on_error
        self._pool = Pool(pool_size)
        self._handlers: dict[EventType, list[Handler]] = {}
        self._any: list[Handler] = []
        # Ordered mode: the events waiting behind the one being handled, per key.
        self._lanes: dict[Hashable, deque[tuple[int, Event, tuple[Handler, ...]]]] = {}
        self._room = Flag()  # a lane took an event off its queue
        self._reader: Any = None  # the greenlet inside run(), while it reads
        self._waiting_for_event = False  # ... and is blocked on the cluster's queue
        self._done_reading = Flag()
        self._running = False
        self._stopping = False
        self._last_warning = float("-inf")
        self._received = 0
        self._events_handled = 0
        self._returned = 0
        self._failed = 0
        self._in_flight = 0
        self._pending = 0
        self._peak = 0

    def __repr__(self) -> str:
        state = "stopping" if self._stopping else "running" if self._running else "idle"
        return (
            f"<Dispatcher {state} pool_size={self.pool_size} ordering={self.ordering!r} "
            f"in_flight={self._in_flight}>"
        )

    # --- handlers --------------------------------------------------------------

    def on(self, *kinds: EventType) -> Callable[[Handler], Handler]:
        """Decorator: call the handler for events of these kinds.

            @dispatcher.on(EventType.MESSAGE_CREATE, EventType.MESSAGE_UPDATE)
            def on_message(shard_id, event): ...

        Handlers of one event run one after another, in the order they were
        registered (kind-specific ones first, then `on_any` ones).

        Raises:
            TypeError: no kind given, or something that is not an `EventType`.
        """
        if not kinds:
            raise TypeError("on() needs at least one EventType")
        for kind in kinds:
            if not isinstance(kind, EventType):
                raise TypeError(f"on() takes EventType members, not {kind!r}")

        def register(handler: Handler) -> Handler:
            for kind in kinds:
                self._handlers.setdefault(kind, []).append(handler)
            return handler

        return register

    def on_any(self, handler: Handler) -> Handler:
        """Decorator: call the handler for every event (`@dispatcher.on_any`)."""
        self._any.append(handler)
        return handler

    # --- running ---------------------------------------------------------------

    def run(self) -> None:
        """Read the cluster's events and dispatch them until the stream ends or `stop()`.

        Returns once reading has ended and every handler of the events read
        so far has finished. Raises what the stream raises (e.g. the fatal
        close error when every shard is fatally closed), after the running
        handlers have finished.

        Raises:
            InvalidState: the dispatcher is already running.
            ClusterNotUp, EventStreamBusy: from the cluster's `events()`: it
                was never brought up, or another loop is reading it.
        """
        if self._running:
            raise InvalidState("this dispatcher is already running")
        self._running = True
        self._done_reading.clear()
        try:
            self._read()
        except Exception:
            self._finish_reading()
            self._pool.join()
            raise
        finally:
            self._finish_reading()
            self._running = False
        self._pool.join()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop reading events and wait for the handlers already started.

        Events already read but waiting behind their key are still handled.
        Idempotent; `run()` returns once this is done.

        Args:
            timeout: seconds to wait for the handlers; None waits until they finish.

        Returns:
            True when every handler has finished; False on timeout, or when
            called from a handler (which cannot wait for itself).
        """
        self._stopping = True
        deadline = None if timeout is None else time.monotonic() + timeout
        reader = self._reader
        current = gevent.getcurrent()
        if reader is not None and reader is not current:
            # Wake the reader only where it waits for the cluster: an event it
            # already holds is still dispatched. It checks _stopping after that.
            gevent.get_hub().loop.run_callback(self._interrupt, reader)
            if not self._done_reading.wait(_remaining(deadline)):
                return False
        if current in self._pool:
            return False
        return bool(self._pool.join(timeout=_remaining(deadline)))

    def stats(self) -> DispatcherStats:
        """The counters now."""
        return DispatcherStats(
            events_received=self._received,
            events_handled=self._events_handled,
            events_in_flight=self._in_flight,
            events_pending=self._pending,
            peak_events_in_flight=self._peak,
            calls_returned=self._returned,
            calls_failed=self._failed,
        )

    def key(self, shard_id: int, event: Event) -> Hashable | None:
        """The ordering key of an event, e.g. ``("guild", "1234")``; None without ordering.

        Events with equal keys are handled one at a time, in arrival order.
        """
        if self.ordering is None:
            return None
        if self.ordering == "shard":
            return ("shard", shard_id)
        data = event.data if isinstance(event.data, dict) else {}
        if self.ordering == "channel":
            channel = data.get("id") if event.kind in _CHANNEL_EVENTS else data.get("channel_id")
            if channel is not None:
                return ("channel", str(channel))
            guild = data.get("guild_id")
            if guild is not None:
                return ("guild", str(guild))
        else:
            guild = data.get("guild_id")
            if guild is not None:
                return ("guild", str(guild))
            channel = data.get("channel_id")  # a DM: its channel stands in for a guild
            if channel is not None:
                return ("channel", str(channel))
        return ("shard", shard_id)

    # --- reading -----------------------------------------------------------------

    def _read(self) -> None:
        if self._stopping:
            return
        self._reader = gevent.getcurrent()
        events: Iterator[tuple[int, Event]] = iter(self._source.events())
        while not self._stopping:
            self._waiting_for_event = True
            try:
                shard_id, event = next(events)
            except StopIteration:
                return
            except _StopReading:
                return
            finally:
                self._waiting_for_event = False
            self._received += 1
            handlers = self._handlers_for(event)
            if handlers:
                self._submit(shard_id, event, handlers)

    def _interrupt(self, reader: Any) -> None:
        # Runs in the hub: the reader is parked, and the flag says where.
        if self._waiting_for_event and self._reader is reader and not reader.dead:
            reader.throw(_StopReading)

    def _finish_reading(self) -> None:
        self._reader = None
        self._done_reading.set()

    def _handlers_for(self, event: Event) -> tuple[Handler, ...]:
        specific = self._handlers.get(event.kind)
        if specific:
            return (*specific, *self._any)
        return tuple(self._any)

    def _submit(self, shard_id: int, event: Event, handlers: tuple[Handler, ...]) -> None:
        item = (shard_id, event, handlers)
        if self.ordering is None:
            self._spawn(self._handle_one, item)
            return
        key = self.key(shard_id, event)
        while True:
            lane = self._lanes.get(key)
            if lane is None:
                # Registered before spawning: the reader alone adds to lanes,
                # and nothing else is added while it waits for a pool slot.
                lane = deque()
                self._lanes[key] = lane
                self._spawn(self._drain, key, lane, item)
                return
            if self._pending < self.max_pending:
                lane.append(item)
                self._pending += 1
                return
            self._warn_backlog(f"{self._pending} events wait behind their {self.ordering}")
            self._room.clear()
            self._room.wait()

    def _spawn(self, func: Callable[..., None], *args: Any) -> None:
        if self._pool.full():
            self._warn_backlog(f"all {self.pool_size} pool slots are busy")
        # Blocks while the pool is full: the backpressure that bounds memory.
        self._pool.spawn(func, *args)

    def _warn_backlog(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_warning < _WARN_EVERY:
            return
        self._last_warning = now
        backlog = getattr(self._source, "backlog", None)
        log.warning(
            "dispatcher paused reading: %s; events wait in the cluster (backlog %s)",
            why,
            backlog if backlog is not None else "unknown",
        )

    # --- handling ------------------------------------------------------------------

    def _handle_one(self, item: tuple[int, Event, tuple[Handler, ...]]) -> None:
        self._handle(*item)

    def _drain(
        self,
        key: Hashable,
        lane: deque[tuple[int, Event, tuple[Handler, ...]]],
        item: tuple[int, Event, tuple[Handler, ...]],
    ) -> None:
        try:
            while True:
                self._handle(*item)
                if not lane:
                    return  # no switch between this check and the lane's removal
                item = lane.popleft()
                self._pending -= 1
                self._room.set()
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]
            if lane:  # killed: what waited behind it is dropped
                log.warning("dispatcher dropped %d unhandled events of %r", len(lane), key)
                self._pending -= len(lane)
                lane.clear()
                self._room.set()

    def _handle(self, shard_id: int, event: Event, handlers: tuple[Handler, ...]) -> None:
        self._in_flight += 1
        self._peak = max(self._peak, self._in_flight)
        try:
            for handler in handlers:
                try:
                    handler(shard_id, event)
                except (Exception, gevent.Timeout) as error:  # noqa: BLE001 - reported below
                    # A Timeout here is the handler's own (timeouts belong to
                    # the greenlet that started them): a failure like any other.
                    self._failed += 1
                    self._report(shard_id, event, handler, error)
                else:
                    self._returned += 1
            self._events_handled += 1
        finally:
            self._in_flight -= 1

    def _report(self, shard_id: int, event: Event, handler: Handler, error: BaseException) -> None:
        if self.on_error is not None:
            try:
                self.on_error(shard_id, event, handler, error)
                return
            except (Exception, gevent.Timeout) as hook_error:  # noqa: BLE001 - reported below
                # With the handler's error as its context: both tracebacks show.
                error = hook_error
        name = getattr(handler, "__qualname__", repr(handler))
        if _logging_configured(log):
            log.error(
                "handler %s failed: shard %s, event %s, sequence %s",
                name,
                shard_id,
                event.name,
                event.sequence,
                exc_info=error,
                extra={"shard_id": shard_id, "event_name": event.name, "sequence": event.sequence},
            )
            return
        # Nobody configured logging: the NullHandler would swallow the record.
        # Print it the way gevent prints a greenlet that died of an exception.
        lines = traceback.format_exception(error)
        lines.append(
            f"handler {name} failed: shard {shard_id}, event {event.name}, "
            f"sequence {event.sequence}\n"
        )
        sys.stderr.write("".join(lines))
        sys.stderr.flush()


def _logging_configured(logger: logging.Logger) -> bool:
    """Whether a record from `logger` reaches a handler the application set up.

    Not `logger.hasHandlers()`: the NullHandler gcluster adds to its own
    logger counts there, so it is always True.
    """
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(handler, logging.NullHandler) for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
