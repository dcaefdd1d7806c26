"""The Redis service's part of the status page: who holds the lease, how far behind the workers are.

A `gcluster.status.StatusSource`: the monitor's sampler calls `sample()` every
few seconds under a deadline, never an HTTP request, so a slow or dead Redis
shows as "unknown" on the page instead of holding it. It uses a client of its
own with short timeouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from gcluster.errors import RedisCallError
from gcluster.redis._calls import call
from gcluster.redis._client import Client, make_client
from gcluster.redis.lease import ShardLease

__all__ = ["RedisStatus", "group_rows"]

# Per-event streams make one stream per event name; the page lists this many.
MAX_STREAMS: Final = 50


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def group_rows(stream: str, reply: Any) -> list[dict[str, Any]]:
    """XINFO GROUPS of one stream as the page's rows; odd values become None ("unknown").

    `lag` is None before Redis 7, or when Redis cannot tell (entries deleted).
    """
    rows = []
    for group in reply if isinstance(reply, list) else []:
        if not isinstance(group, dict):
            continue
        fields = {_text(key): value for key, value in group.items()}
        rows.append(
            {
                "stream": stream,
                "group": str(_text(fields.get("name")))[:200],
                "consumers": _count(fields.get("consumers")),
                "pending": _count(fields.get("pending")),
                "lag": _count(fields.get("lag")),
            }
        )
    return rows


class RedisStatus:
    """Lease holder and consumer groups of a gateway service, for `gcluster.web.serve(source=...)`.

    Args:
        url: the service's Redis (or pass `client`).
        streams: returns the event streams to report (the sink's).
        lease: the service's `ShardLease`, or None.
        client: a ready redis-py client instead of `url`.
        timeout: seconds for each Redis call.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        streams: Callable[[], list[str]],
        lease: ShardLease | None = None,
        client: Client | None = None,
        timeout: float = 1.0,
    ) -> None:
        self._owns_client = client is None
        # A single server or a Redis Cluster, found out at first use.
        self._redis = make_client(url, client, connect_timeout=timeout, timeout=timeout)
        self.streams = streams
        self.lease = lease

    def waiting_for(self) -> str | None:
        if self.lease is not None and not self.lease.held:
            return f"standby: waiting for the lease {self.lease.key}"
        return None

    def sample(self) -> dict[str, Any]:
        data: dict[str, Any] = {"lease": None, "groups": None}
        lease = self.lease
        if lease is not None:
            entry: dict[str, Any] = {"key": lease.key, "held": lease.held, "holder": None}
            try:
                entry["holder"] = lease.holder()
            except RedisCallError as err:
                entry["error"] = str(err)
            data["lease"] = entry
        rows: list[dict[str, Any]] = []
        try:
            for stream in sorted(set(self.streams()))[:MAX_STREAMS]:
                try:
                    reply = call(self._redis.get().xinfo_groups, stream)
                except RedisCallError as err:
                    if err.reply is not None and "no such key" in err.reply.lower():
                        continue  # nothing published there yet
                    raise
                rows.extend(group_rows(stream, reply))
            data["groups"] = {"rows": rows}
        except RedisCallError as err:
            data["groups"] = {"error": str(err)}
        return data

    def close(self) -> None:
        """Close the client this made."""
        if self._owns_client:
            self._redis.close()
