"""Minutes of steady traffic under resumable faults: events lost, time disconnected, memory.

The simulator (its own process, on the second core) sends every shard
numbered dispatches at a steady rate (``send_events``, 100/s per shard by
default, in batches every 0.1 s) while a fault hits a random shard about
every 2 s: op 7 RECONNECT, op 9 INVALID_SESSION ``d = true``, a close with
1001 or 4000, or a dropped TCP connection. Each of them leaves the session
resumable, so every event must arrive exactly once and in order, and a shard
has no reason to stay away for long. The shards' own SHARD_DISCONNECTED and
SHARD_CONNECTED events give how long each one was away every time (its
reconnect delay, from the disconnect to READY or RESUMED, filed under the
fault that caused it) and in all. The client's RSS is sampled throughout; it
counts as flat when, after the warm-up, the last third's peak is within 5%
of the first third's. RSS keeps the high-water mark of the largest backlog,
so a long outage, whose RESUME replays thousands of events into the queue at
once, raises it in a step; each sample's peak backlog (in the JSON) tells
such a step from a leak, which keeps growing. When the time is up, faults
and traffic stop and the shards get up to 120 s (more than the 60 s backoff
cap) to come back and deliver the rest before a missing event counts as lost.

    python benchmarks/soak.py [--duration 300] [--shards 8] [--rate 100] [--fault-every 2]
                              [--seed 1] [--quick]

Prints tables and writes benchmarks/results/soak.json. Exits 1 if an event
was lost, duplicated or out of order.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from _common import (
    cpu_seconds,
    flat_verdict,
    make_cluster,
    percentile,
    pin_client,
    raise_file_limit,
    rss_kb,
    start_simulator,
    table,
    write_results,
)
from gevent.event import Event as Flag

from gcluster import Cluster, EventType
from gcluster.testing import (
    CloseConnection,
    DropConnection,
    Fault,
    InvalidateSession,
    Reconnect,
    SimulatorProcess,
    event_number,
)

TARGET_LONGEST_DISCONNECT = 5.0  # seconds
TARGET_RSS_GROWTH = 1.05  # last third's peak / first third's, after warm-up
DRAIN_TIMEOUT = 120.0  # seconds; beyond the 60 s backoff cap
FEED_TICK = 0.1  # seconds between two batches of events
PROGRESS_EVERY = 30.0  # seconds between two progress lines
_CLOSE_REASON = "soak"

# What is injected, by the name a disconnect it causes is filed under.
FAULTS: dict[str, Callable[[], Fault]] = {
    "op 7 RECONNECT": Reconnect,
    "op 9 resumable": lambda: InvalidateSession(resumable=True),
    "close 1001": lambda: CloseConnection(code=1001, reason=_CLOSE_REASON),
    "close 4000": lambda: CloseConnection(code=4000, reason=_CLOSE_REASON),
    "dropped": DropConnection,
}


class ShardTally:
    """One shard's numbered events and outages, in memory that does not grow with the run.

    Numbers are checked against the highest one seen so far; only the gaps
    (numbers skipped, maybe to arrive later) are kept, so the soak measures
    the client's memory, not its own list of a quarter million numbers.
    """

    def __init__(self, shard_id: int, started: float) -> None:
        self.shard_id = shard_id
        self.started = started
        self.sent = 0  # the last number the simulator gave
        self.received = 0
        self.highest = 0
        self.missing: set[int] = set()
        self.duplicated = 0
        self.out_of_order = 0
        # The fault just injected, to file the disconnect it causes under.
        self.pending: str | None = None
        self.down_since: float | None = None
        self.received_when_down = 0
        self.down_cause = ""
        self.down_detail: dict[str, Any] = {}
        self.disconnects_while_down = 0
        self.outages: list[dict[str, Any]] = []

    def number(self, n: int) -> None:
        self.received += 1
        if n == self.highest + 1:
            self.highest = n
        elif n > self.highest:
            self.missing.update(range(self.highest + 1, n))
            self.highest = n
        elif n in self.missing:
            self.missing.discard(n)
            self.out_of_order += 1
        else:
            self.duplicated += 1

    def disconnected(self, now: float, data: dict[str, Any]) -> None:
        cause, self.pending = self.pending, None
        if self.down_since is not None:
            # Hit again before it was back (a fault on the resuming connection,
            # or a failed connect): still the same outage.
            self.disconnects_while_down += 1
            return
        code, reason = data.get("code"), data.get("reason")
        self.down_since = now
        self.received_when_down = self.received
        self.down_cause = cause or f"other: {code} {reason}"
        self.down_detail = {"code": code, "reason": reason}

    def connected(self, now: float, data: dict[str, Any]) -> None:
        if self.down_since is None:
            return  # the first READY
        self.outages.append(
            {
                "at": round(self.down_since - self.started, 3),
                "cause": self.down_cause,
                "seconds": now - self.down_since,
                "resumed": bool(data.get("resumed")),
                # RESUME's replay comes before RESUMED: what the shard missed while away.
                "replayed": self.received - self.received_when_down,
                **self.down_detail,
            }
        )
        self.down_since = None

    @property
    def complete(self) -> bool:
        return self.highest >= self.sent and not self.missing and self.down_since is None

    @property
    def lost(self) -> int:
        return len(self.missing) + max(0, self.sent - self.highest)

    def close_open_outage(self, now: float) -> None:
        """Count an outage still going on at the end, up to ``now``."""
        if self.down_since is not None:
            self.connected(now, {"resumed": None})
            self.outages[-1]["still_down"] = True


class Backlog:
    """The most events waiting unread in the cluster's queue since the last `take`."""

    def __init__(self) -> None:
        self.peak = 0

    def take(self) -> int:
        peak, self.peak = self.peak, 0
        return peak


