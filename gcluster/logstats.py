"""What `python -m gcluster run` logs for an operator: JSON lines, start-up progress, stats.

A deploy is verified from the log of the process that runs the shards: how
many of them are ready while they start ("5/8 shards ready"), then one line
every `--stats-interval` seconds (events per second, the shards' stages,
the backlog, reconnects since the line before). The lines are made by pure
functions over `Sample` values, so what they say is tested without a
cluster; `Reporter` only takes the samples.

`JsonFormatter` writes one JSON object per record for log shippers
(``--log-format json``): the time, level, logger and message, plus the
structured fields the library passes as ``extra=`` (``shard``, ``step``,
``code``, ``cause``...), and a traceback as a string field.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, TextIO

import gevent

from gcluster.stages import Stage

__all__ = [
    "LOG_FORMATS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "Reporter",
    "Sample",
    "configure_logging",
    "format_progress",
    "format_stats",
    "id_ranges",
    "take_sample",
]

log = logging.getLogger(__name__)

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS: Final = ("text", "json")

# A log line is for a person or a shipper, not a transport: a message, a field
# or a traceback longer than this is cut, and says by how much.
MAX_MESSAGE: Final = 8192
MAX_FIELD: Final = 1024
MAX_TRACEBACK: Final = 16384
# How often the start-up progress is looked at, and the least time between
# two of its lines (the last one, every shard ready, is logged at once).
_PROGRESS_POLL: Final = 0.1
_PROGRESS_EVERY: Final = 1.0
# Not-ready shard ids listed in a stats line, as ranges, before "and N more".
_MAX_RANGES: Final = 8

# What every LogRecord has; anything else on a record came in `extra=`.
_RECORD_FIELDS: Final = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _clean(text: str, limit: int) -> str:
    # A str from bytes decoded with surrogateescape holds lone surrogates,
    # which no UTF-8 writer (and few JSON readers) accept: shown escaped.
    return _cut(text, limit).encode("utf-8", "backslashreplace").decode("utf-8")


def _field(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    return _clean(value if isinstance(value, str) else str(value), MAX_FIELD)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, in ASCII whatever the record holds.

    Keys: ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``,
    ``message``, then each field given with ``extra=`` (numbers, booleans and
    None as they are, anything else as a string), and ``exc`` with the
    traceback when there is one. Messages longer than 8192 characters,
    fields longer than 1024 and tracebacks longer than 16384 are cut.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": _clean(record.getMessage(), MAX_MESSAGE),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = _field(value)
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = _clean(record.exc_text, MAX_TRACEBACK)
        if record.stack_info:
            line["stack"] = _clean(self.formatStack(record.stack_info), MAX_TRACEBACK)
        # ensure_ascii: a line any stream can take, whatever its encoding.
        return json.dumps(line, ensure_ascii=True, separators=(",", ":"))


def configure_logging(level: str, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at `level` or above to `stream` (stderr), as text or JSON lines.

    Replaces the root logger's handlers: the command line owns the process's log.

    Raises:
        ValueError: an unknown level or format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


# --- what the lines say ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The cluster's counters at one moment, what a stats line is computed from.

    Attributes:
        at: `time.monotonic()` when taken.
        stages: each shard's stage, by shard id.
        events: events delivered by the shards so far (all of them, summed).
        reconnects: reconnects of the shards so far (summed).
        backlog: events waiting in the cluster's queue, unread.
    """

    at: float
    stages: dict[int, Stage] = field(default_factory=dict)
    events: int = 0
    reconnects: int = 0
    backlog: int = 0

    @property
    def ready(self) -> int:
        """Shards with a session (READY or RESUMED received)."""
        return sum(1 for stage in self.stages.values() if stage is Stage.CONNECTED)


def id_ranges(ids: Iterable[int], limit: int = _MAX_RANGES) -> str:
    """`[0, 1, 2, 5]` as "0-2, 5"; past `limit` ranges, "... and N more shards"."""
    ordered = sorted(set(ids))
    ranges: list[tuple[int, int]] = []
    for shard_id in ordered:
        if ranges and shard_id == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], shard_id)
        else:
            ranges.append((shard_id, shard_id))
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    rest = sum(b - a + 1 for a, b in ranges[limit:])
    if rest:
        parts.append(f"and {rest} more")
    return ", ".join(parts)


