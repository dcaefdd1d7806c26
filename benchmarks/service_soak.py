"""The service mode under minutes of load and faults: what no unit test sees.

One simulator (8 shards, in this process), one redis-server, two slices
(``python -m gcluster run --scheme process:0/2`` and ``process:1/2``, ``--shards
8``), each with a lease holder and a standby, and ``--workers`` `StreamWorker`
processes of one consumer group, each appending the shard, number, stream
entry ID and origin (new, own, claimed) of every event it handles to a file
of its own before acknowledging it (and spending ``--handle-ms`` on it).
The simulator sends every shard ``--rate`` numbered events per second
(`gcluster.testing.event_number`). Every 10-20 s (``--fault-every`` 15 on
average; seeded, ``--seed``) a fault hits, at random:

- gateway SIGTERM: a deploy; the slice's holder hands off to its standby;
- gateway kill -9: the standby takes over once the lease expires (``--lease-ttl``);
- worker kill -9: its pending events are claimed after ``--claim-idle``;
- worker SIGTERM: it finishes its batch and exits 0, leaving nothing pending;
- Redis pause: ``CLIENT PAUSE`` for ``--redis-pause`` seconds (0: never); a
  holder that cannot renew its lease for ``--lease-ttl`` x 0.8 gives its
  shards up and exits 1 (expected, and not counted as a failure).

A process that stops is replaced at once: a gateway process as the slice's new
standby, a worker under a new consumer name. Measured:

- events sent against distinct events handled: lost (must be 0 while the
  stream's ``--maxlen`` is not exceeded), handled more than once (at least
  once is the contract), split into published twice (two stream entries: a
  RESUME replayed events a killed holder had published after its last
  session save) and delivered twice (one entry handled by two consumers: a
  worker died between handling and acknowledging), each filed under the
  fault that caused it;
- per fault kind: the publish gap (the slice's last stream entry before the
  new holder's first RESUME, to its first entry after it; for a Redis pause,
  the longest pause between two entries around it), and for a killed
  worker how long after ``--claim-idle`` its pending events were handled by
  another worker;
- every second: the simulator's live connections per shard (never two: two
  processes on one shard), the holder keys (``{ns}:holder:<shard>``, against
  their slice's lease), the group's consumers (``XINFO CONSUMERS``: a worker
  gone is deleted within ``dead_consumer_idle``); from the simulator's
  records, how long each shard went without a connection (at most
  ``--lease-ttl`` + 2 s), and any RESUME that took a session from a live
  connection;
- every 10 s: Redis's memory (the stream is trimmed to about ``--maxlen``,
  50 s of traffic, so it stops growing; the backlog is checked to stay
  under it), every gateway and worker process's RSS, and ``python -m
  gcluster status --json``; whether memory is flat after the warm-up;
- IDENTIFYs beyond the first 8 (every takeover should RESUME), and why;
- the exit status of every process stopped by SIGTERM (must be 0), and any
  ``Traceback`` in any log.

    python benchmarks/service_soak.py [--duration 300] [--seed 1] [--rate 50]
                                      [--claim-idle 5] [--lease-ttl 3] [--workers 3]
                                      [--redis-pause 2] [--fault-every 15] [--handle-ms 3]
                                      [--maxlen 20000] [--logs DIR]

Prints tables, writes benchmarks/results/service_soak.json and every
process's log to ``--logs`` (default benchmarks/results/service_soak-logs/).
Exits 1 if an invariant failed. Every process it started is stopped on the
way out, also on Ctrl-C, SIGTERM or a failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.subprocess
import redis
from _common import (
    RESULTS,
    ROOT,
    SERVICE_EVENTS,
    SERVICE_INTENTS,
    Child,
    Service,
    flat_verdict,
    table,
    wait,
    write_results,
)
from _redis import StreamEntry, start_redis, stream_entries
from gevent.event import Event as Flag

from gcluster._blocking import call_blocking
from gcluster.redis import StreamWorker
from gcluster.redis.lease import holder_key, lease_key
from gcluster.redis.streams import default_stream
from gcluster.scheme import ShardScheme
from gcluster.testing import GatewaySimulator, event_number

SHARDS = 8
SLICES = [f"process:{index}/2" for index in range(2)]
NAMESPACE = "soak"
GROUP = "soak"
SAMPLE_EVERY = 1.0  # seconds: holders, connections, consumers
MEMORY_EVERY = 10.0  # seconds: Redis memory, RSS, the status command
PROGRESS_EVERY = 30.0
MARGIN = 2.0  # seconds a shard may go without a connection beyond --lease-ttl
PROCESS_WARM_UP = 30.0  # seconds of a process's life before its RSS counts
GROWTH = 1.05  # last third's peak / first third's, after warm-up: still flat
GATEWAY_FAULTS = ("gateway SIGTERM", "gateway kill -9")
WORKER_FAULTS = ("worker SIGTERM", "worker kill -9")
PAUSE = "Redis pause"
SUPERSEDED = "Session resumed on another connection."


# --- the worker process ---------------------------------------------------------------


def worker_main(url: str, consumer: str, claim_idle: float, handle: float, path: str) -> int:
    """One worker: handle the group's events, appending each to `path` before its XACK."""
    import gcluster.redis.worker as worker_module

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )

    class RecordingWorker(StreamWorker):
        """Remembers each entry's ID and how it came (new, own, claimed), by its fields."""

        origin: dict[int, tuple[str, str]]

        def _remember(self, entries: list[tuple[str, Any, Any]], how: str) -> list[Any]:
            for _, message_id, fields in entries:
                self.origin[id(fields)] = (_text(message_id), how)
            return entries

        def _read_new(self, block: float) -> list[tuple[str, Any, Any]]:
            return self._remember(super()._read_new(block), "new")

        def _read_own(self, own: dict[str, Any]) -> list[tuple[str, Any, Any]]:
            return self._remember(super()._read_own(own), "own")

        def _claim(self, cursors: dict[str, Any]) -> list[tuple[str, Any, Any]]:
            return self._remember(super()._claim(cursors), "claimed")

    worker = RecordingWorker(url, GROUP, consumer, namespace=NAMESPACE, claim_idle=claim_idle)
    worker.origin = {}
    decode = worker_module.decode_event
    current: list[tuple[str, str]] = [("?", "?")]

    def decode_recorded(fields: Any) -> Any:
        # The entry about to be yielded: decode_event is called just before.
        current[0] = worker.origin.pop(id(fields), ("?", "?"))
        return decode(fields)

    worker_module.decode_event = decode_recorded  # type: ignore[assignment]
    worker.stop_on_signals(signal.SIGTERM, signal.SIGINT)
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    print(f"soak worker {consumer}: reading", file=sys.stderr, flush=True)
    for shard_id, event in worker.events():
        number = event_number(event.data) if isinstance(event.data, dict) else None
        entry_id, how = current[0]
        # One write per event, before the loop acknowledges it: a kill -9
        # cannot lose the record of an event handled.
        line = (
            f"{shard_id} {'-' if number is None else number} {entry_id} {how} {time.time():.4f}\n"
        )
        os.write(out, line.encode())
        # The handler's work: events are in hand (pending) for a while, as in a real worker.
        time.sleep(handle)
    os.close(out)
    print(f"soak worker {consumer}: stopped; {worker.stats()}", file=sys.stderr, flush=True)
    worker.close()
    return 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- the processes ----------------------------------------------------------------------