def consume(cluster: Cluster, tallies: dict[int, ShardTally], backlog: Backlog) -> None:
    disconnected, connected = EventType.SHARD_DISCONNECTED, EventType.SHARD_CONNECTED
    for count, (shard_id, event) in enumerate(cluster.events()):
        if not count & 63:
            # Often enough to see a replay's burst, too rarely to cost anything.
            backlog.peak = max(backlog.peak, cluster.backlog)
        if event.sequence is not None:
            n = event_number(event.data)
            if n is not None:
                tallies[shard_id].number(n)
        elif event.kind is disconnected:
            tallies[shard_id].disconnected(time.monotonic(), event.data or {})
        elif event.kind is connected:
            tallies[shard_id].connected(time.monotonic(), event.data or {})


def feed(sim: SimulatorProcess, tallies: list[ShardTally], rate: float, stop: Flag) -> None:
    """``rate`` events per second to every shard, in a batch every FEED_TICK."""
    started = time.monotonic()
    sent = 0
    tick = 0
    while True:
        tick += 1
        if stop.wait(max(0.0, started + tick * FEED_TICK - time.monotonic())):
            return
        due = int(rate * (time.monotonic() - started)) - sent
        if due <= 0:
            continue
        for tally in tallies:
            tally.sent = sim.send_events(tally.shard_id, due)[-1]
        sent += due


def inject(
    sim: SimulatorProcess,
    tallies: list[ShardTally],
    rng: random.Random,
    every: float,
    stop: Flag,
    injected: Counter[str],
    struck: Counter[str],
) -> None:
    """A fault on a random shard every ``every`` seconds on average (0.5x to 1.5x apart)."""
    names = sorted(FAULTS)
    while not stop.wait(rng.uniform(0.5, 1.5) * every):
        tally = rng.choice(tallies)
        name = rng.choice(names)
        # Before the request: the shard may see the fault before its answer is back.
        tally.pending = name
        reached = sim.apply_fault(tally.shard_id, FAULTS[name]())
        injected[name] += 1
        if reached:
            struck[name] += 1
        elif tally.pending == name:
            tally.pending = None  # it was between connections: nothing happened


