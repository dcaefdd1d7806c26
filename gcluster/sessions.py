"""Session stores: where a cluster keeps its shards' resumable sessions.

A process that stops or crashes can hand its shards to the next one without a
new IDENTIFY (each costs one of the day's 1000 session starts): the cluster
saves each shard's `ResumeSession` as it changes and on shutdown, and loads
them at start. The sequence saved is that of the last event the application
has finished with, so events received but not yet handled come back on resume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from gcluster.protocol import ResumeSession

__all__ = ["MemorySessionStore", "SessionStore"]


@runtime_checkable
class SessionStore(Protocol):
    """Keeps one `ResumeSession` per shard id."""

    def load(self, shard_ids: Iterable[int]) -> dict[int, ResumeSession]:
        """The saved sessions of those shards (shards without one are left out)."""
        ...

    def save(self, shard_id: int, session: ResumeSession | None) -> None:
        """Save a shard's session; None forgets it (the session ended)."""
        ...


class MemorySessionStore:
    """A store in this process's memory: for tests, or to restart a cluster in place."""

    def __init__(self) -> None:
        self.sessions: dict[int, ResumeSession] = {}

    def load(self, shard_ids: Iterable[int]) -> dict[int, ResumeSession]:
        return {i: self.sessions[i] for i in shard_ids if i in self.sessions}

    def save(self, shard_id: int, session: ResumeSession | None) -> None:
        if session is None:
            self.sessions.pop(shard_id, None)
        else:
            self.sessions[shard_id] = session

    def __repr__(self) -> str:
        return f"MemorySessionStore(shards={sorted(self.sessions)})"


class SessionMark:
    """Put in the event queue by a shard when it starts a session, before its READY.

    The cluster's iterator consumes it (the application never sees it) to learn
    which session the events that follow belong to.
    """

    __slots__ = ("session",)

    def __init__(self, session: ResumeSession) -> None:
        self.session = session

    def __repr__(self) -> str:
        return f"SessionMark({self.session!r})"


