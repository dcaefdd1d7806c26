"""A fault storm: many shards streaming numbered events while resumable faults rain on them.

Used by the test suite (a short storm) and by `benchmarks/fault_storm.py` (a
long one): every fault here keeps the session resumable, so the verdict is
simple and strict — every shard must deliver each of its events exactly once,
in order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent

from gcluster.cluster import Cluster
from gcluster.events import Event
from gcluster.queue import NoOpQueue
from gcluster.testing.faults import (
    CloseConnection,
    DropConnection,
    Fault,
    GarbageFrame,
    InvalidateSession,
    Reconnect,
    Stall,
    StopHeartbeatAcks,
)
from gcluster.testing.payloads import event_number
from gcluster.testing.process import SimulatorError
from gcluster.testing.simulator import GatewaySimulator
from gcluster.testing.streams import STREAM_INTENTS

__all__ = ["RESUMABLE_FAULTS", "StormResult", "run_storm"]

# Faults after which Discord lets the session be resumed.
RESUMABLE_FAULTS: tuple[Callable[[], Fault], ...] = (
    lambda: CloseConnection(code=4000),
    lambda: CloseConnection(code=4001),
    lambda: CloseConnection(code=4002),
    lambda: CloseConnection(code=4008),
    lambda: CloseConnection(code=1001),
    lambda: Reconnect(),
    lambda: InvalidateSession(resumable=True),
    lambda: DropConnection(),
    lambda: StopHeartbeatAcks(),
    lambda: GarbageFrame(kind="zlib"),
    lambda: GarbageFrame(kind="json"),
    lambda: Stall(seconds=2.0),
)


@dataclass
class StormResult:
    """What a storm did and what arrived."""

    shards: int
    events_per_shard: int
    faults: int = 0  # applied by the simulator
    struck: int = 0  # of those, the ones that found a live connection
    resumes: int = 0
    identifies: int = 0
    seconds: float = 0.0
    lost: dict[int, list[int]] = field(default_factory=dict)
    duplicated: dict[int, list[int]] = field(default_factory=dict)
    out_of_order: dict[int, int] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        return self.shards * self.events_per_shard - sum(len(v) for v in self.lost.values())

    @property
    def exactly_once(self) -> bool:
        return (
            not any(self.lost.values())
            and not any(self.duplicated.values())
            and not any(self.out_of_order.values())
        )


def run_storm(
    *,
    shards: int = 8,
    events_per_shard: int = 1000,
    fault_every: int = 300,
    seed: int = 0,
    heartbeat_interval: float = 0.3,
    timeout: float = 120.0,
) -> StormResult:
    """Stream `events_per_shard` numbered events on each shard with a resumable
    fault on a random shard about every `fault_every` events of the stream.

    Runs in the calling greenlet's hub; the simulator and the cluster live and
    die inside the call.

    Raises:
        SimulatorError: the shards were not ready within 30 s, or the storm
            did not finish within `timeout`.
    """
    rng = random.Random(seed)
    result = StormResult(shards=shards, events_per_shard=events_per_shard)
    sim = GatewaySimulator(
        shards=shards,
        max_concurrency=shards,
        heartbeat_interval=heartbeat_interval,
        identify_interval=0,
    ).start()
    cluster = Cluster(
        sim.token, STREAM_INTENTS, api_base=sim.api_base, queue=NoOpQueue(), connect_timeout=2.0
    )
    started = time.monotonic()
    try:
        cluster.up(timeout=30)
        if not cluster.wait_until_ready(30):
            raise SimulatorError("the storm's shards did not become ready")
        feeder = gevent.spawn(_feed, sim, rng, shards, events_per_shard, fault_every, result)
        seen: dict[int, list[int]] = {shard_id: [] for shard_id in range(shards)}
        complete = 0
        with gevent.Timeout(timeout, SimulatorError(f"storm not finished within {timeout} s")):
            for shard_id, event in cluster.events():
                number = _number(event)
                if number is None:
                    continue
                seen[shard_id].append(number)
                if number == events_per_shard:
                    complete += 1
                    if complete == shards:
                        break
        feeder.join(timeout=5)
        result.seconds = time.monotonic() - started
        for shard_id, got in seen.items():
            expected = set(range(1, events_per_shard + 1))
            result.lost[shard_id] = sorted(expected - set(got))
            counts: dict[int, int] = {}
            for n in got:
                counts[n] = counts.get(n, 0) + 1
            result.duplicated[shard_id] = sorted(n for n, c in counts.items() if c > 1)
            result.out_of_order[shard_id] = sum(
                1 for a, b in zip(got, got[1:], strict=False) if b <= a
            )
        # Faults planned near the end of a stream may never come due: count those applied.
        result.faults = len(sim.records.faults)
        result.struck = len([f for f in sim.records.faults if f.connections])
        result.resumes = len([r for r in sim.records.resumes if r.ok])
        result.identifies = len(sim.records.identifies)
        return result
    finally:
        cluster.down()
        sim.stop()


def _number(event: Event) -> int | None:
    if event.sequence is None or not isinstance(event.data, dict):
        return None
    return event_number(event.data)


def _feed(
    sim: GatewaySimulator,
    rng: random.Random,
    shards: int,
    events_per_shard: int,
    fault_every: int,
    result: StormResult,
) -> None:
    sent = 0
    batch = 100
    next_fault = rng.randint(fault_every // 2, fault_every * 3 // 2)
    while sent < events_per_shard:
        count = min(batch, events_per_shard - sent)
        for shard_id in range(shards):
            sim.send_events(shard_id, count)
        sent += count
        while sent * shards >= next_fault:
            target = rng.randrange(shards)
            fault = rng.choice(RESUMABLE_FAULTS)()
            sim.schedule_fault(target, fault, after_dispatches=rng.randint(1, batch))
            next_fault += rng.randint(fault_every // 2, fault_every * 3 // 2)
        gevent.sleep(0.01)
