"""What the status page, /healthz and /readyz say about a cluster: health, readiness, history.

`gcluster.web` serves it over HTTP; this module has no HTTP in it. The rules
are pure functions of shard snapshots (`health`, `readiness`, `shard_row`,
`events_rate`), tested without sockets; `Monitor` adds the one thing that
needs time: a bounded history of events/s and heartbeat latency, sampled by a
greenlet every few seconds, and whatever a `StatusSource` (the Redis service:
its lease holder, its consumer groups' lag) reports, fetched in that same
greenlet under a deadline so a slow Redis never holds an HTTP request.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import gevent

from gcluster.errors import ConfigError
from gcluster.protocol import Stage

if TYPE_CHECKING:
    from gcluster.cluster import Cluster
    from gcluster.shard import Information

__all__ = [
    "Health",
    "History",
    "Monitor",
    "Readiness",
    "StatusSource",
    "events_rate",
    "health",
    "readiness",
    "shard_row",
]

log = logging.getLogger(__name__)

# READY and RESUMED open sessions; the rate counts the stream itself.
_SESSION_STARTS: Final = ("READY", "RESUMED")


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the process is alive: /healthz answers 200 when `alive`.

    Attributes:
        alive: the cluster is not shut down and not every shard is closed for good.
        reason: why not, or what it is doing ("starting", "running").
    """

    alive: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether every shard of the process's slice has a session: /readyz answers 200 when `ready`.

    Attributes:
        ready: every shard is connected (READY or RESUMED received).
        reason: why not, or "ready".
        not_ready: `(shard id, stage)` of each shard that is not connected.
    """

    ready: bool
    reason: str
    not_ready: tuple[tuple[int, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The body of /readyz."""
        return {
            "ready": self.ready,
            "reason": self.reason,
            "not_ready": [{"shard": sid, "stage": stage} for sid, stage in self.not_ready],
        }


def health(*, started: bool, stopped: bool, stages: Iterable[Stage]) -> Health:
    """The process's health from the cluster's state and its shards' stages."""
    if stopped:
        return Health(False, "the cluster was shut down")
    stages = list(stages)
    if stages and all(stage is Stage.FATALLY_CLOSED for stage in stages):
        return Health(False, "every shard was closed for good by the gateway")
    return Health(True, "running" if started else "starting")


def readiness(
    *, started: bool, stopped: bool, stages: Mapping[int, Stage], waiting_for: str | None = None
) -> Readiness:
    """Ready when started, not stopped, nothing else awaited and every shard connected.

    A cluster whose shards were all removed is ready, as `Cluster.wait_until_ready` says.
    """
    if stopped:
        return Readiness(False, "the cluster was shut down")
    if waiting_for is not None:
        return Readiness(False, waiting_for)
    if not started:
        return Readiness(False, "the shards have not started yet")
    not_ready = tuple(
        (sid, stage.value) for sid, stage in sorted(stages.items()) if stage is not Stage.CONNECTED
    )
    if not_ready:
        why = f"{len(not_ready)} of {len(stages)} shards not connected"
        return Readiness(False, why, not_ready)
    return Readiness(True, "ready")


def shard_row(info: Information, delivered: int) -> dict[str, Any]:
    """One shard as /status.json lists it: id, stage, latency, events, sequence."""
    recent = info.latency.recent
    return {
        "id": info.id,
        "stage": info.stage.value,
        "latency_ms": round(recent[-1] * 1000, 1) if recent else None,
        "events": delivered,
        "sequence": info.sequence,
        "error": str(info.error) if info.error is not None else None,
    }


def events_rate(before: Mapping[int, int], after: Mapping[int, int], seconds: float) -> float:
    """Events per second between two `{shard id: delivered}` counts.

    A shard that was not there before (started or added since) counts from
    zero, as does one whose count went down (removed and added again); a
    shard gone since counts nothing. So the rate is never negative.
    """
    if seconds <= 0:
        return 0.0
    total = 0
    for sid, count in after.items():
        previous = before.get(sid, 0)
        total += count - previous if count >= previous else count
    return total / seconds