def sample_rss(
    samples: list[tuple[float, int, int]],
    started: float,
    every: float,
    backlog: Backlog,
    stop: Flag,
) -> None:
    """RSS every ``every`` s, with the peak backlog since the sample before."""
    while True:
        samples.append((time.monotonic() - started, rss_kb(), backlog.take()))
        if stop.wait(every):
            return


def progress(tallies: list[ShardTally], started: float, stop: Flag) -> None:
    while not stop.wait(PROGRESS_EVERY):
        down = [t.shard_id for t in tallies if t.down_since is not None]
        outages = sum(len(t.outages) for t in tallies)
        print(
            f"  {time.monotonic() - started:4.0f} s: {sum(t.received for t in tallies):,} "
            f"events, {outages} reconnects, down now: {down or 'none'}, "
            f"RSS {rss_kb() / 1024:.1f} MiB",
            flush=True,
        )


def delays(values: Sequence[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values, default=float("nan")),
        "total": sum(values),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0, help="events/s per shard")
    parser.add_argument(
        "--fault-every", type=float, default=2.0, help="seconds between faults, on average"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rss-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warm-up", type=float, default=None, help="seconds (default: a fifth, at most 60)"
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, default=41.25, help="the simulator's (Discord's)"
    )
    parser.add_argument("--quick", action="store_true", help="60 s, RSS every 2 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rss_every = 60.0, 2.0
    if args.warm_up is None:
        args.warm_up = min(60.0, args.duration / 5)
    pin_client()
    raise_file_limit()
    rng = random.Random(args.seed)
    shard_ids = list(range(args.shards))
    injected: Counter[str] = Counter()
    struck: Counter[str] = Counter()
    samples: list[tuple[float, int, int]] = []
    backlog = Backlog()
    print(
        f"soak: {args.shards} shards x {args.rate:g} events/s for {args.duration:g} s, "
        f"a fault every {args.fault_every:g} s on average (seed {args.seed})",
        flush=True,
    )
    with start_simulator(
        shards=args.shards,
        max_concurrency=args.shards,
        heartbeat_interval=args.heartbeat_interval,
    ) as sim:
        cluster = make_cluster(sim, shard_ids, args.shards)
        try:
            started = time.monotonic()
            tallies = {shard_id: ShardTally(shard_id, started) for shard_id in shard_ids}
            shards = list(tallies.values())
            consumer = gevent.spawn(consume, cluster, tallies, backlog)
            sim_before = sim.stats()
            cpu_before = cpu_seconds()
            stop = Flag()
            helpers = [
                gevent.spawn(feed, sim, shards, args.rate, stop),
                gevent.spawn(inject, sim, shards, rng, args.fault_every, stop, injected, struck),
                gevent.spawn(sample_rss, samples, started, args.rss_every, backlog, stop),
                gevent.spawn(progress, shards, started, stop),
            ]
            gevent.joinall(helpers, timeout=args.duration, raise_error=True)
            stop.set()
            gevent.joinall(helpers, raise_error=True)
            wall = time.monotonic() - started
            client_cpu = cpu_seconds() - cpu_before
            sim_after = sim.stats()
            drain_started = time.monotonic()
            deadline = drain_started + DRAIN_TIMEOUT
            while not all(t.complete for t in shards) and time.monotonic() < deadline:
                gevent.sleep(0.1)
            drained = time.monotonic() - drain_started
            rss_end = rss_kb()
            drain_backlog_peak = backlog.take()
            consumer.kill()
            ended = time.monotonic()
            for tally in shards:
                tally.close_open_outage(ended)
            library_reconnects: Counter[tuple[str, str]] = Counter()
            for shard in cluster.shards():
                library_reconnects.update(shard.stats.reconnects)
        finally:
            cluster.down()
        sim_end = sim.stats()

    report = summarize(args, shards, injected, struck, samples, library_reconnects, wall, drained)
    report["client_cpu_seconds"] = client_cpu
    report["client_cpu_share"] = client_cpu / wall
    report["simulator_cpu_seconds"] = sim_after["cpu_seconds"] - sim_before["cpu_seconds"]
    report["rss_after_drain_kb"] = rss_end
    report["backlog_peak"] = max(report["backlog_peak"], drain_backlog_peak)
    report["simulator"] = {
        "identifies": sim_end["identifies"],
        "resumes": sim_end["resumes"],
        "connections": sim_end["connections"],
        "violations": sim_end["violations"],
    }
    print_report(report)
    path = write_results("soak", report)
    print(f"\nwrote {path}")
    events = report["events"]
    return 1 if events["lost"] or events["duplicated"] or events["out_of_order"] else 0


def summarize(
    args: argparse.Namespace,
    shards: list[ShardTally],
    injected: Counter[str],
    struck: Counter[str],
    samples: list[tuple[float, int, int]],
    library_reconnects: Counter[tuple[str, str]],
    wall: float,
    drained: float,
) -> dict[str, Any]:
    outages = [o | {"shard_id": t.shard_id} for t in shards for o in t.outages]
    by_cause: dict[str, list[float]] = {}
    for outage in outages:
        by_cause.setdefault(outage["cause"], []).append(outage["seconds"])
    sent = sum(t.sent for t in shards)
    events = {
        "sent": sent,
        "received": sum(t.received for t in shards),
        "lost": sum(t.lost for t in shards),
        "duplicated": sum(t.duplicated for t in shards),
        "out_of_order": sum(t.out_of_order for t in shards),
        "rate": sent / wall,
    }
    per_shard = [
        {
            "shard_id": t.shard_id,
            "sent": t.sent,
            "lost": t.lost,
            "duplicated": t.duplicated,
            "out_of_order": t.out_of_order,
            "reconnects": len(t.outages),
            "hit_while_down": t.disconnects_while_down,
            "down_seconds": sum(o["seconds"] for o in t.outages),
            "longest_down_seconds": max((o["seconds"] for o in t.outages), default=0.0),
        }
        for t in shards
    ]
    longest = max((o["seconds"] for o in outages), default=0.0)
    rss = flat_verdict([(t, kb) for t, kb, _ in samples], args.warm_up, TARGET_RSS_GROWTH)
    lost_or_worse = events["lost"] + events["duplicated"] + events["out_of_order"]
    targets: dict[str, Any] = {
        "events_lost_duplicated_or_out_of_order": {
            "value": lost_or_worse,
            "target": 0,
            "met": lost_or_worse == 0,
        },
        "longest_disconnect_s": {
            "value": longest,
            "target": TARGET_LONGEST_DISCONNECT,
            "met": longest <= TARGET_LONGEST_DISCONNECT,
        },
    }
    if rss["flat"] is not None:
        targets["rss_growth_after_warm_up"] = {
            "value": rss["growth"],
            "target": TARGET_RSS_GROWTH,
            "met": rss["flat"],
        }
    return {
        "settings": vars(args),
        "seconds": wall,
        "drain_seconds": drained,
        "events": events,
        "faults": {
            name: {"injected": injected[name], "struck": struck[name]} for name in sorted(FAULTS)
        },
        "reconnect_delays": {"all": delays([o["seconds"] for o in outages])}
        | {cause: delays(values) for cause, values in sorted(by_cause.items())},
        "library_reconnects": {
            f"{kind} {cause}": count for (kind, cause), count in sorted(library_reconnects.items())
        },
        "longest_disconnect_s": longest,
        "most_time_disconnected_s": max(s["down_seconds"] for s in per_shard),
        "per_shard": per_shard,
        "outages": sorted(outages, key=lambda o: o["at"]),
        "rss_samples": [
            {"t": round(t, 1), "kb": kb, "backlog_peak": peak} for t, kb, peak in samples
        ],
        "largest_replay": max((o["replayed"] for o in outages), default=0),
        "backlog_peak": max((peak for _, _, peak in samples), default=0),
        "rss": rss,
        "targets": targets,
    }


def print_report(report: dict[str, Any]) -> None:
    events = report["events"]
    seconds = report["seconds"]
    faults = dict(report["faults"])
    faults["all"] = {
        key: sum(f[key] for f in report["faults"].values()) for key in ("injected", "struck")
    }
    print()
    print(
        table(
            ["cause", "injected", "struck", "reconnects", "p50 s", "p99 s", "max s", "total s"],
            [
                (
                    cause,
                    faults.get(cause, {}).get("injected"),
                    faults.get(cause, {}).get("struck"),
                    d["count"],
                    d["p50"],
                    d["p99"],
                    d["max"],
                    d["total"],
                )
                for cause, d in report["reconnect_delays"].items()
            ],
        )
    )
    print()
    print(
        table(
            [
                "shard",
                "events",
                "lost",
                "dup",
                "out of order",
                "reconnects",
                "down s",
                "down %",
                "longest s",
            ],
            [
                (
                    s["shard_id"],
                    s["sent"],
                    s["lost"],
                    s["duplicated"],
                    s["out_of_order"],
                    s["reconnects"],
                    s["down_seconds"],
                    f"{s['down_seconds'] / seconds:.0%}",
                    s["longest_down_seconds"],
                )
                for s in report["per_shard"]
            ],
        )
    )
    rss = report["rss"]
    kb = [s["kb"] for s in report["rss_samples"]]
    if rss["flat"] is None:
        rss_line = rss["why"]
    else:
        rss_line = (
            f"{'flat' if rss['flat'] else 'GROWING'}: last third's peak "
            f"{rss['last_third_max'] / 1024:.1f} MiB vs first third's "
            f"{rss['first_third_max'] / 1024:.1f} MiB after {report['settings']['warm_up']:g} "
            f"s of warm-up (x{rss['growth']:.3f}, {rss['slope_per_minute']:+.0f} KB/min)"
        )
    rows = [
        ("events sent / received", f"{events['sent']:,} / {events['received']:,}"),
        ("events lost", f"{events['lost']:,}"),
        ("events duplicated", f"{events['duplicated']:,}"),
        ("events out of order", f"{events['out_of_order']:,}"),
        ("longest disconnect", f"{report['longest_disconnect_s']:.2f} s"),
        (
            "most time disconnected",
            f"{report['most_time_disconnected_s']:.1f} of {seconds:.0f} s (one shard)",
        ),
        ("reconnects (library's count)", _counts(report["library_reconnects"])),
        (
            "simulator saw",
            f"{report['simulator']['identifies']} identifies, "
            f"{report['simulator']['resumes']} resumes",
        ),
        (
            "largest replay / backlog",
            f"{report['largest_replay']:,} events after one outage; "
            f"{report['backlog_peak']:,} waiting unread at most",
        ),
        ("drain after the traffic", f"{report['drain_seconds']:.1f} s"),
        (
            "client CPU",
            f"{report['client_cpu_share']:.1%} of a core ({report['client_cpu_seconds']:.1f} s); "
            f"simulator {report['simulator_cpu_seconds']:.1f} s",
        ),
        (
            "RSS samples",
            f"{len(kb)} every {report['settings']['rss_every']:g} s, "
            f"{min(kb) / 1024:.1f}-{max(kb) / 1024:.1f} MiB",
        ),
        ("RSS verdict", rss_line),
    ]
    print()
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    for name, target in report["targets"].items():
        value = target["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else f"{value:,}"
        print(
            f"target: {name} <= {target['target']:g}: {shown} "
            f"({'met' if target['met'] else 'MISSED'})"
        )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"


if __name__ == "__main__":
    sys.exit(main())