@dataclass(eq=False)
class Proc:
    """A gateway or worker process of the run and what became of it."""

    name: str
    role: str  # "gateway" or "worker"
    place: str  # the slice, or the worker's slot
    child: Child
    started: float  # wall clock
    records: Path | None = None  # a worker's handled events
    stopped_by: str | None = None  # "SIGTERM", "kill -9"; None: not by us
    ended: float | None = None
    code: int | None = None
    # (s since start, KiB, phase): a gateway process is a standby, then maybe a holder.
    rss: list[tuple[float, int, str]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.ended is None

    @property
    def pid(self) -> int:
        return self.child.pid


class Soak:
    """The processes, the faults and the samples of one run."""

    def __init__(self, options: argparse.Namespace, url: str, sim: GatewaySimulator) -> None:
        self.options = options
        self.url = url
        self.sim = sim
        self.stream = default_stream(NAMESPACE)
        self.logs = Path(options.logs)
        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.started = time.time()
        # The simulator's records are on this process's monotonic clock.
        self.clock = time.time() - time.monotonic()
        self.procs: list[Proc] = []
        self.slots = [0] * options.workers  # incarnations of each worker slot
        self.ending = False
        self.faults: list[dict[str, Any]] = []
        self.unexpected: list[dict[str, Any]] = []
        self.problems: list[str] = []  # what kept the run from doing what it should
        self.sent = [0] * SHARDS
        self.slice_shards = {
            name: list(ShardScheme.process(i, len(SLICES), SHARDS).resolve(SHARDS)[0])
            for i, name in enumerate(SLICES)
        }
        self.slice_of = {s: name for name, ids in self.slice_shards.items() for s in ids}
        self.samples: dict[str, Any] = {
            "most_live_connections": 0,
            "two_live": [],
            "holder_mismatches": [],
            "no_holder_key": dict.fromkeys(range(SHARDS), 0.0),
            "consumers": [],
            "stale_consumers": [],
            "lag_max": 0,
            "pending_max": 0,
            "redis_memory": [],
            "status_runs": 0,
            "status_failures": [],
            "status_leases_max": 0,
        }
        self.handled: dict[tuple[int, int], list[tuple[str, str, str, float]]] = {}
        self._offsets: dict[Path, int] = {}

    def now(self) -> float:
        return time.time() - self.started

    # -- processes ----------------------------------------------------------

    def start_gateway(self, slice_name: str) -> Proc:
        args = [
            "--sink", self.url, "--namespace", NAMESPACE, "--scheme", slice_name,
            "--shards", str(SHARDS), "--lease-ttl", str(self.options.lease_ttl),
            "--api-base", self.sim.api_base, "--events", SERVICE_EVENTS,
            "--intents", SERVICE_INTENTS, "--maxlen", str(self.options.maxlen),
            "--stats-interval", "30",
        ]  # fmt: skip
        child = Service(args, self.sim.token)
        index = sum(1 for p in self.procs if p.role == "gateway")
        proc = Proc(f"gw{index}-{slice_name[8]}", "gateway", slice_name, child, time.time())
        self.procs.append(proc)
        gevent.spawn(self._watch, proc)
        return proc

    def start_worker(self, slot: int) -> Proc:
        self.slots[slot] += 1
        consumer = f"w{slot}-{self.slots[slot]}"
        path = self.logs / "handled" / f"{consumer}.txt"
        argv = [
            sys.executable, os.path.abspath(__file__), "--worker", self.url, consumer,
            str(self.options.claim_idle), str(self.options.handle_ms / 1000), str(path),
        ]  # fmt: skip
        proc = Proc(consumer, "worker", str(slot), Child(argv), time.time(), records=path)
        self.procs.append(proc)
        gevent.spawn(self._watch, proc)
        return proc

    def _watch(self, proc: Proc) -> None:
        """Wait for the process to end; replace it (unless the run is ending)."""
        proc.code = proc.child.exited()
        proc.ended = time.time()
        if self.ending:
            return
        if proc.stopped_by is None:
            self.unexpected.append(
                {
                    "at": proc.ended - self.started,
                    "process": proc.name,
                    "role": proc.role,
                    "place": proc.place,
                    "code": proc.code,
                    "last_lines": proc.child.lines[-12:],
                }
            )
            print(
                f"  {self.now():4.0f} s: {proc.name} exited {proc.code} by itself: "
                f"{proc.child.lines[-1:] or ''}",
                flush=True,
            )
        if proc.role == "gateway":
            self.start_gateway(proc.place)
        else:
            self.start_worker(int(proc.place))

    def alive(self, role: str, place: str | None = None) -> list[Proc]:
        return [p for p in self.procs if p.alive and p.role == role and place in (None, p.place)]

    def holder(self, slice_name: str) -> Proc | None:
        """The process holding the slice's lease now, if it is one of ours and alive."""
        raw = call_blocking(self.client.get, lease_key(NAMESPACE, slice_name))
        if raw is None:
            return None
        pid = int(raw.decode().rsplit("-", 1)[1])
        return next((p for p in self.alive("gateway", slice_name) if p.pid == pid), None)

    def slice_ready(self, slice_name: str) -> tuple[Proc, Proc] | None:
        """(holder, standby) once the holder runs the shards and a standby waits."""
        holder = self.holder(slice_name)
        if holder is None or not any("service: shards " in x for x in holder.child.lines):
            return None
        for proc in self.alive("gateway", slice_name):
            if proc is not holder and any("waiting for it" in x for x in proc.child.lines):
                return holder, proc
        return None

    # -- traffic --------------------------------------------------------------

    def feed(self, stop: Flag) -> None:
        """`--rate` events per second to every shard, one per shard at a time."""
        started = time.monotonic()
        rate = self.options.rate
        sent = 0
        while not stop.wait(1 / rate):
            due = int(rate * (time.monotonic() - started)) - sent
            for _ in range(due):
                for shard_id in range(SHARDS):
                    self.sent[shard_id] = self.sim.send_events(shard_id, 1)[-1]
            sent += max(due, 0)

    # -- faults -----------------------------------------------------------------

    def inject(self, rng: random.Random, stop: Flag) -> None:
        kinds = [*GATEWAY_FAULTS, *WORKER_FAULTS]
        if self.options.redis_pause > 0:
            kinds.append(PAUSE)
        every = self.options.fault_every
        while not stop.wait(rng.uniform(every * 2 / 3, every * 4 / 3)):
            kind = rng.choice(kinds)
            slice_name, slot = rng.choice(SLICES), rng.randrange(self.options.workers)
            try:
                if kind in GATEWAY_FAULTS:
                    fault = self.gateway_fault(kind, slice_name)
                elif kind in WORKER_FAULTS:
                    fault = self.worker_fault(kind, slot)
                else:
                    fault = self.redis_pause()
            except RuntimeError as err:
                self.problems.append(f"{kind} at {self.now():.0f} s not injected: {err}")
                continue
            self.faults.append(fault)
            print(f"  {fault['at']:4.0f} s: {kind} on {fault['target']}", flush=True)

    def gateway_fault(self, kind: str, slice_name: str) -> dict[str, Any]:
        ready: list[tuple[Proc, Proc]] = []

        def found() -> bool:
            pair = self.slice_ready(slice_name)
            if pair is not None:
                ready.append(pair)
            return pair is not None

        wait(found, f"a holder and a standby on {slice_name}", timeout=60)
        holder, _ = ready[0]
        fault: dict[str, Any] = {
            "kind": kind,
            "target": f"{slice_name} ({holder.name})",
            "slice": slice_name,
            "victim": holder.name,
            "at": self.now(),
            "monotonic": time.monotonic(),
        }
        if kind == "gateway SIGTERM":
            holder.stopped_by = "SIGTERM"
            holder.child.process.send_signal(signal.SIGTERM)
        else:
            holder.stopped_by = "kill -9"
            holder.child.process.kill()
        return fault

    def worker_fault(self, kind: str, slot: int) -> dict[str, Any]:
        wait(lambda: bool(self.alive("worker", str(slot))), f"worker slot {slot}", timeout=60)
        victim = self.alive("worker", str(slot))[0]
        fault: dict[str, Any] = {
            "kind": kind,
            "target": victim.name,
            "victim": victim.name,
            "at": self.now(),
        }
        if kind == "worker kill -9":
            victim.stopped_by = "kill -9"
            victim.child.process.kill()
            victim.child.exited(timeout=10)
            pending = call_blocking(
                self.client.xpending_range, self.stream, GROUP, "-", "+", 10_000, victim.name
            )
            asked = time.time()
            fault["pending"] = [
                {
                    "id": _text(entry["message_id"]),
                    "delivered": asked - entry["time_since_delivered"] / 1000,
                }
                for entry in pending
            ]
        else:
            victim.stopped_by = "SIGTERM"
            victim.child.process.send_signal(signal.SIGTERM)
            victim.child.exited(timeout=30)
            summary = call_blocking(
                self.client.xpending_range, self.stream, GROUP, "-", "+", 10_000, victim.name
            )
            fault["pending_left"] = len(summary)
        return fault

    def redis_pause(self) -> dict[str, Any]:
        seconds = self.options.redis_pause
        at = self.now()
        call_blocking(self.client.execute_command, "CLIENT", "PAUSE", int(seconds * 1000), "ALL")
        return {
            "kind": PAUSE,
            "target": f"all clients, {seconds:g} s",
            "at": at,
            "seconds": seconds,
        }

    # -- samples ------------------------------------------------------------------

    def sample(self, stop: Flag) -> None:
        """Every second: connections per shard, holder keys against leases, consumers."""
        samples = self.samples
        keys = [lease_key(NAMESPACE, s) for s in SLICES]
        keys += [holder_key(NAMESPACE, shard) for shard in range(SHARDS)]
        idle = max(2 * self.options.claim_idle, 60.0)
        # A dead consumer is deleted by a claim pass once idle this long.
        stale_after = idle + self.options.claim_idle / 8 + 1.0 + 2.0
        last = time.monotonic()
        while not stop.wait(SAMPLE_EVERY):
            now = self.now()
            step = time.monotonic() - last
            last = time.monotonic()
            live = [self.sim.live_connections(shard) for shard in range(SHARDS)]
            samples["most_live_connections"] = max(samples["most_live_connections"], *live)
            for shard, count in enumerate(live):
                if count > 1:
                    samples["two_live"].append({"at": now, "shard": shard, "connections": count})
            try:
                values = call_blocking(self.client.mget, keys)
                leases = dict(zip(SLICES, values[: len(SLICES)], strict=True))
                for shard, holder in enumerate(values[len(SLICES) :]):
                    if holder is None:
                        samples["no_holder_key"][shard] += step
                    elif holder != leases[self.slice_of[shard]]:
                        samples["holder_mismatches"].append(
                            {"at": now, "shard": shard, "holder": _text(holder)}
                        )
                consumers = call_blocking(self.client.xinfo_consumers, self.stream, GROUP)
                (group,) = call_blocking(self.client.xinfo_groups, self.stream)
            except redis.RedisError as err:
                samples.setdefault("errors", []).append({"at": now, "error": str(err)})
                continue
            samples["lag_max"] = max(samples["lag_max"], group.get("lag") or 0)
            samples["pending_max"] = max(samples["pending_max"], group["pending"])
            names = [_text(c["name"]) for c in consumers]
            samples["consumers"].append((round(now, 1), len(names)))
            for proc in self.procs:
                if (
                    proc.role == "worker"
                    and proc.ended is not None
                    and time.time() - proc.ended > stale_after
                    and proc.name in names
                ):
                    samples["stale_consumers"].append({"at": now, "consumer": proc.name})

    def sample_memory(self, stop: Flag) -> None:
        """Every 10 s: Redis's memory, each process's RSS, the status command."""
        while True:
            now = self.now()
            try:
                used = call_blocking(self.client.info, "memory")["used_memory"]
                stream = call_blocking(self.client.memory_usage, self.stream, samples=0) or 0
                self.samples["redis_memory"].append((now, used, stream))
            except redis.RedisError:
                pass
            for proc in self.procs:
                if proc.alive:
                    kb = _rss_kb(proc.pid)
                    if kb is not None:
                        proc.rss.append((time.time() - proc.started, kb, _phase(proc)))
            gevent.spawn(self.status)
            if stop.wait(MEMORY_EVERY):
                return

    def status(self) -> None:
        """`python -m gcluster status --json`: it answers, and lists at most one lease a slice."""
        argv = [
            sys.executable, "-m", "gcluster", "status", "--sink", self.url,
            "--namespace", NAMESPACE, "--json",
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        result = gevent.subprocess.run(argv, capture_output=True, env=env, timeout=30, check=False)
        self.samples["status_runs"] += 1
        try:
            report = json.loads(result.stdout)
            leases = len(report["leases"])
        except (ValueError, KeyError, TypeError):
            report, leases = None, -1
        if result.returncode != 0 or report is None:
            self.samples["status_failures"].append(
                {
                    "at": self.now(),
                    "code": result.returncode,
                    "stderr": result.stderr.decode()[-300:],
                }
            )
            return
        self.samples["status_leases_max"] = max(self.samples["status_leases_max"], leases)

    def progress(self, stop: Flag) -> None:
        while not stop.wait(PROGRESS_EVERY):
            self.read_handled()
            consumers = self.samples["consumers"][-1][1] if self.samples["consumers"] else "?"
            print(
                f"  {self.now():4.0f} s: {sum(self.sent):,} events sent, {len(self.handled):,} "
                f"handled, {len(self.faults)} faults, {consumers} consumers, "
                f"{len(self.sim.records.identifies)} IDENTIFYs",
                flush=True,
            )

    # -- what the workers handled ----------------------------------------------------

    def read_handled(self) -> None:
        """Read what the workers appended to their files since the last call."""
        for proc in self.procs:
            path = proc.records
            if path is None or not path.exists():
                continue
            with path.open("rb") as records:
                records.seek(self._offsets.get(path, 0))
                data = records.read()
            end = data.rfind(b"\n") + 1  # a line being written waits for the next call
            self._offsets[path] = self._offsets.get(path, 0) + end
            for line in data[:end].decode().splitlines():
                shard, number, entry_id, how, at = line.split()
                if number == "-":
                    continue
                key = (int(shard), int(number))
                self.handled.setdefault(key, []).append((entry_id, how, proc.name, float(at)))

    def missing(self) -> int:
        return sum(
            1
            for shard in range(SHARDS)
            for number in range(1, self.sent[shard] + 1)
            if (shard, number) not in self.handled
        )


def _phase(proc: Proc) -> str:
    if proc.role == "worker":
        return "worker"
    started = any("service: shards " in line for line in proc.child.lines)
    return "holder" if started else "standby"


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# --- the run ------------------------------------------------------------------------------


def run(options: argparse.Namespace, soak: Soak) -> dict[str, Any]:
    """Start everything, soak for `--duration`, drain, stop everything; the raw findings."""
    sim = soak.sim
    print(
        f"service soak: {SHARDS} shards x {options.rate:g} events/s for {options.duration:g} s, "
        f"2 slices (holder + standby each), {options.workers} workers, lease ttl "
        f"{options.lease_ttl:g} s, claim_idle {options.claim_idle:g} s, seed {options.seed}",
        flush=True,
    )
    for slice_name in SLICES:
        soak.start_gateway(slice_name).child.wait_for("service: shards ")
    wait(lambda: len(sim.records.identifies) >= SHARDS, "the first IDENTIFYs")
    for slice_name in SLICES:
        soak.start_gateway(slice_name).child.wait_for("waiting for it")
    for slot in range(options.workers):
        soak.start_worker(slot).child.wait_for("reading")
    rng = random.Random(options.seed)
    stop = Flag()
    helpers = [
        gevent.spawn(soak.feed, stop),
        gevent.spawn(soak.inject, rng, stop),
        gevent.spawn(soak.sample, stop),
        gevent.spawn(soak.sample_memory, stop),
        gevent.spawn(soak.progress, stop),
    ]
    soak.started = time.time()
    gevent.joinall(helpers, timeout=options.duration, raise_error=True)
    stop.set()
    gevent.joinall(helpers, raise_error=True)
    traffic_seconds = soak.now()
    # Every slice held and every worker slot filled again, then every event handled.
    for slice_name in SLICES:
        try:
            wait(lambda: soak.slice_ready(slice_name) is not None, "holder", timeout=60)  # noqa: B023
        except RuntimeError:
            soak.problems.append(f"{slice_name}: no holder and standby 60 s after the traffic")
    drain_started = time.monotonic()
    drain_limit = 2 * options.claim_idle + 60

    def drained() -> bool:
        soak.read_handled()
        return soak.missing() == 0

    try:
        wait(drained, "every event handled", timeout=drain_limit)
    except RuntimeError:
        soak.problems.append(f"not every event handled within {drain_limit:g} s of the end")
    drain_seconds = time.monotonic() - drain_started
    # Stop: the standbys first (a holder's SIGTERM would hand them the slice), the
    # holders, then the workers. Each must exit 0.
    soak.ending = True
    order = [p for p in soak.alive("gateway") if soak.holder(p.place) is not p]
    order += soak.alive("gateway")
    order += soak.alive("worker")
    for proc in dict.fromkeys(order):
        if proc.alive:
            proc.stopped_by = "SIGTERM"
            proc.child.process.send_signal(signal.SIGTERM)
            if proc.child.exited(timeout=60) is None:
                proc.child.kill()
            wait(lambda: not proc.alive, f"{proc.name} to end", timeout=10)  # noqa: B023
    soak.read_handled()
    consumers_after = len(call_blocking(soak.client.xinfo_consumers, soak.stream, GROUP))
    entries = call_blocking(stream_entries, soak.client, soak.stream)
    return {
        "traffic_seconds": traffic_seconds,
        "drain_seconds": drain_seconds,
        "entries": entries,
        "consumers_after": consumers_after,
    }


# --- the figures ---------------------------------------------------------------------------


def connection_windows(soak: Soak) -> dict[str, Any]:
    """From the simulator's records: each shard's time without a connection, and overlaps."""
    records = soak.sim.records
    events: list[tuple[float, int, int, int]] = []  # (time, order, connection, shard or -1)
    shard_of: dict[int, int] = {}
    for identify in records.identifies:
        shard_of[identify.connection_id] = identify.shard_id
        events.append((identify.time, 1, identify.connection_id, identify.shard_id))
    for resume in records.resumes:
        if resume.ok and resume.shard_id is not None:
            shard_of[resume.connection_id] = resume.shard_id
            events.append((resume.time, 1, resume.connection_id, resume.shard_id))
    for close in records.closes:
        events.append((close.time, 0, close.connection_id, -1))
    events.sort()
    live: dict[int, set[int]] = {shard: set() for shard in range(SHARDS)}
    down_since: dict[int, float | None] = dict.fromkeys(range(SHARDS))
    windows: list[dict[str, Any]] = []
    most = 0
    for at, opened, connection, shard in events:
        if opened:
            if down_since[shard] is not None:
                windows.append(
                    {
                        "shard": shard,
                        "at": soak.clock + down_since[shard] - soak.started,  # type: ignore[operator]
                        "seconds": at - down_since[shard],  # type: ignore[operator]
                    }
                )
                down_since[shard] = None
            live[shard].add(connection)
            most = max(most, len(live[shard]))
        elif connection in shard_of:
            shard = shard_of[connection]
            live[shard].discard(connection)
            if not live[shard]:
                down_since[shard] = at
    superseded = [c for c in records.closes if c.reason == SUPERSEDED]
    return {
        "windows": windows,
        "most_at_once": most,
        "superseded": [
            {"at": soak.clock + c.time - soak.started, "shard": c.shard_id} for c in superseded
        ],
        "still_down": [s for s, since in down_since.items() if since is not None],
    }


def every_entry(soak: Soak, in_stream: list[StreamEntry]) -> list[StreamEntry]:
    """The stream's entries over the whole run: what it holds at the end (it is trimmed
    to about ``--maxlen``) and every entry a worker handled, by ID."""
    found = {entry.id: entry for entry in in_stream}
    for (shard, number), handlings in soak.handled.items():
        for entry_id, _, _, _ in handlings:
            if entry_id not in found and "-" in entry_id:
                found[entry_id] = StreamEntry(_entry_order(entry_id)[0], entry_id, shard, number)
    return sorted(found.values(), key=lambda entry: _entry_order(entry.id))


def lease_given_up(soak: Soak, exit_: dict[str, Any]) -> bool:
    """A holder that gave its lease up during a Redis pause: what the lease is for.

    It renews every ttl/3 and gives up ttl x 0.8 after its last renewal, so a
    pause longer than about ttl x 0.47 may end its hold; the standby resumes.
    """
    ttl = soak.options.lease_ttl
    return (
        exit_["role"] == "gateway"
        and any("lease lost received" in line for line in exit_["last_lines"])
        and any(
            f["kind"] == PAUSE and f["at"] <= exit_["at"] <= f["at"] + f["seconds"] + ttl
            for f in soak.faults
        )
    )


def publish_gaps(soak: Soak, entries: list[StreamEntry]) -> None:
    """Each fault's publish gap (and takeover time), in its dict."""
    ms_by_slice: dict[str, list[int]] = {name: [] for name in SLICES}
    every: list[int] = []
    for entry in entries:
        ms_by_slice[soak.slice_of[entry.shard_id]].append(entry.ms)
        every.append(entry.ms)
    for values in [*ms_by_slice.values(), every]:
        values.sort()
    records = soak.sim.records
    starts = sorted(
        [(r.time, r.shard_id) for r in records.resumes if r.ok and r.shard_id is not None]
        + [(r.time, r.shard_id) for r in records.identifies]
    )
    gateway_events = [f for f in soak.faults if f["kind"] in GATEWAY_FAULTS]
    gateway_events += [
        {**u, "kind": "exited by itself", "slice": u["place"], "monotonic": None}
        for u in soak.unexpected
        if u["role"] == "gateway"
    ]
    for fault in gateway_events:
        at_monotonic = fault["monotonic"]
        if at_monotonic is None:
            at_monotonic = soak.started + fault["at"] - soak.clock
        shards = set(soak.slice_shards[fault["slice"]])
        split = next((t for t, s in starts if t >= at_monotonic and s in shards), None)
        if split is None:
            continue
        split_ms = (soak.clock + split) * 1000
        values = ms_by_slice[fault["slice"]]
        before = [ms for ms in values if ms < split_ms]
        after = [ms for ms in values if ms >= split_ms]
        if before and after:
            fault["gap_ms"] = after[0] - before[-1]
            fault["takeover_s"] = split - at_monotonic
    for fault in soak.faults:
        if fault["kind"] != PAUSE:
            continue
        low = (soak.started + fault["at"] - 1) * 1000
        high = (soak.started + fault["at"] + fault["seconds"] + 10) * 1000
        window = [ms for ms in every if low <= ms <= high]
        gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
        fault["gap_ms"] = max(gaps, default=None)


def claim_delays(soak: Soak) -> None:
    """For each killed worker: how long after claim_idle another worker handled its events."""
    by_entry: dict[str, list[tuple[str, str, float]]] = {}
    for handlings in soak.handled.values():
        for entry_id, how, consumer, at in handlings:
            by_entry.setdefault(entry_id, []).append((how, consumer, at))
    for fault in soak.faults:
        if fault["kind"] != "worker kill -9":
            continue
        late = []
        unclaimed = 0
        for pending in fault["pending"]:
            claims = [
                at
                for how, consumer, at in by_entry.get(pending["id"], [])
                if how == "claimed" and consumer != fault["victim"]
            ]
            if claims:
                late.append(min(claims) - pending["delivered"] - soak.options.claim_idle)
            else:
                unclaimed += 1
        fault["held"] = len(fault["pending"])
        fault["claim_late_s"] = max(late) if late else None
        fault["unclaimed"] = unclaimed


def duplicates(soak: Soak, entries: list[StreamEntry]) -> dict[str, Any]:
    """Events handled more than once: published twice, or delivered twice; and by which fault."""
    in_stream: dict[tuple[int, int], set[str]] = {}
    ms_of: dict[str, int] = {}
    for entry in entries:
        if entry.number is not None:
            in_stream.setdefault((entry.shard_id, entry.number), set()).add(entry.id)
            ms_of[entry.id] = entry.ms
    causes: Counter[str] = Counter()
    published_twice = delivered_twice = 0
    for key, handlings in soak.handled.items():
        if len(handlings) < 2:
            continue
        ids = sorted(
            {h[0] for h in handlings if "-" in h[0]} | in_stream.get(key, set()), key=_entry_order
        )
        for extra in ids[1:]:
            published_twice += 1
            causes[_gateway_cause(soak, key[0], _entry_order(extra)[0])] += 1
        for entry_id, count in Counter(h[0] for h in handlings).items():
            if count > 1:
                delivered_twice += count - 1
                first = min((h for h in handlings if h[0] == entry_id), key=lambda h: h[3])
                causes[_worker_cause(soak, first[2])] += count - 1
    twice_in_stream = sum(len(ids) - 1 for ids in in_stream.values())
    return {
        "events_handled_more_than_once": sum(1 for h in soak.handled.values() if len(h) > 1),
        "extra_handlings": sum(len(h) - 1 for h in soak.handled.values()),
        "published_twice": published_twice,
        "published_twice_in_stream": twice_in_stream,
        "delivered_twice": delivered_twice,
        "causes": dict(causes.most_common()),
    }


def _entry_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _gateway_cause(soak: Soak, shard: int, ms: int) -> str:
    """The last fault on the shard's slice (or Redis pause) before the entry, by name."""
    at = ms / 1000 - soak.started
    slice_name = soak.slice_of[shard]
    candidates = [
        (f["at"], f"{f['kind']} at {f['at']:.0f} s")
        for f in soak.faults
        if f["at"] <= at and (f.get("slice") == slice_name or f["kind"] == PAUSE)
    ]
    candidates += [
        (u["at"], f"{u['process']} exited by itself at {u['at']:.0f} s")
        for u in soak.unexpected
        if u["at"] <= at and u.get("place") == slice_name
    ]
    return max(candidates)[1] if candidates else "published twice, no fault before it"


def _worker_cause(soak: Soak, consumer: str) -> str:
    for fault in soak.faults:
        if fault["kind"] in WORKER_FAULTS and fault["victim"] == consumer:
            return f"{fault['kind']} at {fault['at']:.0f} s ({consumer})"
    return f"delivered twice, no fault on {consumer}"


def identify_reasons(soak: Soak) -> list[dict[str, Any]]:
    """The IDENTIFYs after each shard's first, and what preceded each."""
    records = soak.sim.records
    seen: set[int] = set()
    extra = []
    for identify in records.identifies:
        if identify.shard_id not in seen:
            seen.add(identify.shard_id)
            continue
        at = soak.clock + identify.time - soak.started
        refused = [
            r
            for r in records.resumes
            if r.shard_id == identify.shard_id and not r.ok and identify.time - 10 <= r.time
        ]
        before = [f for f in soak.faults if f["at"] <= at]
        extra.append(
            {
                "shard": identify.shard_id,
                "at": at,
                "why": "its RESUME was refused (op 9 / 4007)"
                if refused
                else "no stored session to RESUME",
                "after_fault": f"{before[-1]['kind']} at {before[-1]['at']:.0f} s"
                if before
                else None,
            }
        )
    return extra


def memory(soak: Soak, warm_up: float) -> dict[str, Any]:
    redis_series = soak.samples["redis_memory"]
    # The stream grows until it holds about --maxlen entries: Redis warms up that long.
    fill = soak.options.maxlen / (soak.options.rate * SHARDS) + MEMORY_EVERY
    redis_verdict = flat_verdict([(t, used) for t, used, _ in redis_series], max(warm_up, fill))
    processes = []
    for proc in soak.procs:
        # Judged per phase: a standby that takes over starts its shards and grows
        # in one step, which is not a leak.
        for phase in dict.fromkeys(p for _, _, p in proc.rss):
            series = [(t, kb) for t, kb, p in proc.rss if p == phase]
            since = series[0][0]
            verdict = flat_verdict([(t - since, kb) for t, kb in series], PROCESS_WARM_UP, GROWTH)
            processes.append(
                {
                    "process": f"{proc.name} {phase}" if proc.role == "gateway" else proc.name,
                    "role": proc.role,
                    "lived_s": series[-1][0] - since,
                    "samples": len(series),
                    "rss_max_kb": max(kb for _, kb in series),
                    "verdict": verdict,
                }
            )
    return {
        "redis": {
            "samples": [
                {"t": round(t, 1), "used": used, "stream": stream}
                for t, used, stream in redis_series
            ],
            "used_memory": redis_verdict,
        },
        "processes": processes,
    }


def summarize(options: argparse.Namespace, soak: Soak, raw: dict[str, Any]) -> dict[str, Any]:
    entries = every_entry(soak, raw["entries"])
    publish_gaps(soak, entries)
    claim_delays(soak)
    windows = connection_windows(soak)
    sent = sum(soak.sent)
    lost = soak.missing()
    dups = duplicates(soak, entries)
    identifies = identify_reasons(soak)
    warm_up = options.warm_up
    mem = memory(soak, warm_up)
    sigterm = [p for p in soak.procs if p.stopped_by == "SIGTERM"]
    bad_exits = [
        {"process": p.name, "code": p.code, "last_lines": p.child.lines[-5:]}
        for p in sigterm
        if p.code != 0
    ]
    tracebacks = {
        p.name: sum(1 for line in p.child.lines if "Traceback" in line)
        for p in soak.procs
        if any("Traceback" in line for line in p.child.lines)
    }
    for exit_ in soak.unexpected:
        exit_["lease_given_up_in_pause"] = lease_given_up(soak, exit_)
    unexplained = [u for u in soak.unexpected if not u["lease_given_up_in_pause"]]
    longest_down = max((w["seconds"] for w in windows["windows"]), default=0.0)
    down_limit = options.lease_ttl + MARGIN
    consumers = [count for _, count in soak.samples["consumers"]]
    worker_faults = sum(1 for f in soak.faults if f["kind"] in WORKER_FAULTS)
    growing = [p["process"] for p in mem["processes"] if p["verdict"].get("flat") is False]
    invariants = {
        "events lost": (lost, 0, lost == 0),
        "two connections of one shard at once (sampled)": (
            len(soak.samples["two_live"]), 0, not soak.samples["two_live"]
        ),
        "two connections of one shard at once (records)": (
            windows["most_at_once"], 1, windows["most_at_once"] <= 1
        ),
        "RESUMEs that took a live connection's session": (
            len(windows["superseded"]), 0, not windows["superseded"]
        ),
        "holder key naming another than its slice's lease holder": (
            len(soak.samples["holder_mismatches"]), 0, not soak.samples["holder_mismatches"]
        ),
        "longest time a shard had no connection (s)": (
            longest_down, down_limit, longest_down <= down_limit
        ),
        "dead consumers left in the group past dead_consumer_idle": (
            len(soak.samples["stale_consumers"]), 0, not soak.samples["stale_consumers"]
        ),
        "consumers in the group at most": (
            max(consumers, default=0),
            options.workers + worker_faults,
            max(consumers, default=0) <= options.workers + worker_faults,
        ),
        "problems running the soak": (len(soak.problems), 0, not soak.problems),
        "IDENTIFYs beyond the first 8": (len(identifies), 0, not identifies),
        "processes stopped by SIGTERM exiting non-zero": (len(bad_exits), 0, not bad_exits),
        "processes exiting by themselves (but a lease given up in a Redis pause)": (
            len(unexplained), 0, not unexplained
        ),
        "stream backlog (lag + pending) at most, against --maxlen": (
            soak.samples["lag_max"] + soak.samples["pending_max"],
            options.maxlen,
            soak.samples["lag_max"] + soak.samples["pending_max"] < options.maxlen,
        ),
        "logs with a Traceback": (len(tracebacks), 0, not tracebacks),
        "process phases whose RSS grew after warm-up": (len(growing), 0, not growing),
        "Redis used_memory flat after warm-up": (
            mem["redis"]["used_memory"].get("flat"),
            True,
            mem["redis"]["used_memory"].get("flat") is not False,
        ),
        "status --json failures": (
            len(soak.samples["status_failures"]), 0, not soak.samples["status_failures"]
        ),
    }  # fmt: skip
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for fault in soak.faults:
        by_kind.setdefault(fault["kind"], []).append(fault)
    kinds = {}
    for kind, faults in sorted(by_kind.items()):
        gaps = [f["gap_ms"] for f in faults if f.get("gap_ms") is not None]
        late = [f["claim_late_s"] for f in faults if f.get("claim_late_s") is not None]
        exits = [
            p.code for p in soak.procs if p.name in {f["victim"] for f in faults if "victim" in f}
        ]
        kinds[kind] = {
            "count": len(faults),
            "gap_ms_p50": statistics.median(gaps) if gaps else None,
            "gap_ms_max": max(gaps, default=None),
            "claim_late_s_p50": statistics.median(late) if late else None,
            "claim_late_s_max": max(late, default=None),
            "duplicates": sum(n for cause, n in dups["causes"].items() if cause.startswith(kind)),
            "exit_codes": dict(Counter(str(c) for c in exits)),
        }
    return {
        "settings": {k: v for k, v in vars(options).items() if k != "logs"},
        "traffic_seconds": raw["traffic_seconds"],
        "drain_seconds": raw["drain_seconds"],
        "events": {
            "sent": sent,
            "stream_entries": len(entries),
            "handled_distinct": len(soak.handled),
            "lost": lost,
            **dups,
        },
        "fault_kinds": kinds,
        "faults": [
            {k: v for k, v in f.items() if k not in ("pending", "monotonic")} for f in soak.faults
        ],
        "unexpected_exits": soak.unexpected,
        "invariants": {
            name: {"value": value, "limit": limit, "ok": ok}
            for name, (value, limit, ok) in invariants.items()
        },
        "connections": {
            "longest_down_s": longest_down,
            "windows": windows["windows"],
            "superseded": windows["superseded"],
            "no_holder_key_s": soak.samples["no_holder_key"],
        },
        "consumers": {
            "max": max(consumers, default=0),
            "after_the_run": raw["consumers_after"],
            "samples": soak.samples["consumers"],
            "stale": soak.samples["stale_consumers"],
        },
        "group": {"lag_max": soak.samples["lag_max"], "pending_max": soak.samples["pending_max"]},
        "identifies": {"total": len(soak.sim.records.identifies), "beyond_first": identifies},
        "status_command": {
            "runs": soak.samples["status_runs"],
            "failures": soak.samples["status_failures"],
            "leases_max": soak.samples["status_leases_max"],
        },
        "memory": mem,
        "exits": [
            {"process": p.name, "stopped_by": p.stopped_by, "code": p.code} for p in soak.procs
        ],
        "bad_exits": bad_exits,
        "problems": soak.problems,
        "tracebacks": tracebacks,
        "ok": all(ok for _, _, ok in invariants.values()),
    }


def print_report(report: dict[str, Any]) -> None:
    events = report["events"]
    print()
    print(
        table(
            ["events", "count"],
            [
                ("sent by the simulator", events["sent"]),
                ("stream entries (whole run)", events["stream_entries"]),
                ("handled (distinct)", events["handled_distinct"]),
                ("lost", events["lost"]),
                ("handled more than once", events["events_handled_more_than_once"]),
                ("  extra handlings", events["extra_handlings"]),
                ("  of which published twice", events["published_twice"]),
                ("  of which delivered twice", events["delivered_twice"]),
            ],
        )
    )
    if events["causes"]:
        print("\nhandled more than once, by cause:")
        for cause, count in events["causes"].items():
            print(f"  {count:6,}  {cause}")
    print()
    print(
        table(
            [
                "fault",
                "count",
                "gap p50 ms",
                "gap max ms",
                "claim late p50 s",
                "max s",
                "dups",
                "exit codes",
            ],
            [
                (
                    kind,
                    k["count"],
                    k["gap_ms_p50"],
                    k["gap_ms_max"],
                    k["claim_late_s_p50"],
                    k["claim_late_s_max"],
                    k["duplicates"],
                    ", ".join(f"{c}: {n}" for c, n in k["exit_codes"].items()) or "-",
                )
                for kind, k in report["fault_kinds"].items()
            ],
        )  # fmt: skip
    )
    print()
    print(
        table(
            ["invariant", "value", "limit", "ok"],
            [
                (name, i["value"], i["limit"], "ok" if i["ok"] else "FAILED")
                for name, i in report["invariants"].items()
            ],
        )
    )
    redis_verdict = report["memory"]["redis"]["used_memory"]
    rows = []
    if redis_verdict.get("flat") is not None:
        rows.append(
            (
                "Redis used_memory",
                "-",
                redis_verdict["first_third_max"] / 1024**2,
                redis_verdict["last_third_max"] / 1024**2,
                redis_verdict["growth"],
                redis_verdict["flat"],
            )
        )
    for proc in report["memory"]["processes"]:
        verdict = proc["verdict"]
        if verdict.get("flat") is None:
            continue
        rows.append(
            (
                proc["process"],
                proc["lived_s"],
                verdict["first_third_max"] / 1024,
                verdict["last_third_max"] / 1024,
                verdict["growth"],
                verdict["flat"],
            )
        )
    short = sum(1 for p in report["memory"]["processes"] if p["verdict"].get("flat") is None)
    print()
    print(table(["memory (MiB)", "sampled s", "first third", "last third", "growth", "flat"], rows))
    print(
        f"({short} process phases (standby, holder) too short to tell: under "
        f"{PROCESS_WARM_UP:g} s + 6 samples of {MEMORY_EVERY:g} s)"
    )
    print(
        f"\nIDENTIFYs: {report['identifies']['total']} ({SHARDS} first); consumers at most "
        f"{report['consumers']['max']}, {report['consumers']['after_the_run']} after the run; "
        f"group lag at most {report['group']['lag_max']}, pending at most "
        f"{report['group']['pending_max']}; status --json: {report['status_command']['runs']} "
        f"runs, {len(report['status_command']['failures'])} failed, at most "
        f"{report['status_command']['leases_max']} leases listed"
    )
    for extra in report["identifies"]["beyond_first"]:
        print(
            f"  IDENTIFY shard {extra['shard']} at {extra['at']:.1f} s: {extra['why']} "
            f"(after {extra['after_fault']})"
        )
    for exit_ in report["unexpected_exits"]:
        print(
            f"  {exit_['process']} exited {exit_['code']} by itself at {exit_['at']:.1f} s", end=""
        )
        if exit_["lease_given_up_in_pause"]:
            print(": its lease not renewed during a Redis pause; it gave the shards up")
            continue
        print(":")
        for line in exit_["last_lines"]:
            print(f"      {line}")
    for bad in report["bad_exits"]:
        print(f"  {bad['process']} exited {bad['code']} after SIGTERM")
    for problem in report["problems"]:
        print(f"  problem: {problem}")
    for name, count in report["tracebacks"].items():
        print(f"  {name}: {count} Traceback(s) in its log")
    print(
        f"\n{report['traffic_seconds']:.0f} s of traffic, drained in "
        f"{report['drain_seconds']:.1f} s: {'every invariant held' if report['ok'] else 'FAILED'}"
    )


def write_logs(soak: Soak) -> None:
    for proc in soak.procs:
        path = soak.logs / f"{proc.name}.log"
        path.write_text("\n".join(proc.child.lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s per shard")
    parser.add_argument("--claim-idle", type=float, default=5.0, help="the workers' claim_idle")
    parser.add_argument("--lease-ttl", type=float, default=3.0, help="the gateways' --lease-ttl")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--redis-pause", type=float, default=2.0, help="seconds of CLIENT PAUSE; 0: no pauses"
    )
    parser.add_argument(
        "--fault-every", type=float, default=15.0, help="seconds between faults on average"
    )
    parser.add_argument(
        "--handle-ms", type=float, default=3.0, help="milliseconds a worker spends on an event"
    )
    parser.add_argument(
        "--maxlen",
        type=int,
        default=20_000,
        help="the gateways' --maxlen (50 s of the default traffic: the stream stops growing)",
    )
    parser.add_argument(
        "--warm-up", type=float, default=None, help="seconds (default: a fifth, at most 60)"
    )
    parser.add_argument("--logs", default=str(RESULTS / "service_soak-logs"), metavar="DIR")
    options = parser.parse_args(argv)
    if options.warm_up is None:
        options.warm_up = min(60.0, options.duration / 5)
    logs = Path(options.logs)
    shutil.rmtree(logs, ignore_errors=True)
    (logs / "handled").mkdir(parents=True)
    # SIGTERM ends the run as Ctrl-C does: through the finally below.
    main_greenlet = gevent.getcurrent()
    gevent.signal_handler(signal.SIGTERM, gevent.kill, main_greenlet, KeyboardInterrupt)
    server = start_redis()
    sim = GatewaySimulator(shards=SHARDS, max_concurrency=SHARDS).start()
    soak = Soak(options, server.url, sim)
    try:
        raw = run(options, soak)
        report = summarize(options, soak, raw)
    finally:
        soak.ending = True
        for proc in soak.procs:
            proc.child.kill()
        write_logs(soak)
        sim.stop()
        server.stop()
    print_report(report)
    path = write_results("service_soak", report)
    print(f"written to {path}; logs in {logs}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url_, consumer_, claim_idle_, handle_, path_ = sys.argv[2:7]
        sys.exit(worker_main(url_, consumer_, float(claim_idle_), float(handle_), path_))
    sys.exit(main())
