"""Each shard's state as its gateway process sees it, kept in Redis for `python -m gcluster status`.

A service process writes, every few seconds, one short-lived key per shard it
runs, `{namespace}:state:<shard>`: the process's name, the shard's stage,
sequence and heartbeat latency, and when its session was last saved. A key
lives three writes long, so a process that died leaves no stale state behind:
the status command shows its shards as held by no process. Keys share the
namespace's hash tag, so on a Redis Cluster one script writes them all and one
MGET reads them.

The values are Redis's, hence the network's: the reader checks each field and
shows what it cannot trust as unknown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from gcluster.redis._calls import call
from gcluster.redis._client import RedisTarget, hash_tag, make_client
from gcluster.shard import Information

__all__ = ["StateBoard", "read_states", "state_key", "state_record"]

# Written in one step: KEYS are the shards' keys, ARGV[1] their life in ms,
# then one JSON value per key.
_WRITE: Final = """
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
end
return #KEYS
"""
# A value longer than this is not a record we wrote.
_MAX_RECORD: Final = 4096


def state_key(namespace: str, shard_id: int) -> str:
    """`{namespace}:state:<shard>`: the shard's state, written by the process running it."""
    return f"{hash_tag(namespace)}:state:{shard_id}"


def state_record(
    info: Information, holder: str, saved_at: float | None, now: float
) -> dict[str, Any]:
    """One shard's record: what `python -m gcluster status` prints of it."""
    recent = info.latency.recent
    latency = recent[-1] if recent else info.latency.average
    return {
        "holder": holder,
        "stage": info.stage.value,
        "sequence": info.sequence,
        "latency_ms": None if latency is None else round(latency * 1000, 1),
        "saved_at": saved_at,
        "at": now,
    }


class StateBoard:
    """Writes the records of a process's shards (`state_record`) to Redis.

    Args:
        url: the service's Redis: a server, or any node of a Redis Cluster.
        namespace: the bot's key prefix and hash tag.
        life: seconds each record is kept after its last write (a few intervals).
        connect_timeout, timeout: seconds to connect to Redis and to wait for a reply.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        life: float,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        hash_tag(namespace)  # checks it
        self._redis = make_client(url, None, connect_timeout=connect_timeout, timeout=timeout)
        self.namespace = namespace
        self.life = life

    def write(self, records: Mapping[int, dict[str, Any]]) -> None:
        """Write these records (shard id to record) in one step.

        Raises:
            RedisCallError: Redis could not take them.
        """
        if not records:
            return
        keys = [state_key(self.namespace, shard_id) for shard_id in records]
        values = [json.dumps(record, separators=(",", ":")) for record in records.values()]
        call(self._redis.script(_WRITE), keys=keys, args=[int(self.life * 1000), *values])

    def read(self, shard_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """`read_states` of those shards.

        Raises:
            RedisCallError: Redis could not answer.
        """
        return read_states(self._redis, self.namespace, shard_ids)

    def close(self) -> None:
        """Close the connections to Redis."""
        self._redis.close()


def read_states(
    redis: RedisTarget, namespace: str, shard_ids: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """The records Redis holds for those shards; shards without a valid one are left out.

    Raises:
        RedisCallError: Redis could not answer.
    """
    ids = list(shard_ids)
    if not ids:
        return {}
    values = call(redis.get().mget, [state_key(namespace, i) for i in ids])
    states: dict[int, dict[str, Any]] = {}
    for shard_id, raw in zip(ids, values, strict=True):
        record = _checked(raw)
        if record is not None:
            states[shard_id] = record
    return states


def _checked(raw: Any) -> dict[str, Any] | None:
    """A record as written by `StateBoard`, each field checked; None for anything else."""
    if not isinstance(raw, bytes | str) or len(raw) > _MAX_RECORD:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    holder, stage = value.get("holder"), value.get("stage")
    return {
        "holder": holder[:200] if isinstance(holder, str) else None,
        "stage": stage[:40] if isinstance(stage, str) else None,
        "sequence": _number(value.get("sequence"), int),
        "latency_ms": _number(value.get("latency_ms"), float),
        "saved_at": _number(value.get("saved_at"), float),
        "at": _number(value.get("at"), float),
    }


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if kind is int and not isinstance(value, int):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return value
