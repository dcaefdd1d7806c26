"""A bot split over processes that share one Redis, against one simulator.

The simulator runs in the test's hub; each process (tests/_cluster_child.py,
started with gevent.subprocess so the hub keeps serving) runs its slice of
the shards, `ShardScheme.process(i, 3, 12)`, with one `RedisQueue` and one
`RedisSessionStore` shared through a real redis-server.

Discord's identify interval is 5 s; both sides use 1 s here (the simulator's
``identify_interval`` and the queue's ``interval``) to keep the tests short.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import gevent
import pytest
from conftest import TIMEOUT
from gevent import subprocess

# What these prove is about processes, not the kind of Redis: they run on the
# single server only (CI time is scarce). The queue shared by processes and
# the session store are proven on a Redis Cluster by test_redis.py,
# test_service.py and test_redis_failover.py.
from redis_server import (  # noqa: F401 - fixtures
    RedisServer,
    all_keys,
    make_redis_server_fixture,
    redis_server_fixture,
    redis_url_fixture,
    single_only,
)

from gcluster import Cluster, Intents, QueueError
from gcluster.redis import RedisQueue, RedisSessionStore
from gcluster.testing import GatewaySimulator

pytestmark = pytest.mark.extras

MakeSim = Callable[..., GatewaySimulator]

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "_cluster_child.py"
PROCESSES = 3
TOTAL = 12
CONCURRENCY = 4
INTERVAL = 1.0  # Discord's is 5 s; the simulator and the queue both use this
# RedisQueue's margin between a bucket's slots. Its default (0.05 s) was too
# little here: with three processes, the simulator, Redis and pytest on two
# cores, a process can send its IDENTIFY 0.1 s after its slot, and the
# simulator then saw the next one in the bucket 0.95 s later (2 runs in 8).
MARGIN = 0.2
NAMESPACE = "gcluster-test"
# Each bucket holds TOTAL / CONCURRENCY = 3 shards, one in each process: its
# last IDENTIFY comes two intervals after its first.
MINIMUM_START = (TOTAL // CONCURRENCY - 1) * INTERVAL


def env() -> dict[str, str]:
    variables = dict(os.environ)
    variables["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), variables.get("PYTHONPATH")])
    )
    return variables


class Child:
    """One process of the bot, and what it has said so far."""

    def __init__(
        self,
        index: int,
        sim: GatewaySimulator,
        redis_url: str,
        log: IO[bytes],
        *,
        lag: float = 0.0,
    ) -> None:
        self.index = index
        self.sim = sim
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(CHILD),
                "--redis",
                redis_url,
                "--api-base",
                sim.api_base,
                "--token",
                sim.token,
                "--index",
                str(index),
                "--count",
                str(PROCESSES),
                "--total",
                str(TOTAL),
                "--interval",
                str(INTERVAL),
                "--margin",
                str(MARGIN),
                "--lag",
                str(lag),
                "--namespace",
                NAMESPACE,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env(),
            cwd=str(ROOT),
        )
        self.ready = False
        self.up: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.received: dict[int, int] = {}
        self.handled: list[tuple[int, int, int]] = []  # (shard, number, sequence)
        self.done: int | None = None
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if "ready" in message:
                self.ready = True
            elif "up" in message:
                self.up = message
            elif "error" in message:
                self.error = message
            elif "received" in message:
                self.received = {int(k): v for k, v in message["received"].items()}
            elif "handled" in message:
                shard_id, number, sequence = message["handled"]
                self.handled.append((shard_id, number, sequence))
            elif "done" in message:
                self.done = message["done"]

    @property
    def shards(self) -> list[int]:
        start = self.index * TOTAL // PROCESSES
        return list(range(start, (self.index + 1) * TOTAL // PROCESSES))

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def numbers(self, shard_id: int) -> list[int]:
        """Event numbers handled for a shard, in the order handled."""
        return [number for sid, number, _ in self.handled if sid == shard_id]

    def kill(self) -> None:
        """SIGKILL: nothing of the process runs after this."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)

    def stop(self) -> int:
        """Ask the process to bring its cluster down and exit; its exit code."""
        if self.proc.poll() is None:
            self.tell("stop")
            self.proc.stdin.close()  # type: ignore[union-attr]
        code: int = self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        return code

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.kill()


