"""One measured run: blast a cluster's shards from the simulator process and time the client.

Shared by the throughput, filtered, latency and profile benchmarks. The blast
is prepared (built, compressed, framed) and held in the simulator, then
released; the client's figures are taken from the release to the moment the
iterator yields the last event, its CPU time over the same span.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from _common import cpu_seconds

from gcluster import Cluster, EventType
from gcluster.testing import SimulatorProcess


@dataclass(frozen=True)
class Run:
    """What one blast through one cluster measured."""

    shards: int
    events: int
    seconds: float
    """From the simulator's first write to the iterator yielding the last event."""
    client_cpu_seconds: float
    sim_cpu_seconds: float
    """The simulator process's CPU time while it wrote the blast."""
    sim_write_seconds: float
    """From its first write to its last (the socket buffers take the tail early)."""
    wire_bytes: int
    payload_bytes: int
    prepare_seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def client_cpu_per_event(self) -> float:
        return self.client_cpu_seconds / self.events

    @property
    def cpu_rate(self) -> float:
        """Events per second of the client's CPU time: its rate with a core to itself.

        On a machine where other work takes turns on the client's core, the
        wall-clock rate understates the client; this does not.
        """
        return self.events / max(self.client_cpu_seconds, 1e-9)

    @property
    def sim_cpu_share(self) -> float:
        """The simulator's CPU use during the run, as a fraction of one core."""
        return self.sim_cpu_seconds / max(self.seconds, 1e-9)

    @property
    def sim_capacity(self) -> float:
        """Events per second the simulator could write at the CPU cost it showed."""
        return self.events / max(self.sim_cpu_seconds, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rate": self.rate,
            "cpu_rate": self.cpu_rate,
            "client_cpu_per_event_us": self.client_cpu_per_event * 1e6,
            "client_cpu_share": self.client_cpu_seconds / self.seconds,
            "sim_cpu_share": self.sim_cpu_share,
            "sim_capacity": self.sim_capacity,
            "wire_bytes_per_event": self.wire_bytes / self.events,
            "payload_bytes_per_event": self.payload_bytes / self.events,
        }


def blast_run(
    sim: SimulatorProcess,
    cluster: Cluster,
    shard_ids: Sequence[int],
    per_shard: int,
    *,
    filtered: bool = False,
    during: Callable[[], Callable[[], None]] | None = None,
) -> Run:
    """Blast ``per_shard`` MESSAGE_CREATEs to each shard and consume them.

    Args:
        filtered: the cluster drops MESSAGE_CREATE; one TYPING_START per shard
            after the blast tells when the client is through.
        during: called as the blast is released; what it returns is called
            when the last event was consumed (e.g. a profiler's start/stop).
    """
    ids = list(shard_ids)
    queued = sim.blast(ids, per_shard, hold=True)
    if filtered:
        for shard_id in ids:
            sim.send_events(shard_id, 1, kinds=["TYPING_START"])
        wanted, expected = EventType.TYPING_START, len(ids)
    else:
        wanted, expected = EventType.MESSAGE_CREATE, per_shard * len(ids)
    sim_before = sim.stats()
    cpu_before = cpu_seconds()
    stop = during() if during is not None else None
    sim.release()
    seen = 0
    for _, event in cluster.events():
        if event.kind is wanted:
            seen += 1
            if seen == expected:
                break
    end = time.monotonic()
    cpu_after = cpu_seconds()
    if stop is not None:
        stop()
    records = sim.wait_blasts()
    sim_after = sim.stats()
    started = min(r["started"] for r in records)
    finished = max(r["finished"] for r in records)
    return Run(
        shards=len(ids),
        events=per_shard * len(ids),
        seconds=end - started,
        client_cpu_seconds=cpu_after - cpu_before,
        sim_cpu_seconds=sim_after["cpu_seconds"] - sim_before["cpu_seconds"],
        sim_write_seconds=finished - started,
        wire_bytes=sum(q["wire_bytes"] for q in queued),
        payload_bytes=sum(q["payload_bytes"] for q in queued),
        prepare_seconds=sum(q["prepare_seconds"] for q in queued),
    )


def median_run(runs: Sequence[Run]) -> Run:
    """The median run by rate (the middle one of an odd count)."""
    ordered = sorted(runs, key=lambda run: run.rate)
    return ordered[len(ordered) // 2]
