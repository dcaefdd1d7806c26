"""GatewayCluster and GatewayShard: what a `Cluster` and a `ThreadedCluster` both offer.

Code that works with either concurrency model (a Flask app served by gevent
or by threads, a helper that waits for the shards and sends commands) takes a
`GatewayCluster` and is handed a `Cluster` in a gevent program or a
`ThreadedCluster` in a threaded one. The two differ in where they may be
called from, a `Cluster` from the greenlets of its hub and a
`ThreadedCluster` from any thread, not in what they offer; what one
`shard(id)` returns (a `Shard`, a `ThreadedShard`) is a `GatewayShard`.

These are `typing.Protocol` classes: a class satisfies one by having its
members, without inheriting from it, and mypy checks that it does. The names
are twilight-gateway's `Cluster` and `Shard`; they are qualified as the
gateway's because the plain names belong to the gevent classes, as
`SessionStore` and `Queue` name a role that several classes fill.

`ClusterLifecycle` writes `down()`, `down_resumable()` and the context
manager once, for a class that brings its own `up()` and `_shutdown()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from gcluster.commands import Command, Snowflake
from gcluster.errors import GClusterError
from gcluster.events import Event
from gcluster.members import DEFAULT_MEMBERS_TIMEOUT, GuildMembers
from gcluster.message import Message
from gcluster.protocol import ResumeSession, Stage
from gcluster.shard import Information

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

    # For the annotation only: gcluster.cluster may then mix in ClusterLifecycle
    # without the two modules importing each other at run time.
    from gcluster.cluster import ClusterConfig

__all__ = ["ClusterLifecycle", "GatewayCluster", "GatewayShard"]


class GatewayShard(Protocol):
    """One shard of a `GatewayCluster`: a `Shard`, or a `ThreadedShard` of a `ThreadedCluster`."""

    @property
    def id(self) -> int:
        """The shard id."""
        ...

    @property
    def total(self) -> int:
        """The bot's shard count, all processes together."""
        ...

    @property
    def stage(self) -> Stage:
        """Where its connection is now."""
        ...

    @property
    def error(self) -> GClusterError | None:
        """What stopped it for good (stage FATALLY_CLOSED), else None."""
        ...

    @property
    def session(self) -> ResumeSession | None:
        """The session it would resume, or None when its next connection must IDENTIFY."""
        ...

    def info(self) -> Information:
        """A snapshot of the shard."""
        ...

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Wait for READY or RESUMED; False on timeout or when the shard failed."""
        ...

    def command(
        self, command: Command | Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        """Send a gateway command, waiting up to `timeout` seconds for a rate-limit slot."""
        ...

    def send(self, message: Message) -> None:
        """Send a raw websocket message; a close frame makes the shard reconnect."""
        ...

    def restart(self) -> None:
        """Reconnect now: RESUME when the session allows it, else IDENTIFY anew."""
        ...


class GatewayCluster(Protocol):
    """Many shards of one bot and their events as one stream: a `Cluster` or a `ThreadedCluster`.

    See `Cluster` for what each member does and raises; `ThreadedCluster`
    does the same from any thread.
    """

    def config(self) -> ClusterConfig:
        """The checked, frozen options."""
        ...

    # --- life ----------------------------------------------------------------

    def up(self, block: bool = True, timeout: float | None = None) -> None:
        """Start every shard and, with `block`, wait until each one has a session."""
        ...

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Wait until every shard has received READY or RESUMED."""
        ...

    def down(self) -> None:
        """Close every shard with 1000, ending their sessions, and end `events()`."""
        ...

    def down_resumable(self) -> dict[int, ResumeSession]:
        """Close every shard keeping its session; return the sessions to resume with."""
        ...

    def __enter__(self) -> Self:
        """`up()`; `down()` when it raises."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """`down()`."""
        ...

    # --- shards --------------------------------------------------------------

    @property
    def total(self) -> int | None:
        """The bot's shard count (all processes together); None before `up()`."""
        ...

    def shard_for(self, guild_id: int | str) -> int:
        """The id of the shard that receives a guild's events."""
        ...

    def shard(self, shard_id: int) -> GatewayShard | None:
        """The shard with this id, or None when the cluster has none (before `up()`, none)."""
        ...

    def shards(self) -> Sequence[GatewayShard]:
        """Every shard of this cluster, in id order (none before `up()`)."""
        ...

    def info(self) -> dict[int, Information]:
        """`{shard_id: Information}` in id order ({} before `up()`)."""
        ...

    def add_shard(self, shard_id: int, session: ResumeSession | None = None) -> GatewayShard:
        """Start one more shard (of `total`) while the cluster runs, resuming `session` if given."""
        ...

    def remove_shard(self, shard_id: int, resumable: bool = True) -> ResumeSession | None:
        """Stop one shard and take it out of the cluster; return its session to resume elsewhere."""
        ...

    @property
    def session_starts_remaining(self) -> int | None:
        """IDENTIFYs left today as far as this process knows; None if it never asked."""
        ...

    @property
    def backlog(self) -> int:
        """Events received and not read through `events()` yet."""
        ...

    # --- sending -------------------------------------------------------------

    def command(
        self, shard_id: int, command: Command | Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        """Send a gateway command through one shard."""
        ...

    def send(self, shard_id: int, message: Message) -> None:
        """Send a raw websocket message through one shard."""
        ...

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
        """Ask for members of a guild (op 8) and wait for every chunk of the answer."""
        ...

    def restart(self, shard_id: int) -> None:
        """Reconnect one shard now: RESUME if its session allows, else IDENTIFY."""
        ...

    # --- events --------------------------------------------------------------

    def events(self, *, manual_finish: bool = False) -> Iterator[tuple[int, Event]]:
        """Every delivered event of every shard, as `(shard_id, event)`."""
        ...

    def finish(self, count: int = 1) -> None:
        """Mark the next `count` events given by `events(manual_finish=True)` as finished."""
        ...


class ClusterLifecycle:
    """`down()`, `down_resumable()` and the context manager, written once.

    The class mixing it in provides `up()` and `_shutdown(resumable=...)`:
    close every shard (keeping its session when `resumable`), end
    `events()` once drained, and return the sessions kept; do nothing and
    return {} when called again.
    """

    def up(self, block: bool = True, timeout: float | None = None) -> None:
        raise NotImplementedError

    def _shutdown(self, *, resumable: bool) -> dict[int, ResumeSession]:
        raise NotImplementedError

    def down(self) -> None:
        """Close every shard with 1000, ending their sessions, and end `events()`.

        `events()` ends once the events queued before it are read. Idempotent.
        """
        self._shutdown(resumable=False)

    def down_resumable(self) -> dict[int, ResumeSession]:
        """Close every shard keeping its session; return the sessions to resume with.

        Shards that never got a session are left out; once the cluster is
        down (by either method), it returns {}.
        """
        return self._shutdown(resumable=True)

    def __enter__(self) -> Self:
        try:
            self.up()
        except BaseException:
            # __exit__ is not called when __enter__ raises: stop what did start.
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()