@pytest.fixture
def spawn(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., Child]]:
    """Start bot processes against a simulator; all are killed after the test.

    Their stderr (the library's warnings) is printed when the test fails.
    """
    started: list[Child] = []
    logs: list[Path] = []

    def start(index: int, sim: GatewaySimulator, *, lag: float = 0.0) -> Child:
        path = tmp_path / f"process-{index}-{len(started)}.log"
        logs.append(path)
        with path.open("wb") as log:
            child = Child(index, sim, redis_url, log, lag=lag)
        started.append(child)
        return child

    yield start
    for child in started:
        child.cleanup()
    for path in logs:
        text = path.read_text(errors="replace").strip()
        if text:
            print(f"--- {path.name}\n{text}")


def wait_for(sim: GatewaySimulator, predicate: Callable[[], object], what: str) -> None:
    """Wait (serving the simulator) until `predicate()` holds; fail after TIMEOUT."""
    assert sim.wait_until(predicate, timeout=TIMEOUT), f"timed out waiting for {what}"


def go(sim: GatewaySimulator, children: list[Child]) -> None:
    """Let every process build its cluster, then start them all at once."""
    wait_for(sim, lambda: all(c.ready for c in children), "the processes to be ready")
    for child in children:
        child.tell("go")


def start_together(sim: GatewaySimulator, children: list[Child]) -> None:
    """`go`, then wait until up() returned in every process."""
    go(sim, children)
    wait_for(sim, lambda: all(c.up or c.error for c in children), "up() in every process")
    assert [c.error for c in children] == [None] * len(children)


def stop_all(children: list[Child]) -> None:
    assert [child.stop() for child in children] == [0] * len(children)


# --- start-up -------------------------------------------------------------------------


@single_only
def test_three_processes_share_one_redis_queue_and_start_near_the_minimum(
    make_sim: MakeSim, spawn: Callable[..., Child]
) -> None:
    """12 shards in 3 processes, max_concurrency 4: no violation, start-up close to 2 s.

    With Discord's 5 s interval the minimum would be 10 s.
    """
    sim = make_sim(shards=TOTAL, max_concurrency=CONCURRENCY, identify_interval=INTERVAL)
    children = [spawn(index, sim) for index in range(PROCESSES)]
    start_together(sim, children)
    wait_for(sim, lambda: len(sim.records.identifies) == TOTAL, "every IDENTIFY")

    records = sim.records
    assert records.violations == []
    assert sorted(r.shard_id for r in records.identifies) == list(range(TOTAL))
    # Each process ran its own slice.
    for child in children:
        assert child.up is not None and child.up["shards"] == child.shards
    # RedisQueue spaces a bucket's slots `interval + margin` apart, by Redis's clock.
    times = [r.time for r in records.identifies]
    span = max(times) - min(times)
    assert MINIMUM_START <= span <= (MINIMUM_START + 2 * MARGIN) * 1.1, span
    # A bucket's three shards are in three processes: only Redis keeps them apart.
    for bucket in range(CONCURRENCY):
        ours = sorted(r.time for r in records.identifies if r.bucket == bucket)
        gaps = [b - a for a, b in zip(ours, ours[1:], strict=False)]
        assert all(INTERVAL <= gap <= (INTERVAL + MARGIN) * 1.1 for gap in gaps), gaps
    # up() in each process: the wait for its last slot, and not much more.
    for child in children:
        assert child.up is not None and child.up["up"] <= (MINIMUM_START + 2 * MARGIN) * 1.1 + 0.5
    stop_all(children)


# --- a process that crashes -----------------------------------------------------------


