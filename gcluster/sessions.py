"""Session stores: where a cluster keeps its shards' resumable sessions.

A process that stops or crashes can hand its shards to the next one without a
new IDENTIFY (each costs one of the day's 1000 session starts): the cluster
saves each shard's `ResumeSession` as it changes and on shutdown, and loads
them at start. The sequence saved is that of the last event the application
has finished with, so events received but not yet handled come back on resume.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

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


class ConsumedSessions:
    """Each shard's session as far as the application has finished with its events.

    Saving this, rather than what the shard received, means events still queued
    when a process dies are replayed on resume: at-least-once across crashes.
    """

    def __init__(self, initial: dict[int, ResumeSession]) -> None:
        self._sessions = dict(initial)
        # Sessions a shard started whose READY the application has not reached:
        # the session it was reading is dead on the gateway's side already.
        self._pending: dict[int, ResumeSession] = {}
        self._dirty: set[int] = set()

    def started(self, shard_id: int, session: ResumeSession) -> None:
        """A shard got READY (called by the shard, ahead of the application)."""
        self._pending[shard_id] = session
        self._dirty.add(shard_id)

    def mark(self, shard_id: int, session: ResumeSession) -> None:
        """The application reached the new session's mark."""
        pending = self._pending.get(shard_id)
        if pending is not None and pending.session_id == session.session_id:
            del self._pending[shard_id]
        self._sessions[shard_id] = session
        self._dirty.add(shard_id)

    def finished(self, shard_id: int, sequence: int) -> None:
        session = self._sessions.get(shard_id)
        if session is not None and sequence > session.sequence:
            self._sessions[shard_id] = ResumeSession(
                session.session_id, sequence, session.resume_url
            )
            self._dirty.add(shard_id)

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

    def _current(self, shard_id: int) -> ResumeSession:
        pending = self._pending.get(shard_id)
        return pending if pending is not None else self._sessions[shard_id]
