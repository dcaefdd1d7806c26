"""RedisSessionStore: shards' resumable sessions kept in Redis.

A process that stops or crashes leaves its shards' sessions behind, and the
process that takes the shards over RESUMEs them instead of spending new
session starts. One key per shard, `{namespace}:session:<shard_id>`, holds the
JSON of `ResumeSession.to_dict()`; the hash tag keeps every key of a bot in one
Redis Cluster slot, so `load` is a single MGET.

Discord forgets a session some minutes after its connection ended, so a
session kept for ever only sends a later process into a RESUME that cannot
succeed. With `ttl`, each key expires `ttl` seconds after the last `save` or
`refresh`: a process running the shards refreshes them, and a session outlives
its process by `ttl` seconds at most.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Final

from gcluster.errors import ConfigError, RedisCallError, SessionStoreError
from gcluster.protocol import ResumeSession
from gcluster.redis._calls import call
from gcluster.redis._client import Client, hash_tag, make_client

__all__ = ["RedisSessionStore", "SessionStoreError"]

log = logging.getLogger(__name__)

# One round trip for every shard's key (they share a hash tag, so one slot).
_REFRESH: Final = """
for _, key in ipairs(KEYS) do
  redis.call('PEXPIRE', key, ARGV[1])
end
return #KEYS
"""


class RedisSessionStore:
    """Keeps one `ResumeSession` per shard in Redis (a `gcluster.sessions.SessionStore`).

    Args:
        url: e.g. "redis://localhost:6379/0": a single server, or any node of a
            Redis Cluster (found out at first use). Or pass `client`.
        namespace: key prefix of this bot; also the Redis Cluster hash tag.
        client: a ready redis-py client (Redis or RedisCluster) instead of `url`.
        connect_timeout, timeout: seconds to connect to Redis and to wait for a reply.
        ttl: seconds a saved session is kept after its last save or `refresh`;
            None keeps it until it is deleted.

    Raises:
        ConfigError: a bad namespace, URL or ttl, or both or neither of url and client.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "gcluster",
        client: Client | None = None,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        ttl: float | None = None,
    ) -> None:
        if ttl is not None and not (isinstance(ttl, int | float) and 1 <= ttl < 1e9):
            raise ConfigError(f"ttl must be at least 1 second, or None, not {ttl!r}")
        self.namespace = namespace
        self.ttl = ttl
        self._prefix = f"{hash_tag(namespace)}:session:"
        self._owns_client = client is None
        self._redis = make_client(url, client, connect_timeout=connect_timeout, timeout=timeout)

    @property
    def _client(self) -> Client:
        # The first use asks the node whether it is part of a Redis Cluster.
        return self._redis.get()

    def key(self, shard_id: int) -> str:
        """The key holding a shard's session."""
        return f"{self._prefix}{shard_id}"

    def load(self, shard_ids: Iterable[int]) -> dict[int, ResumeSession]:
        """The saved sessions of those shards; shards without one are left out.

        A value that is not a valid session is logged and left out: the shard
        identifies instead.

        Raises:
            SessionStoreError: Redis could not answer.
        """
        ids = list(dict.fromkeys(shard_ids))
        if not ids:
            return {}
        try:
            values = call(self._client.mget, [self.key(i) for i in ids])
        except RedisCallError as err:
            raise self._error("load", err) from err
        sessions: dict[int, ResumeSession] = {}
        for shard_id, raw in zip(ids, values, strict=True):
            if raw is None:
                continue
            try:
                sessions[shard_id] = ResumeSession.from_dict(json.loads(raw))
            except (ValueError, TypeError) as err:
                log.warning("ignoring the saved session of shard %d: %s", shard_id, err)
        return sessions

    def save(self, shard_id: int, session: ResumeSession | None) -> None:
        """Save a shard's session; None deletes it (the session ended).

        Raises:
            SessionStoreError: Redis could not answer.
        """
        key = self.key(shard_id)
        try:
            if session is None:
                call(self._client.delete, key)
            else:
                call(self._client.set, key, json.dumps(session.to_dict()), px=self._ttl_ms)
        except RedisCallError as err:
            raise self._error("save", err) from err

    def refresh(self, shard_ids: Iterable[int]) -> None:
        """Keep those shards' saved sessions for another `ttl` seconds (nothing without a ttl).

        Raises:
            SessionStoreError: Redis could not answer.
        """
        ids = list(dict.fromkeys(shard_ids))
        if self.ttl is None or not ids:
            return
        try:
            call(
                self._redis.script(_REFRESH),
                keys=[self.key(i) for i in ids],
                args=[self._ttl_ms],
            )
        except RedisCallError as err:
            raise self._error("refresh", err) from err

    @property
    def _ttl_ms(self) -> int | None:
        return None if self.ttl is None else int(self.ttl * 1000)

    def close(self) -> None:
        """Close the connections of a client this store made (not of one it was given)."""
        if self._owns_client:
            self._redis.close()

    def _error(self, action: str, err: RedisCallError) -> SessionStoreError:
        where = self._redis.describe()
        return SessionStoreError(f"session store: could not {action} at Redis {where}: {err}")

    def __repr__(self) -> str:
        return f"RedisSessionStore({self._redis.describe()!r}, namespace={self.namespace!r})"