def has_ready(child: Child) -> bool:
    """Every shard of the process has received READY (its sequence 1)."""
    return all(child.received.get(sid, 0) >= 1 for sid in child.shards)


def stored_sequences(redis_url: str, shard_ids: list[int]) -> dict[int, int]:
    store = RedisSessionStore(redis_url, namespace=NAMESPACE)
    try:
        return {sid: session.sequence for sid, session in store.load(shard_ids).items()}
    finally:
        store.close()


@single_only
def test_a_killed_process_resumes_its_shards_from_redis_and_loses_no_event(
    make_sim: MakeSim, spawn: Callable[..., Child], redis_url: str
) -> None:
    """SIGKILL a process whose handler lags far behind its shards, restart it: nothing lost.

    The session store holds the sequence of the last event the handler
    finished, so the restarted process RESUMEs from there and the simulator
    replays the rest. Events handled after the last save, before the crash,
    come twice; nothing else does.
    """
    sim = make_sim(shards=TOTAL, max_concurrency=CONCURRENCY, identify_interval=INTERVAL)
    lagging = 1
    children = [
        spawn(index, sim, lag=0.02 if index == lagging else 0.0) for index in range(PROCESSES)
    ]
    start_together(sim, children)
    # Every READY received (the handler reaches each at once), so every
    # session is in the store before the stream starts; for a process that
    # dies before its handler reaches a READY, see the next test.
    wait_for(sim, lambda: all(has_ready(c) for c in children), "every READY")
    first = children[lagging]
    victims = first.shards

    per_shard = 60
    for shard_id in range(TOTAL):
        sim.send_events(shard_id, per_shard)
    sent = {sid: sim.sessions[sid].sequence for sid in victims}
    total_events = per_shard * len(victims)

    def far_behind_with_a_save() -> bool:
        if any(first.received.get(sid, 0) < sent[sid] for sid in victims):
            return False  # not everything received yet
        stored = stored_sequences(redis_url, victims)
        # Every session saved, one past READY (the handler finished some
        # events), so the restart resumes mid-stream.
        return len(stored) == len(victims) and any(s > 1 for s in stored.values())

    wait_for(sim, far_behind_with_a_save, "the shards to receive all, and a save")
    assert len(first.handled) < total_events / 2, "the handler did not lag"
    first.kill()
    stored = stored_sequences(redis_url, victims)
    handled_before = list(first.handled)
    assert len(handled_before) < total_events

    # The gateway keeps dispatching while the process is down.
    more = 20
    for shard_id in range(TOTAL):
        sim.send_events(shard_id, more)
    identifies_before = len(sim.records.identifies)

    second = spawn(lagging, sim)
    start_together(sim, [second])
    everything = per_shard + more

    def caught_up() -> bool:
        return all(
            max(c.numbers(sid), default=0) == everything
            for c in (children[0], second, children[2])
            for sid in c.shards
        )

    if not sim.wait_until(caught_up, timeout=TIMEOUT):
        progress = {  # shard: (highest number handled, sequence received)
            sid: (max(c.numbers(sid), default=0), c.received.get(sid))
            for c in (children[0], second, children[2])
            for sid in c.shards
        }
        pytest.fail(f"not every event was handled within {TIMEOUT} s: {progress}")

    # The restarted process RESUMEd every shard from the stored sequence.
    resumes = [r for r in sim.records.resumes if r.shard_id in victims]
    assert sorted(r.shard_id for r in resumes) == victims
    assert all(r.ok for r in resumes)
    assert {r.shard_id: r.seq for r in resumes} == stored
    assert len(sim.records.identifies) == identifies_before == TOTAL
    assert sim.records.violations == []

    for sid in victims:
        before = [(n, s) for shard, n, s in handled_before if shard == sid]
        after = [(n, s) for shard, n, s in second.handled if shard == sid]
        # The store never ran ahead of the handler (READY, s = 1, needs no handling).
        assert stored[sid] <= max((s for _, s in before), default=1), sid
        # Nothing lost: every number handled, by one process or the other.
        numbers = [n for n, _ in before + after]
        assert set(numbers) == set(range(1, everything + 1)), sid
        # The restarted process got exactly what came after the stored sequence, once each.
        assert [s for _, s in after] == sorted({s for _, s in after})
        assert min(s for _, s in after) == stored[sid] + 1
        # Duplicates only from the crash window: handled after the last save.
        twice = {n for n, count in Counter(numbers).items() if count > 1}
        window = {n for n, s in before if s > stored[sid]}
        assert twice == window, sid
    # The processes that did not crash handled everything exactly once, in order.
    for child in (children[0], children[2]):
        for sid in child.shards:
            assert child.numbers(sid) == list(range(1, everything + 1)), sid

    stop_all([children[0], second, children[2]])


