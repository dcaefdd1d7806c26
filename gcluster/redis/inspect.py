"""`python -m gcluster status`: a bot's service mode, read from Redis alone.

Nothing here talks to a gateway process: what it prints is what the
processes left in Redis. The shard count (`{namespace}:shards`), each shard's
record (`gcluster.redis.shardstate`), holder key and saved session, the live
lease holders (`{namespace}:live`), and the consumer groups of the event
stream. So it works from any machine that reaches Redis, and a process that
died shows as its records expiring.
"""

from __future__ import annotations

import json
from typing import Any, Final

from gcluster.errors import RedisCallError
from gcluster.redis._calls import call
from gcluster.redis._client import RedisTarget, make_client, safe_url
from gcluster.redis.inbox import shard_count_key, shard_ranges
from gcluster.redis.lease import holder_key, live_key
from gcluster.redis.sessions import RedisSessionStore
from gcluster.redis.shardstate import read_states
from gcluster.redis.status import group_rows
from gcluster.redis.streams import default_stream

__all__ = ["dumps", "gather", "render"]

# A shard count beyond this in Redis is not one a gateway process wrote.
_MAX_SHARDS: Final = 1 << 16


def gather(url: str, namespace: str, stream: str | None = None) -> dict[str, Any]:
    """Everything the status command prints, as JSON-ready data.

    Raises:
        RedisCallError: Redis could not answer.
        ConfigError: a bad URL or namespace.
    """
    redis = make_client(url, None, connect_timeout=2.0, timeout=5.0)
    try:
        return _gather(redis, url, namespace, stream or default_stream(namespace))
    finally:
        redis.close()


def _gather(redis: RedisTarget, url: str, namespace: str, stream: str) -> dict[str, Any]:
    client = redis.get()
    seconds, micros = call(client.time)
    now = int(seconds) + int(micros) / 1e6
    raw_total = call(client.get, shard_count_key(namespace))
    report: dict[str, Any] = {
        "redis": safe_url(url),
        "namespace": namespace,
        "now": now,
        "total": _count(raw_total),
        "stream": stream,
    }
    if raw_total is not None and report["total"] is None:
        report["bad_total"] = _text(raw_total)
    total = report["total"]
    ids = list(range(total)) if total is not None else []
    states = read_states(redis, namespace, ids)
    holders = call(client.mget, [holder_key(namespace, i) for i in ids]) if ids else []
    store = RedisSessionStore(client=client, namespace=namespace)
    sessions = store.load(ids)
    shards: list[dict[str, Any]] = []
    for shard_id, holder in zip(ids, holders, strict=True):
        state = states.get(shard_id, {})
        session = sessions.get(shard_id)
        shards.append(
            {
                "id": shard_id,
                "holder": state.get("holder") or _text(holder),
                "stage": state.get("stage"),
                "sequence": state.get("sequence"),
                "latency_ms": state.get("latency_ms"),
                "saved_at": state.get("saved_at"),
                "updated_at": state.get("at"),
                "saved_sequence": None if session is None else session.sequence,
            }
        )
    report["shards"] = shards
    live: Any = call(client.zrange, live_key(namespace), 0, -1, withscores=True)
    report["leases"] = [
        {
            "holder": _text(member),
            "shards": shard_ranges([s["id"] for s in shards if s["holder"] == _text(member)]),
            "expires_in": round(max(0.0, float(score) / 1000 - now), 1),
        }
        for member, score in live
        if float(score) / 1000 > now
    ]
    try:
        report["groups"] = group_rows(stream, call(client.xinfo_groups, stream))
    except RedisCallError as err:
        if err.reply is None or "no such key" not in err.reply.lower():
            raise
        report["groups"] = []  # nothing published yet
    return report


def render(report: dict[str, Any]) -> list[str]:
    """The report as the lines the command prints."""
    now = report["now"]
    total = report["total"]
    where = f"namespace {report['namespace']!r} at {report['redis']}"
    if total is None and "bad_total" in report:
        key = shard_count_key(report["namespace"])
        return [f"{where}: {key} holds {report['bad_total']!r}, not a shard count"]
    if total is None:
        return [
            f"{where}: no gateway process has run here "
            f"({shard_count_key(report['namespace'])} is absent); is --namespace right?"
        ]
    lines = [f"{where}: {total} shards"]
    leases = report["leases"]
    lines.append("lease holders:" if leases else "lease holders: none live")
    for lease in leases:
        shards = lease["shards"] or "none"
        lines.append(f"  {lease['holder']}: shards {shards}, expires in {lease['expires_in']} s")
    rows = [["shard", "holder", "stage", "sequence", "latency", "last save", "updated"]]
    for shard in report["shards"]:
        sequence = shard["sequence"]
        if sequence is None and shard["saved_sequence"] is not None:
            sequence = f"{shard['saved_sequence']} (saved)"
        rows.append(
            [
                str(shard["id"]),
                shard["holder"] or "-",
                shard["stage"] or ("no process" if shard["holder"] is None else "unknown"),
                _or_dash(sequence),
                "-" if shard["latency_ms"] is None else f"{shard['latency_ms']:g} ms",
                _ago(shard["saved_at"], now),
                _ago(shard["updated_at"], now),
            ]
        )
    lines.extend(_table(rows))
    groups = report["groups"]
    lines.append(
        f"consumer groups of {report['stream']!r}:"
        if groups
        else f"consumer groups of {report['stream']!r}: none"
    )
    if groups:
        table = [["group", "consumers", "pending", "lag"]]
        for group in groups:
            table.append(
                [
                    group["group"],
                    _or_dash(group["consumers"]),
                    _or_dash(group["pending"]),
                    _or_dash(group["lag"]),
                ]
            )
        lines.extend("  " + line for line in _table(table))
    return lines


def dumps(report: dict[str, Any]) -> str:
    """The report as one JSON document (``--json``)."""
    return json.dumps(report, indent=2)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    return f"{max(0.0, now - when):.0f} s ago"


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _count(raw: Any) -> int | None:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return None
    return value if 0 < value <= _MAX_SHARDS else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace")[:200] if isinstance(value, bytes) else str(value)[:200]