def format_progress(sample: Sample, started: float | None = None) -> str:
    """The start-up line: "5/8 shards ready", with the shards still waiting and their stages."""
    total = len(sample.stages)
    text = f"{sample.ready}/{total} shards ready"
    if started is not None:
        text += f" after {max(0.0, sample.at - started):.1f} s"
    waiting = _not_connected(sample)
    if waiting:
        text += "; " + waiting
    return text


def format_stats(previous: Sample, current: Sample) -> str:
    """The periodic line: rates and changes since `previous`, stages and backlog as of `current`.

    E.g. "stats: 1523 events/s; shards: 8 connected; backlog 0; 2 reconnects".
    """
    elapsed = current.at - previous.at
    events = max(0, current.events - previous.events)
    rate = events / elapsed if elapsed > 0 else 0.0
    reconnects = max(0, current.reconnects - previous.reconnects)
    counts = Counter(stage.value for stage in current.stages.values())
    stages = ", ".join(f"{count} {stage}" for stage, count in sorted(counts.items())) or "none"
    text = f"stats: {rate:.0f} events/s; shards: {stages}"
    waiting = _not_connected(current)
    if waiting:
        text += f" ({waiting})"
    return (
        f"{text}; backlog {current.backlog}; {reconnects} reconnect{'' if reconnects == 1 else 's'}"
    )


def _not_connected(sample: Sample) -> str:
    by_stage: dict[str, list[int]] = {}
    for shard_id, stage in sample.stages.items():
        if stage is not Stage.CONNECTED:
            by_stage.setdefault(stage.value, []).append(shard_id)
    return "; ".join(f"{stage}: {id_ranges(ids)}" for stage, ids in sorted(by_stage.items()))


# --- taking the samples ------------------------------------------------------------


def take_sample(cluster: Any, now: float | None = None) -> Sample:
    """The counters of a `Cluster` (or anything with `shards()` and `backlog`) now."""
    shards = cluster.shards()
    return Sample(
        at=time.monotonic() if now is None else now,
        stages={shard.id: shard.stage for shard in shards},
        events=sum(shard.stats.delivered for shard in shards),
        reconnects=sum(sum(shard.stats.reconnects.values()) for shard in shards),
        backlog=int(getattr(cluster, "backlog", 0)),
    )


class Reporter:
    """Logs the start-up progress of a cluster's shards, then a stats line every `interval`.

    Args:
        cluster: the cluster to watch (its shards may not exist yet: `up()`
            makes them).
        interval: seconds between stats lines; 0 logs none (the start-up
            progress is logged whatever it is).
        extra: called for each stats line; what it returns is added to it
            (e.g. a sink's published and buffered events).
        logger: where the lines go (``gcluster.logstats``).
    """

    def __init__(
        self,
        cluster: Any,
        interval: float,
        *,
        extra: Callable[[], str] | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.cluster = cluster
        self.interval = interval
        self.extra = extra
        self.logger = logger
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> Reporter:
        """Start watching in a greenlet; returns self."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
            self._greenlet.name = "gcluster-logstats"
        return self

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=False)

    def _run(self) -> None:
        started = time.monotonic()
        sample = self._starting(started)
        if self.interval <= 0:
            return
        while True:
            gevent.sleep(self.interval)
            current = take_sample(self.cluster)
            text = format_stats(sample, current)
            if self.extra is not None:
                text += "; " + self.extra()
            self.logger.info(
                "%s",
                text,
                extra={
                    "step": "stats",
                    "ready": current.ready,
                    "shards": len(current.stages),
                    "backlog": current.backlog,
                },
            )
            sample = current

    def _starting(self, started: float) -> Sample:
        """Log "k/n shards ready" as k changes (at most once a second), until all are ready."""
        reported = -1
        last_line = -math.inf
        while True:
            sample = take_sample(self.cluster)
            total = len(sample.stages)
            done = bool(total) and sample.ready == total
            changed = bool(total) and sample.ready != reported
            if changed and (done or sample.at - last_line >= _PROGRESS_EVERY):
                reported = sample.ready
                last_line = sample.at
                self.logger.info(
                    "%s",
                    format_progress(sample, started),
                    extra={"step": "progress", "ready": sample.ready, "shards": total},
                )
            if done:
                return sample
            gevent.sleep(_PROGRESS_POLL)