@single_only
def test_a_process_killed_before_its_handler_reached_a_ready_loses_no_event(
    make_sim: MakeSim, spawn: Callable[..., Child], redis_url: str
) -> None:
    """Shards whose READY still waits behind a backlog when the process dies resume too.

    With max_concurrency 2, two of the process's four shards identify an
    interval after the other two; by then the handler is seconds behind on
    the first two, so the later READYs (and every event after them) wait in
    the queue. The process is killed there.
    Their sessions live on at the gateway, with every event the dead process
    received; the restarted process must RESUME them, not IDENTIFY anew,
    which would abandon those events.
    """
    sim = make_sim(shards=TOTAL, max_concurrency=2, identify_interval=INTERVAL)
    first = spawn(1, sim, lag=0.05)
    go(sim, [first])
    # Which shard of each bucket goes first depends on which connected first.
    wait_for(sim, lambda: len(sim.records.identifies) >= 2, "the first IDENTIFYs")
    early = sorted(r.shard_id for r in sim.records.identifies[:2])
    late = sorted(set(first.shards) - set(early))
    assert len(sim.records.identifies) == 2 and {sid % 2 for sid in early} == {0, 1}
    wait_for(sim, lambda: all(first.received.get(sid, 0) >= 1 for sid in early), "READY")
    for shard_id in early:
        sim.send_events(shard_id, 40)  # 4 s of handling
    wait_for(sim, lambda: has_ready(first), "the later shards' READY")
    for shard_id in late:
        sim.send_events(shard_id, 10)
    sent = {sid: sim.sessions[sid].sequence for sid in first.shards}

    def received_all_and_saved() -> bool:
        if any(first.received.get(sid, 0) < sent[sid] for sid in first.shards):
            return False
        # Every session saved once (a new one is saved at its READY, within
        # the store's one-second cadence), and one past its READY.
        stored = stored_sequences(redis_url, first.shards)
        return set(stored) == set(first.shards) and any(s > 1 for s in stored.values())

    wait_for(sim, received_all_and_saved, "the shards to receive all, and their saves")
    assert not any(sid in late for sid, _, _ in first.handled), "the handler did not lag"
    first.kill()
    stored = stored_sequences(redis_url, first.shards)
    handled_before = list(first.handled)
    identifies_before = len(sim.records.identifies)

    second = spawn(1, sim)
    start_together(sim, [second])

    def identified() -> list[int]:
        return sorted(r.shard_id for r in sim.records.identifies[identifies_before:])

    def resumed() -> list[int]:
        return sorted(r.shard_id for r in sim.records.resumes if r.ok)

    wait_for(
        sim,
        lambda: set(identified()) | set(resumed()) >= set(first.shards),
        "every shard to IDENTIFY or RESUME",
    )
    assert identified() == [] and resumed() == first.shards, (
        f"saved at the kill: {stored}; after the restart IDENTIFY: {identified()}, "
        f"RESUME: {resumed()}; the IDENTIFYs abandon what their old sessions held"
    )
    for sid in first.shards:
        wait_for(
            sim,
            lambda sid=sid: (
                set(n for s, n, _ in handled_before + second.handled if s == sid)
                == set(range(1, sent[sid]))
            ),
            f"every event of shard {sid}",
        )
    assert second.stop() == 0