@dataclass(slots=True)
class History:
    """The last `size` samples of events/s and heartbeat latency (a ring buffer)."""

    size: int = 180
    times: deque[float] = field(init=False)
    events_per_s: deque[float] = field(init=False)
    latency_ms: deque[float | None] = field(init=False)

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ConfigError(f"history must keep at least 2 samples, not {self.size}")
        self.times = deque(maxlen=self.size)
        self.events_per_s = deque(maxlen=self.size)
        self.latency_ms = deque(maxlen=self.size)

    def add(self, at: float, events_per_s: float, latency_ms: float | None) -> None:
        self.times.append(at)
        self.events_per_s.append(round(events_per_s, 1))
        self.latency_ms.append(None if latency_ms is None else round(latency_ms, 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": list(self.times),
            "events_per_s": list(self.events_per_s),
            "latency_ms": list(self.latency_ms),
        }


class StatusSource(Protocol):
    """What a deployment adds to the status: e.g. the Redis service's lease and consumer lag."""

    def waiting_for(self) -> str | None:
        """Why this process is not ready whatever its shards say (a standby), or None."""

    def sample(self) -> dict[str, Any]:
        """Data for /status.json; may block on I/O (called in the sampler, under a deadline)."""


def _delivered(counts: Mapping[str, int]) -> int:
    return sum(counts.values()) - sum(counts.get(name, 0) for name in _SESSION_STARTS)


class Monitor:
    """A cluster's health, readiness and status, with a sampled history.

    Args:
        cluster: the `Cluster` to watch; read in the hub it runs in.
        interval: seconds between history samples (and source samples).
        history: samples kept (`interval * history` seconds of plots).
        source: a `StatusSource` whose `sample()` is added under "service".
        source_timeout: seconds a source sample may take; past it the
            previous data is marked unknown.

    Raises:
        ConfigError: an interval under 0.1 s or a history under 2 samples.

    .. important:: A gevent object: use it from the cluster's hub.
    """

    def __init__(
        self,
        cluster: Cluster,
        *,
        interval: float = 2.0,
        history: int = 180,
        source: StatusSource | None = None,
        source_timeout: float = 2.0,
    ) -> None:
        if not interval >= 0.1:
            raise ConfigError(f"interval must be at least 0.1 s, not {interval}")
        self.cluster = cluster
        self.interval = interval
        self.history = History(history)
        self.source = source
        self.source_timeout = source_timeout
        self._service: dict[str, Any] | None = None
        self._counts: dict[int, int] = {}
        self._counted_at = time.monotonic()
        self._sampler: gevent.Greenlet | None = None

    def start(self) -> Monitor:
        """Start sampling in a greenlet (idempotent); returns self."""
        if self._sampler is None:
            self._counts = self._delivered_now()
            self._counted_at = time.monotonic()
            self._sampler = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        """Stop sampling (idempotent)."""
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.kill()

    # --- the answers ---------------------------------------------------------------

    def health(self) -> Health:
        started, stopped = self._state()
        return health(
            started=started,
            stopped=stopped,
            stages=[shard.info().stage for shard in self.cluster.shards()],
        )

    def readiness(self) -> Readiness:
        started, stopped = self._state()
        return readiness(
            started=started,
            stopped=stopped,
            stages={shard.id: shard.info().stage for shard in self.cluster.shards()},
            waiting_for=self.source.waiting_for() if self.source is not None else None,
        )

    def snapshot(self) -> dict[str, Any]:
        """What /status.json serves: shards, health, readiness, history and the source's data."""
        rows = []
        for shard in self.cluster.shards():
            rows.append(shard_row(shard.info(), _delivered(shard.stats.events)))
        alive = self.health()
        ready = self.readiness()
        return {
            "time": time.time(),
            "total": self.cluster.total,
            "interval": self.interval,
            "health": {"alive": alive.alive, "reason": alive.reason},
            "ready": {"ready": ready.ready, "reason": ready.reason},
            "backlog": self.cluster.backlog,
            "shards": rows,
            "history": self.history.to_dict(),
            "service": self._service,
        }

    # --- sampling ---------------------------------------------------------------------

    def sample(self) -> None:
        """Take one history sample now (the sampler does this every `interval`)."""
        now = time.monotonic()
        counts = self._delivered_now()
        rate = events_rate(self._counts, counts, now - self._counted_at)
        self._counts, self._counted_at = counts, now
        latencies = []
        for shard in self.cluster.shards():
            info = shard.info()
            if info.stage is Stage.CONNECTED and info.latency.recent:
                latencies.append(info.latency.recent[-1])
        mean = sum(latencies) / len(latencies) * 1000 if latencies else None
        self.history.add(time.time(), rate, mean)

    def sample_source(self) -> None:
        """Ask the source for its data, under `source_timeout`."""
        if self.source is None:
            return
        try:
            with gevent.Timeout(self.source_timeout):
                self._service = self.source.sample()
        except gevent.Timeout:
            self._service = {"unknown": f"no answer within {self.source_timeout} s"}
        except Exception as err:  # noqa: BLE001 - a source's failure shows on the page, not here
            log.debug("status source failed", exc_info=True)
            self._service = {"unknown": f"{type(err).__name__}: {err}"}

    def _run(self) -> None:
        while True:
            self.sample_source()
            gevent.sleep(self.interval)
            self.sample()

    def _delivered_now(self) -> dict[int, int]:
        return {shard.id: _delivered(shard.stats.events) for shard in self.cluster.shards()}

    def _state(self) -> tuple[bool, bool]:
        # The cluster keeps these private; they are what its own repr shows.
        return bool(getattr(self.cluster, "_started", True)), bool(
            getattr(self.cluster, "_stopped", False)
        )