class ShardRemoved:
    """Put in the event queue by a cluster after the last events of a shard it removed.

    The cluster's iterator consumes it (the application never sees it). The
    removed shard's events still queued before it are handed out as usual,
    but no longer move a saved session: the session was saved as the shard
    left, and may belong to another process by now.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "ShardRemoved()"


class ConsumedSessions:
    """Each shard's session as far as the application has finished with its events.

    Saving this, rather than what the shard received, means events still queued
    when a process dies are replayed on resume: at-least-once across crashes.
    `events()` tells it what it hands out (`arrived`) and when the application
    is done with it (`handled`, or `finish` for a consumer that finishes later
    than it reads); the cluster saves `take_dirty()` once a second.
    """

    def __init__(self, initial: dict[int, ResumeSession]) -> None:
        self._sessions = dict(initial)
        # Sessions a shard started whose READY the application has not reached:
        # the session it was reading is dead on the gateway's side already.
        self._pending: dict[int, ResumeSession] = {}
        # The last session id each shard was known to start, so one is noted once.
        self._seen = {shard_id: session.session_id for shard_id, session in initial.items()}
        self._dirty: set[int] = set()
        # What events(manual_finish=True) gave and the application has not
        # finished: an event's sequence (None for one without), or a mark
        # that must wait for the events given before it.
        self._unfinished: deque[tuple[int, SessionMark | int | None]] = deque()
        # Shards removed whose `ShardRemoved` mark the application has not
        # reached, with how many such marks are queued: their events before
        # it change nothing that is saved.
        self._leaving: dict[int, int] = {}

    # --- what events() reports ------------------------------------------------

    def arrived(self, shard_id: int, item: Any, *, manual: bool) -> bool:
        """An item came out of the queue; whether it is an event for the application.

        A `SessionMark` is taken here (at once, or after the events before it
        are finished, with `manual`); anything else is handed out.
        """
        if isinstance(item, ShardRemoved):
            left = self._leaving.pop(shard_id, 1) - 1
            if left:
                self._leaving[shard_id] = left
            return False
        if shard_id in self._leaving:
            # An event of a shard that has left: handed out, never saved.
            if isinstance(item, SessionMark):
                return False
            if manual:
                self._unfinished.append((shard_id, None))
            return True
        if isinstance(item, SessionMark):
            if manual and self._unfinished:
                self._unfinished.append((shard_id, item))
            else:
                self._mark(shard_id, item.session)
            return False
        if manual:
            self._unfinished.append((shard_id, getattr(item, "sequence", None)))
        return True

    def handled(self, shard_id: int, sequence: int | None) -> None:
        """The application is done with an event it was given."""
        # A removed shard's events (those queued before its ShardRemoved) move nothing.
        if sequence is not None and shard_id not in self._leaving:
            self._finished(shard_id, sequence)

    def finish(self, count: int) -> None:
        """The next `count` events given with `manual` are done, in the order given."""
        unfinished = self._unfinished
        while unfinished and (count > 0 or isinstance(unfinished[0][1], SessionMark)):
            shard_id, what = unfinished.popleft()
            if isinstance(what, SessionMark):
                self._mark(shard_id, what.session)
                continue
            count -= 1
            if what is not None:
                self._finished(shard_id, what)

    # --- what the shards report -------------------------------------------------

    def started(self, shard_id: int, session: ResumeSession | None) -> None:
        """A shard's latest session as at its READY (`Shard.started_session`).

        Called before saving: a new one is saved at once, ahead of the
        application, whose events from the old session can no longer resume.
        """
        if session is None or self._seen.get(shard_id) == session.session_id:
            return
        self._seen[shard_id] = session.session_id
        self._pending[shard_id] = session
        self._dirty.add(shard_id)

    # --- shards coming and going -----------------------------------------------

    def remove(self, shard_id: int) -> None:
        """The shard left the cluster; a `ShardRemoved` follows its events in the queue.

        Its session is forgotten here (the cluster saved the shard's own as it
        left), and nothing read or finished from now on changes it.
        """
        self._sessions.pop(shard_id, None)
        self._pending.pop(shard_id, None)
        self._seen.pop(shard_id, None)
        self._dirty.discard(shard_id)
        self._leaving[shard_id] = self._leaving.get(shard_id, 0) + 1
        if any(sid == shard_id for sid, _ in self._unfinished):
            # Its events given and not finished still count for finish(), as
            # events without a sequence; its session marks no longer matter.
            self._unfinished = deque(
                (sid, what if sid != shard_id else None)
                for sid, what in self._unfinished
                if sid != shard_id or not isinstance(what, SessionMark)
            )

    def add(self, shard_id: int, session: ResumeSession | None) -> None:
        """The shard joined the cluster, resuming `session` or (None) identifying."""
        if session is not None:
            self._sessions[shard_id] = session
            self._seen[shard_id] = session.session_id

    # --- what is saved ---------------------------------------------------------

    def take_dirty(self) -> dict[int, ResumeSession]:
        """The sessions changed since the last call; a pending new session wins.

        Saving the new session at READY's sequence means a crash before the
        application reaches it resumes that session (its events come again)
        instead of identifying a third one and losing them.
        """
        dirty, self._dirty = self._dirty, set()
        return {shard_id: self._current(shard_id) for shard_id in dirty}

    def all(self) -> dict[int, ResumeSession]:
        return {shard_id: self._current(shard_id) for shard_id in self._sessions | self._pending}

    def _mark(self, shard_id: int, session: ResumeSession) -> None:
        # The application reached the new session's mark.
        self._seen[shard_id] = session.session_id
        pending = self._pending.get(shard_id)
        if pending is not None and pending.session_id == session.session_id:
            del self._pending[shard_id]
        self._sessions[shard_id] = session
        self._dirty.add(shard_id)

    def _finished(self, shard_id: int, sequence: int) -> None:
        session = self._sessions.get(shard_id)
        if session is not None and sequence > session.sequence:
            self._sessions[shard_id] = replace(session, sequence=sequence)
            self._dirty.add(shard_id)

    def _current(self, shard_id: int) -> ResumeSession:
        pending = self._pending.get(shard_id)
        return pending if pending is not None else self._sessions[shard_id]