# --- Redis gone -----------------------------------------------------------------------


def test_redis_down_at_start_is_a_queue_error_and_nothing_identifies(
    make_sim: MakeSim, make_redis_server: Callable[[], RedisServer]
) -> None:
    server = make_redis_server()
    server.stop()
    sim = make_sim(shards=4, max_concurrency=2, identify_interval=INTERVAL)
    queue = RedisQueue(server.url, namespace=NAMESPACE, interval=INTERVAL)
    cluster = Cluster(sim.token, Intents.GUILDS, api_base=sim.api_base, queue=queue)
    try:
        with pytest.raises(QueueError, match="Redis"):
            cluster.up(timeout=TIMEOUT)
        assert sim.records.identifies == [] and sim.records.connections == []
    finally:
        cluster.down()
        queue.close()


def test_redis_stopping_holds_back_a_new_identify_until_it_is_back(
    make_sim: MakeSim,
    make_redis_server: Callable[[], RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fail closed: a shard that must IDENTIFY while Redis is down does not, and retries."""
    server = make_redis_server()
    sim = make_sim(shards=2, max_concurrency=2, identify_interval=INTERVAL)
    queue = RedisQueue(server.url, namespace=NAMESPACE, interval=INTERVAL)
    cluster = Cluster(sim.token, Intents.GUILDS, api_base=sim.api_base, queue=queue)
    try:
        cluster.up(timeout=TIMEOUT)
        assert cluster.wait_until_ready(TIMEOUT)
        assert len(sim.records.identifies) == 2

        server.stop()
        caplog.set_level(logging.ERROR, logger="gcluster.shard")
        # 4009: the session timed out, so shard 0 needs a new one.
        sim.close_shard(0, 4009)

        def refusals() -> int:
            return sum("identify queue refused" in r.getMessage() for r in caplog.records)

        wait_for(sim, lambda: refusals() >= 2, "the queue to refuse twice")
        assert len(sim.records.identifies) == 2  # no IDENTIFY without a slot
        assert sim.records.violations == []

        # Redis comes back on the same address: the shard's next attempt identifies.
        back = RedisServer()
        back.port, back.url = server.port, server.url
        back.start()
        try:
            wait_for(sim, lambda: len(sim.records.identifies) == 3, "the new IDENTIFY")
            assert sim.records.identifies[-1].shard_id == 0
            assert cluster.wait_until_ready(TIMEOUT)
        finally:
            back.stop()
    finally:
        cluster.down()
        queue.close()


# --- the example ----------------------------------------------------------------------


@single_only
def test_the_multiprocess_example_runs_processes_that_share_redis(redis_url: str) -> None:
    command = [
        sys.executable,
        str(ROOT / "examples" / "multiprocess.py"),
        "--simulate",
        "--redis",
        redis_url,
        "--processes",
        "3",
        "--shards",
        "6",
    ]
    variables = env()
    variables.pop("DISCORD_TOKEN", None)
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=variables, cwd=str(ROOT)
    )
    try:
        out_bytes, err_bytes = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = out_bytes.decode(), err_bytes.decode()
    assert proc.returncode == 0, err
    # Each process ran its slice of the 6 shards and printed what it received.
    for index, shards in enumerate([[0, 1], [2, 3], [4, 5]]):
        assert f"[process {index}] up: shards {shards}" in out, out
        for shard_id in shards:
            received = [
                line
                for line in out.splitlines()
                if line.startswith(f"[process {index}] shard {shard_id}:")
            ]
            assert len(received) == 5, (shard_id, received)
    assert "simulator: 6 identifies, 0 violations" in out, out
    # Each stopped by itself once the events were in (2 shards x 5 events).
    assert out.count("stopped after 10 events") == 3, out
    # Nothing of the run is left in Redis.
    assert all_keys(redis_url) == []
