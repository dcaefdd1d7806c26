"""ThreadedCluster: a `Cluster` in a background OS thread, for applications without gevent.

A gevent hub belongs to one thread, and a `Cluster` lives in a hub. An
application built on ordinary threads (a threaded WSGI server, a GUI, a
worker pool) cannot call into that hub from its own threads, and should not
have to monkey-patch to use gcluster. `ThreadedCluster` starts one OS thread
with its own hub, builds the `Cluster` there, and offers the same methods to
every other thread:

- A method call runs on the cluster through `HubThread.call`
  (`gcluster.hubthread`): in a greenlet of the hub thread, while the calling
  thread waits for the result and re-raises the exception, if any, as its
  own. Every such wait has a timeout and notices a hub thread that died.
- `events()` reads a `queue.Queue` that a pump greenlet in the hub, started
  by `up()`, fills from `Cluster.events()`. When the application falls
  behind by `event_buffer` events, the pump waits (cooperatively, so
  heartbeats go on) and the events stay in the cluster's queue; a reader
  that takes one wakes it again.
  When every shard has stopped for good, the pump hands the error over and
  ends; `restart()` starts a new one.
- `shard(id)` and `shards()` return `ThreadedShard` handles, whose methods
  run on the `Shard` in the hub thread the same way.
- `down()` shuts the cluster down, hands the events queued before it through,
  and ends the hub thread; from then on `info()` (and a handle's) answers
  from the last snapshot and `events()` ends once drained.

Nothing here monkey-patches, and the application need not import gevent.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

import gevent
from gevent.event import Event as Flag

from gcluster._token import Token
from gcluster.cluster import (
    Cluster,
    ClusterBuilder,
    ClusterConfig,
    ClusterOptions,
    check_members_timeout,
)
from gcluster.commands import Command, Snowflake, shard_for_guild
from gcluster.errors import (
    ClusterNotUp,
    ClusterStartError,
    ClusterStartErrorType,
    CommandSendingError,
    ConfigError,
    GClusterError,
    HubThreadStopped,
    InvalidState,
    ShardNonexistent,
    ThreadedClusterTimeout,
)
from gcluster.events import Event
from gcluster.hubthread import GRACE, POLL, HubThread
from gcluster.interface import ClusterLifecycle
from gcluster.members import DEFAULT_MEMBERS_TIMEOUT, GuildMembers
from gcluster.message import Message
from gcluster.protocol import ResumeSession, Stage
from gcluster.shard import Information, Shard

if TYPE_CHECKING:
    import ssl

    # As in gcluster.cluster: for annotations only, never imported at run time.
    from typing_extensions import Unpack

    from gcluster.commands import UpdatePresence
    from gcluster.delivery import Loads
    from gcluster.events import EventTypeFlags
    from gcluster.proxy import Proxy
    from gcluster.queue import Queue
    from gcluster.scheme import ShardScheme
    from gcluster.sessions import SessionStore

__all__ = [
    "HubThread",
    "HubThreadStopped",
    "ThreadedCluster",
    "ThreadedClusterBuilder",
    "ThreadedClusterTimeout",
    "ThreadedShard",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CALL_TIMEOUT: Final = 30.0
DEFAULT_EVENT_BUFFER: Final = 1000

# End of the event stream, after down().
_END: Final = object()
# The pump stopped on the error in `_failure`: every shard has stopped for good.
_FAILED: Final = object()


class ThreadedShard:
    """One shard of a `ThreadedCluster`, for any thread: a `GatewayShard`.

    What `ThreadedCluster.shard(id)` and `shards()` return. The `Shard`
    itself lives in the cluster's hub thread; each method of this handle
    runs there, as the cluster's own methods do, and raises in the calling
    thread. `stage`, `error` and `session` read a fresh `info()` (one call
    into the hub thread each). After the cluster's `down()` they answer as
    the shard was when it stopped; once the shard is removed
    (`remove_shard`) they raise `ShardNonexistent`.

    Attributes:
        id: the shard id.
        total: the bot's shard count, all processes together.
    """

    __slots__ = ("_cluster", "id", "total")

    def __init__(self, cluster: ThreadedCluster, shard_id: int, total: int) -> None:
        self._cluster = cluster
        self.id = shard_id
        self.total = total

    def __repr__(self) -> str:
        return f"<ThreadedShard {self.id}/{self.total}>"

    def info(self) -> Information:
        """A snapshot of the shard; after `down()`, as it was when it stopped."""
        return self._cluster._shard_info(self.id)

    @property
    def stage(self) -> Stage:
        """Where its connection is: `info().stage`."""
        return self.info().stage

    @property
    def error(self) -> GClusterError | None:
        """What stopped it for good (stage FATALLY_CLOSED), else None: `info().error`."""
        return self.info().error

    @property
    def session(self) -> ResumeSession | None:
        """The session it would resume, from `info()`; None when it must IDENTIFY next."""
        info = self.info()
        if info.session_id is None or info.sequence is None:
            return None
        return ResumeSession(
            info.session_id, info.sequence, info.resume_url, shard_id=self.id, total=self.total
        )

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Wait for READY or RESUMED; False on timeout, when the shard failed, or after `down()`."""
        return self._cluster._shard_wait_until_ready(self.id, timeout)

    def command(
        self, command: Command | Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        """Send a gateway command through this shard: `ThreadedCluster.command(id, ...)`."""
        self._cluster.command(self.id, command, timeout=timeout)

    def send(self, message: Message) -> None:
        """Send a raw websocket message through this shard: `ThreadedCluster.send(id, ...)`."""
        self._cluster.send(self.id, message)

    def restart(self) -> None:
        """Reconnect this shard now: `ThreadedCluster.restart(id)`."""
        self._cluster.restart(self.id)


class ThreadedCluster(ClusterLifecycle):
    """A `Cluster` in a background thread with its own gevent hub; every method is thread-safe.

    Same arguments and options as `Cluster`; the cluster is built (and its
    options checked) in the hub thread, which starts here and ends with
    `down()` or `down_resumable()` (both, and the context manager, come from
    `ClusterLifecycle`). Call it from any thread; exceptions raise in the
    calling thread. Like `Cluster`, it is a `GatewayCluster`::

        cluster = ThreadedCluster(token, Intents.GUILD_MESSAGES)
        cluster.up()
        for shard_id, event in cluster.events():   # any ordinary thread
            ...

    Callables among the options (`shard_presence`) and the identify `queue`
    run in the hub thread.

    Args:
        token, intents, **options: as for `Cluster`.
        call_timeout: seconds to wait for the hub thread to answer a call that
            has no timeout of its own (`info`, `send`, `down`, ...).
        event_buffer: events handed to `events()` and not read yet beyond
            which the pump waits; the rest stay in the cluster's queue.

    Raises:
        ConfigError: an option is out of range or unknown.
        RuntimeError: threading is monkey-patched (use `Cluster` directly
            then), or a `gcluster.testing.GatewaySimulator` serves from this
            thread's hub (see `up`).
    """

    def __init__(
        self,
        token: str | Token,
        intents: int,
        *,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        event_buffer: int = DEFAULT_EVENT_BUFFER,
        **options: Unpack[ClusterOptions],
    ) -> None:
        if _threading_is_patched():
            raise InvalidState(
                "threading is monkey-patched by gevent: use Cluster directly, "
                "ThreadedCluster is for applications that do not patch"
            )
        _refuse_a_simulator_in_this_thread()
        if call_timeout <= 0:
            raise ConfigError(f"call_timeout must be positive, not {call_timeout}")
        if event_buffer < 1:
            raise ConfigError(f"event_buffer must be at least 1, not {event_buffer}")
        self._call_timeout = call_timeout
        self._event_buffer = event_buffer
        self._events: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._down_started = False
        self._down_done = threading.Event()
        self._final_info: dict[int, Information] = {}
        self._final_remaining: int | None = None
        # Set in the hub thread once the shards exist; read from any thread.
        self._total: int | None = None
        self._shards: dict[int, ThreadedShard] = {}
        self._failure: Exception | None = None
        self._pump_waiting = False
        # Events finished by the reading threads and not yet handed to the hub thread.
        self._finish_lock = threading.Lock()
        self._to_finish = 0
        self._finish_posted = False
        # Made in the hub thread: the cluster and _room by _build, the pump by up().
        self._cluster: Cluster | None = None
        self._room: Any = None
        self._draining = False
        self._pump: Any = None
        self._pumping = False  # the pump was started: events() has something to read
        self._hub = HubThread("gcluster-cluster").start()
        try:
            self._config: ClusterConfig = self._hub.call(
                self._build, token, intents, options, timeout=call_timeout
            )
        except BaseException:
            self._hub.stop(call_timeout)
            raise

    @classmethod
    def new(
        cls,
        token: str | Token,
        intents: int,
        *,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        event_buffer: int = DEFAULT_EVENT_BUFFER,
        **options: Unpack[ClusterOptions],
    ) -> ThreadedCluster:
        """Same as `ThreadedCluster(token, intents, ...)`, as `Cluster.new` spells it."""
        return cls(token, intents, call_timeout=call_timeout, event_buffer=event_buffer, **options)

    @classmethod
    def builder(cls, token: str | Token, intents: int) -> ThreadedClusterBuilder:
        """A builder taking one option per method call, as `Cluster.builder`'s, plus
        `call_timeout` and `event_buffer`: `.event_types(...).build()`."""
        return ThreadedClusterBuilder(token, intents)

    def __repr__(self) -> str:
        state = "stopped" if self._down_done.is_set() else "running"
        return f"<ThreadedCluster {state} thread={self._hub.name}>"

    def config(self) -> ClusterConfig:
        """The frozen configuration (safe to read from any thread)."""
        return self._config

    # --- life ----------------------------------------------------------------------

    def up(self, block: bool = True, timeout: float | None = None) -> None:
        """Start every shard; as `Cluster.up`, waiting in the calling thread.

        With `block`, returns once every shard has received READY or
        RESUMED; `events()` may be read (from any thread) as soon as the
        shards are started, so also while this call waits.

        Raises:
            ClusterStartError, AuthenticationFailed, ...: as `Cluster.up`, and
                ClusterStartError when the cluster was shut down.
            RuntimeError: a `gcluster.testing.GatewaySimulator` serves from
                the calling thread's hub. This call blocks that thread, so the
                simulator could not answer (GET /gateway/bot would time out
                after 10 s): run it in a process of its own
                (`gcluster.testing.SimulatorProcess`) or a thread of its own
                (`HubThread`).
        """
        _refuse_a_simulator_in_this_thread()
        if self._down_started:
            raise ClusterStartError(
                "this cluster was shut down; build a new one",
                kind=ClusterStartErrorType.SHARD_START,
            )
        wait = self._call_timeout if not block else _plus_grace(timeout)
        try:
            self._call(self._in_hub_up, block, timeout, timeout=wait)
        except ThreadedClusterTimeout as err:
            raise ClusterStartError(
                f"shards did not start within {timeout} s", kind=ClusterStartErrorType.TIMEOUT
            ) from err
        except HubThreadStopped as err:
            raise ClusterStartError(
                "this cluster was shut down; build a new one",
                kind=ClusterStartErrorType.SHARD_START,
            ) from err

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Wait until every shard has READY or RESUMED.

        Returns:
            False on timeout, when a shard was closed for good, before `up()`
            or after `down()`.
        """
        if self._down_started:
            return False
        try:
            return self._call(
                self._in_hub().wait_until_ready, timeout, timeout=_plus_grace(timeout)
            )
        except (HubThreadStopped, ThreadedClusterTimeout):
            return False

    # --- shards ----------------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """The bot's shard count (all processes together); None until `up()` has made the shards.

        Known as soon as the shards exist, so also while `up()` waits for
        them, and after an `up()` that raised once they did.
        """
        return self._total

    def shard_for(self, guild_id: int | str) -> int:
        """The id of the shard that receives a guild's events: `(guild_id >> 22) % total`.

        Answered in the calling thread, from `total`.

        Raises:
            ClusterNotUp: the shards were never made, so the total is unknown.
        """
        total = self._total
        if total is None:
            raise ClusterNotUp(self._not_up("does not know the shard count yet"))
        return shard_for_guild(guild_id, total)

    def shard(self, shard_id: int) -> ThreadedShard | None:
        """The shard with this id, or None when the cluster has none (before `up()`, none).

        A `ThreadedShard`: the `Shard` lives in the hub thread, and the
        handle forwards each call there. Answered in the calling thread;
        the same id gives the same handle, also after `down()`. (It used to
        return the shard's `Information`, which is now `shard(id).info()`.)
        """
        return self._shards.get(shard_id)

    def shards(self) -> list[ThreadedShard]:
        """Every shard of this cluster, as `ThreadedShard` handles in id order (none before `up()`).

        (It used to return their `Information`; `info()` still does.)
        """
        return list(self._shards.values())

    def info(self) -> dict[int, Information]:
        """`{shard_id: Information}`; after `down()`, as the shards were when they stopped."""
        try:
            return self._call(self._in_hub().info, timeout=self._call_timeout)
        except HubThreadStopped:
            self._down_done.wait(self._call_timeout)
            return dict(self._final_info)

    @property
    def session_starts_remaining(self) -> int | None:
        """IDENTIFYs left today as far as this process knows; as `Cluster.session_starts_remaining`.

        After `down()`, the count as the cluster stopped.
        """
        try:
            return self._call(self._in_hub_session_starts_remaining, timeout=self._call_timeout)
        except HubThreadStopped:
            self._down_done.wait(self._call_timeout)
            return self._final_remaining

    @property
    def backlog(self) -> int:
        """Events received and not yet read through `events()`."""
        waiting = self._events.qsize()
        try:
            return waiting + self._call(self._backlog, timeout=self._call_timeout)
        except HubThreadStopped:
            return waiting

    def command(
        self, shard_id: int, command: Command | Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        """Send a gateway command through one shard; as `Cluster.command`.

        Raises:
            ClusterNotUp, ShardNonexistent, CommandSendingError, InvalidCommand,
            PayloadTooLarge.
        """
        self._send(
            shard_id, self._in_hub_command, shard_id, command, timeout, wait=_plus_grace(timeout)
        )

    def request_members(
        self,
        guild_id: Snowflake,
        *,
        query: str | None = None,
        limit: int = 0,
        user_ids: Any = None,
        presences: bool = False,
        timeout: float = DEFAULT_MEMBERS_TIMEOUT,
    ) -> GuildMembers:
        """Ask for members of a guild and wait for the whole answer; as `Cluster.request_members`.

        Callable from any thread, several at once: each request runs in a
        greenlet of the hub thread while the calling thread waits.

        Raises:
            InvalidCommand, ConfigError, ClusterNotUp, ShardNonexistent,
            CommandSendingError, MembersRateLimited, MembersTimeout,
            MembersRequestLost, MembersRequestError: as `Cluster.request_members`;
            CommandSendingError also when the cluster was shut down.
        """
        seconds = check_members_timeout(timeout)  # before the grace is added to it
        try:
            return self._call(
                self._in_hub_request_members,
                guild_id,
                query,
                limit,
                user_ids,
                presences,
                seconds,
                timeout=_plus_grace(seconds),
            )
        except HubThreadStopped as err:
            if self._total is None:
                raise ClusterNotUp(self._not_up("has no shards to ask")) from err
            raise CommandSendingError(
                "the cluster was shut down, so no shard can ask for members",
                shard_id=shard_for_guild(guild_id, self._total),
            ) from err

    def command_raw(self, shard_id: int, payload: bytes | str) -> None:
        """Send a raw payload through one shard. Deprecated: use `command` or `send`."""
        warnings.warn(
            "ThreadedCluster.command_raw is deprecated; use command or send",
            DeprecationWarning,
            stacklevel=2,
        )
        # Like Cluster.command_raw, it waits for a rate-limit slot as long as it takes.
        self._send(shard_id, self._in_hub_command_raw, shard_id, payload, wait=None)

    def send(self, shard_id: int, message: Message) -> None:
        """Send a raw websocket message through one shard; as `Cluster.send`."""
        self._send(shard_id, self._in_hub_send, shard_id, message, wait=self._call_timeout)

    def restart(self, shard_id: int) -> None:
        """Reconnect one shard now (RESUME if it can, else IDENTIFY); as `Cluster.restart`.

        Also revives a shard that was fatally closed. When every shard had
        been, `events()` had raised their error and ended; events flow again
        from the next `events()` loop.

        Raises:
            ClusterNotUp: `up()` was never called.
            ShardNonexistent: the cluster is up and has no such shard.
            InvalidState: the cluster was shut down.
        """
        try:
            self._call(self._in_hub_restart, shard_id, timeout=self._call_timeout)
        except HubThreadStopped as err:
            if self._total is None:
                raise ClusterNotUp(self._not_up(f"has no shard {shard_id} yet")) from err
            raise InvalidState(f"shard {shard_id} was shut down; build a new cluster") from err

    def add_shard(self, shard_id: int, session: ResumeSession | None = None) -> ThreadedShard:
        """Start one more shard while the cluster runs; as `Cluster.add_shard`, from any thread.

        Returns at once with the shard's `ThreadedShard` handle (also in
        `shard(id)` and `shards()` from now on); `handle.wait_until_ready()`
        waits for its READY or RESUMED. Its events join `events()`, also
        when every other shard had been closed for good.

        Raises:
            ClusterNotUp, InvalidState, ShardSchemeError, ConfigError,
            SessionStartLimitExhausted, SessionStoreError: as `Cluster.add_shard`.
        """
        self._refuse_after_down("add", shard_id)
        try:
            return self._call(self._in_hub_add_shard, shard_id, session, timeout=self._call_timeout)
        except HubThreadStopped as err:
            raise self._shut_down_error("add", shard_id) from err

    def remove_shard(self, shard_id: int, resumable: bool = True) -> ResumeSession | None:
        """Stop one shard and take it out of the cluster; as `Cluster.remove_shard`.

        Waits (in the calling thread) for the shard to close, up to
        `call_timeout` plus a few seconds. Its handle then raises
        `ShardNonexistent`; the events it had received are still handed out
        by `events()`.

        Raises:
            ClusterNotUp, InvalidState, ShardNonexistent: as `Cluster.remove_shard`.
        """
        self._refuse_after_down("remove", shard_id)
        try:
            return self._call(
                self._in_hub_remove_shard,
                shard_id,
                resumable,
                timeout=self._call_timeout + GRACE,
            )
        except HubThreadStopped as err:
            raise self._shut_down_error("remove", shard_id) from err

    # --- events -------------------------------------------------------------------------

    def events(self, *, manual_finish: bool = False) -> Iterator[tuple[int, Event]]:
        """Every delivered event as `(shard_id, event)`, for any ordinary thread.

        Order is kept within each shard. Ends after `down()` once the events
        received before it are read; raises the fatal close error (in every
        iterating thread) when every shard is fatally closed, until `restart`
        revives one. Several threads may iterate at once; each event goes to
        one of them.

        With a session store, the saved session of a shard moves past an
        event once it is finished, and events are finished as `finish`
        does: a count at a time, in the order the cluster handed them out,
        across every reading thread. Without ``manual_finish``, each time a
        loop asks for its next event, one more is finished; a loop that ends
        (break, an exception) does not finish its last one, so the loops
        after it finish one event behind. With one reading thread and one
        loop, that is `Cluster.events()`'s rule; with several threads, one
        thread's request may finish an event another is still handling (read
        from one thread, or pass ``manual_finish=True`` and call `finish`,
        where that matters). Events waiting in the buffer are not finished.

        Raises:
            ClusterNotUp: `up()` was never called (or failed before any shard
                started), and `down()` was not called either.
            GatewayClosedError (or SessionStartLimitExhausted): every shard
                was closed for good.
        """
        if not self._pumping and not self._down_started:
            raise ClusterNotUp(
                "the cluster is not up, so it has no shards to deliver events: "
                "call cluster.up() first"
            )
        events = self._events
        auto_finish = not manual_finish and self._config.session_store is not None
        while True:
            try:
                item = events.get(timeout=POLL)
            except queue.Empty:
                if not self._hub.alive and events.empty():
                    return  # the hub thread ended without handing over an end mark
                continue
            if self._pump_waiting:
                self._wake_pump()
            if item is _END:
                events.put(_END)  # other iterators end too
                return
            if item is _FAILED:
                failure = self._failure
                if failure is not None and events.empty():
                    events.put(_FAILED)  # other iterators raise it too
                    raise failure
                # A restart revived the cluster, or down() ended it: read on.
                continue
            yield item
            if auto_finish:
                # Back for the next one: done with that one.
                self._finish_later(1)

    def finish(self, count: int = 1) -> None:
        """Mark the next `count` events handed out by `events()` as finished; as `Cluster.finish`.

        For loops with ``manual_finish=True``: events are finished in the
        order the cluster handed them out, whichever thread read them, and
        the saved sessions move past them. Returns at once; the hub thread
        applies it before anything asked of the cluster afterwards (so
        before a later `down_resumable()`). Without a session store it does
        nothing; once the cluster is down, it may no longer change what was
        saved.
        """
        if self._config.session_store is not None:
            self._finish_later(count)

    # --- calls into the hub ------------------------------------------------------------

    def _call(self, func: Callable[..., T], *args: Any, timeout: float | None) -> T:
        return self._hub.call(func, *args, timeout=timeout)

    def _in_hub(self) -> Cluster:
        cluster = self._cluster
        assert cluster is not None, "the cluster is built in __init__"
        return cluster

    def _shard_info(self, shard_id: int) -> Information:
        try:
            return self._call(self._in_hub_shard_info, shard_id, timeout=self._call_timeout)
        except HubThreadStopped:
            self._down_done.wait(self._call_timeout)
            info = self._final_info.get(shard_id)
            if info is None and self._final_info:
                raise ShardNonexistent(shard_id) from None  # removed before down()
            if info is None:
                # down() timed out and the hub thread ended before taking the snapshot.
                raise HubThreadStopped(f"shard {shard_id}: the hub thread ended") from None
            return info

    def _shard_wait_until_ready(self, shard_id: int, timeout: float | None) -> bool:
        if self._down_started:
            return False
        try:
            return self._call(
                self._in_hub_shard_wait_until_ready,
                shard_id,
                timeout,
                timeout=_plus_grace(timeout),
            )
        except (HubThreadStopped, ThreadedClusterTimeout):
            return False

    def _refuse_after_down(self, action: str, shard_id: int) -> None:
        if self._down_started:
            raise self._shut_down_error(action, shard_id)

    def _shut_down_error(self, action: str, shard_id: int) -> InvalidState:
        # Cluster's error and wording, for a hub thread that has ended.
        if self._total is None:
            return ClusterNotUp(self._not_up(f"cannot {action} shard {shard_id} yet"))
        return InvalidState(
            f"the cluster was shut down, so it cannot {action} shard {shard_id}: "
            "build a new cluster"
        )

    def _not_up(self, what: str) -> str:
        # Cluster's wording, for a cluster whose shards were never made.
        if self._down_started:
            return f"the cluster was shut down without being brought up, so it {what}"
        return f"the cluster is not up, so it {what}: call cluster.up() first"

    def _send(
        self, shard_id: int, func: Callable[..., None], *args: Any, wait: float | None
    ) -> None:
        try:
            self._call(func, *args, timeout=wait)
        except HubThreadStopped as err:
            raise CommandSendingError(
                f"shard {shard_id} is not connected (the cluster was shut down)", shard_id=shard_id
            ) from err

    def _shutdown(self, *, resumable: bool) -> dict[int, ResumeSession]:
        # down() and down_resumable(): the first call shuts the cluster down in
        # the hub and ends the hub thread; later ones wait for that and return {}.
        with self._lock:
            first = not self._down_started
            self._down_started = True
        if not first:
            self._down_done.wait(self._call_timeout)
            return {}
        try:
            # Each shard gets 5 s to close; they close in parallel.
            return self._call(self._in_hub_shutdown, resumable, timeout=self._call_timeout + GRACE)
        except HubThreadStopped:
            return {}
        finally:
            if not self._hub.stop(self._call_timeout):
                log.warning("the cluster's hub thread did not end within %s s", self._call_timeout)
            self._down_done.set()

    def _finish_later(self, count: int) -> None:
        # One post carries every count added before the hub thread runs it.
        with self._finish_lock:
            self._to_finish += count
            if self._finish_posted:
                return
            self._finish_posted = True
        try:
            self._hub.post(self._in_hub_finish)
        except HubThreadStopped:
            pass  # down() saved the sessions as they were then

    def _wake_pump(self) -> None:
        self._pump_waiting = False
        try:
            self._hub.post(self._room.set)
        except HubThreadStopped:
            pass  # the pump is gone; nothing to wake

    # --- in the hub thread ----------------------------------------------------------------

    def _build(self, token: str | Token, intents: int, options: ClusterOptions) -> ClusterConfig:
        self._cluster = Cluster(token, intents, **options)
        self._room = Flag()
        return self._cluster.config()

    def _in_hub_up(self, block: bool, timeout: float | None) -> None:
        cluster = self._in_hub()
        cluster.up(block=False)
        if self._pump is None:
            self._shards = {
                shard.id: ThreadedShard(self, shard.id, shard.total) for shard in cluster.shards()
            }
            self._total = cluster.total
            # Only now: the cluster's events() refuses a cluster that is not up.
            self._start_pump()
        if block:
            cluster.up(block=True, timeout=timeout)

    def _start_pump(self) -> None:
        self._pump = gevent.spawn(self._run_pump)
        self._pump.name = "gcluster-threaded-pump"
        self._pumping = True

    def _run_pump(self) -> None:
        cluster = self._in_hub()
        try:
            # The reading threads finish events (finish(), _finish_later), not
            # the pump: an event in the buffer is not done with.
            for item in cluster.events(manual_finish=True):
                self._forward(item)
        except Exception as err:  # noqa: BLE001 - handed to the reading threads, which raise it
            self._failure = err
            self._events.put(_FAILED)
            return
        self._events.put(_END)

    def _in_hub_restart(self, shard_id: int) -> None:
        self._in_hub().restart(shard_id)
        self._revive_pump()

    def _revive_pump(self) -> None:
        pump = self._pump
        if pump is not None and pump.dead and self._failure is not None and not self._draining:
            # Every shard had failed and the pump ended with their error; the
            # cluster's events flow again now, and so does a new pump.
            self._failure = None
            self._start_pump()

    def _in_hub_add_shard(self, shard_id: int, session: ResumeSession | None) -> ThreadedShard:
        shard = self._in_hub().add_shard(shard_id, session)
        handle = ThreadedShard(self, shard.id, shard.total)
        # A new dict, not a change to the one other threads may be reading.
        self._shards = dict(sorted({**self._shards, shard_id: handle}.items()))
        self._revive_pump()
        return handle

    def _in_hub_remove_shard(self, shard_id: int, resumable: bool) -> ResumeSession | None:
        try:
            return self._in_hub().remove_shard(shard_id, resumable)
        finally:
            # Whatever happened, the handles are the cluster's shards.
            if self._in_hub().shard(shard_id) is None and shard_id in self._shards:
                self._shards = {i: h for i, h in self._shards.items() if i != shard_id}

    def _forward(self, item: tuple[int, Event]) -> None:
        # Only qsize is checked: the queue itself is unbounded, so put never
        # blocks the hub thread (and with it every shard's heartbeat).
        while self._events.qsize() >= self._event_buffer and not self._draining:
            self._room.clear()
            self._pump_waiting = True
            # A reader wakes us when it takes one; the timeout covers a wake-up
            # lost between its check and our flag.
            self._room.wait(POLL)
        self._events.put(item)

    def _in_hub_shutdown(self, resumable: bool) -> dict[int, ResumeSession]:
        cluster = self._in_hub()
        sessions: dict[int, ResumeSession] = {}
        try:
            if resumable:
                sessions = cluster.down_resumable()
            else:
                cluster.down()
        finally:
            self._final_info = cluster.info()
            self._final_remaining = cluster.session_starts_remaining
            # Hand over everything queued before down(), however far behind the reader is.
            self._draining = True
            self._room.set()
            pump = self._pump
            if pump is None:
                self._events.put(_END)  # never up: nothing to hand over
            else:
                pump.join(GRACE)
                if not pump.dead:
                    pump.kill(block=False)
                    self._events.put(_END)
                elif self._failure is not None:
                    # It had ended on a failure; after down() the stream just ends, as Cluster's.
                    self._events.put(_END)
        return sessions

    def _in_hub_finish(self) -> None:
        with self._finish_lock:
            count, self._to_finish = self._to_finish, 0
            self._finish_posted = False
        self._in_hub().finish(count)

    def _in_hub_shard(self, shard_id: int) -> Shard:
        shard = self._in_hub().shard(shard_id)
        if shard is None:
            raise ShardNonexistent(shard_id)  # the handle of a shard removed since
        return shard

    def _in_hub_shard_info(self, shard_id: int) -> Information:
        return self._in_hub_shard(shard_id).info()

    def _in_hub_shard_wait_until_ready(self, shard_id: int, timeout: float | None) -> bool:
        return self._in_hub_shard(shard_id).wait_until_ready(timeout)

    def _in_hub_session_starts_remaining(self) -> int | None:
        return self._in_hub().session_starts_remaining

    def _backlog(self) -> int:
        return self._in_hub().backlog

    def _in_hub_command(
        self, shard_id: int, command: Command | Mapping[str, Any], timeout: float | None
    ) -> None:
        self._in_hub().command(shard_id, command, timeout=timeout)

    def _in_hub_command_raw(self, shard_id: int, payload: bytes | str) -> None:
        # The shard's own method: Cluster.command_raw would warn a second time, in this thread.
        cluster = self._in_hub()
        shard = cluster.shard(shard_id)
        if shard is None and cluster.total is None:
            raise ClusterNotUp(
                f"the cluster is not up, so it has no shard {shard_id} yet: call cluster.up() first"
            )
        if shard is None:
            raise ShardNonexistent(shard_id)
        shard.command_raw(payload)

    def _in_hub_request_members(
        self,
        guild_id: Snowflake,
        query: str | None,
        limit: int,
        user_ids: Any,
        presences: bool,
        timeout: float,
    ) -> GuildMembers:
        return self._in_hub().request_members(
            guild_id,
            query=query,
            limit=limit,
            user_ids=user_ids,
            presences=presences,
            timeout=timeout,
        )

    def _in_hub_send(self, shard_id: int, message: Message) -> None:
        self._in_hub().send(shard_id, message)


class ThreadedClusterBuilder(ClusterBuilder):
    """Builds a `ThreadedCluster` one option at a time, as `ClusterBuilder` builds a `Cluster`:

        cluster = (ThreadedCluster.builder(token, Intents.GUILD_MESSAGES)
                   .event_types(EventTypeFlags.MESSAGE_CREATE)
                   .call_timeout(10)
                   .build())

    `ClusterBuilder`'s option methods, plus `call_timeout` and
    `event_buffer`; each returns the builder, and `build()` checks them all.
    """

    def __init__(self, token: str | Token, intents: int) -> None:
        super().__init__(token, intents)
        self._call_timeout: float = DEFAULT_CALL_TIMEOUT
        self._event_buffer: int = DEFAULT_EVENT_BUFFER

    def __repr__(self) -> str:
        return f"<ThreadedClusterBuilder options={sorted(self._options)}>"

    # It reuses ClusterBuilder's option methods, not its product.
    def build(self) -> ThreadedCluster:  # type: ignore[override]
        return ThreadedCluster(
            self._token,
            self._intents,
            call_timeout=self._call_timeout,
            event_buffer=self._event_buffer,
            **self._options,
        )

    def call_timeout(self, value: float) -> ThreadedClusterBuilder:
        self._call_timeout = value
        return self

    def event_buffer(self, value: int) -> ThreadedClusterBuilder:
        self._event_buffer = value
        return self

    if TYPE_CHECKING:
        # ClusterBuilder's option methods say they return a ClusterBuilder, whose
        # build() makes a Cluster; said again here, a chain of them ends in a
        # ThreadedCluster for mypy as it does at run time.
        def event_types(self, value: EventTypeFlags) -> ThreadedClusterBuilder: ...
        def shard_scheme(self, value: ShardScheme) -> ThreadedClusterBuilder: ...
        def gateway_url(self, value: str | None) -> ThreadedClusterBuilder: ...
        def api_base(self, value: str) -> ThreadedClusterBuilder: ...
        def large_threshold(self, value: int) -> ThreadedClusterBuilder: ...
        def presence(self, value: UpdatePresence | None) -> ThreadedClusterBuilder: ...
        def shard_presence(
            self, value: Callable[[int], UpdatePresence | None]
        ) -> ThreadedClusterBuilder: ...
        def identify_properties(self, value: Mapping[str, str]) -> ThreadedClusterBuilder: ...
        def queue(self, value: Queue) -> ThreadedClusterBuilder: ...
        def resume_sessions(self, value: Mapping[int, ResumeSession]) -> ThreadedClusterBuilder: ...
        def ratelimit_payloads(self, value: bool) -> ThreadedClusterBuilder: ...
        def compression(self, value: bool | str | None) -> ThreadedClusterBuilder: ...
        def connect_timeout(self, value: float) -> ThreadedClusterBuilder: ...
        def max_message_size(self, value: int) -> ThreadedClusterBuilder: ...
        def ssl_context(self, value: ssl.SSLContext | None) -> ThreadedClusterBuilder: ...
        def session_store(self, value: SessionStore) -> ThreadedClusterBuilder: ...
        def backlog_warning(self, value: int) -> ThreadedClusterBuilder: ...
        def decoder(self, value: str | Loads) -> ThreadedClusterBuilder: ...
        def proxy(self, value: Proxy | str | bool | None) -> ThreadedClusterBuilder: ...


def _plus_grace(timeout: float | None) -> float | None:
    return None if timeout is None else timeout + GRACE


def _refuse_a_simulator_in_this_thread() -> None:
    # Looked up, not imported: only a program that started a simulator has it loaded.
    simulator = sys.modules.get("gcluster.testing.simulator")
    if simulator is not None and simulator.serving_in_thread():
        raise InvalidState(
            "a GatewaySimulator serves from this thread's gevent hub, and ThreadedCluster "
            "blocks this thread while its own thread works, so the simulator could not "
            "answer: run it in a process of its own (gcluster.testing.SimulatorProcess) "
            "or a thread of its own (gcluster.threaded.HubThread)"
        )


def _threading_is_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))
