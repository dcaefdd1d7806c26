"""The command line: `python -m gcluster demo` and `python -m gcluster run`.

`demo` needs nothing but this package: it starts the embedded gateway
simulator, brings a cluster up on it, streams events through it and shows
each shard's state as it goes. `run` connects to Discord with DISCORD_TOKEN
and prints every event as one JSON line, for piping into jq; with `--sink
redis://...` it runs as a gateway service feeding worker processes through
Redis Streams (see `gcluster.redis.service`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import gevent
import gevent.event
import ujson

from gcluster.cluster import Cluster
from gcluster.errors import GClusterError
from gcluster.events import Event, EventType, EventTypeFlags
from gcluster.intents import Intents
from gcluster.scheme import ShardScheme
from gcluster.shard import Information, Shard

DEFAULT_DEMO_INTENTS = (
    Intents.GUILDS | Intents.GUILD_MESSAGES | Intents.GUILD_MESSAGE_TYPING | Intents.GUILD_PRESENCES
)
# Dispatches that open or resume a session; the demo counts only the stream itself.
_SESSION_STARTS = frozenset({EventType.READY, EventType.RESUMED})


@dataclass
class ShardTally:
    """Events one shard delivered during the demo, for the live table."""

    events: int = 0


class Tallies:
    """Counts every event as it passes; knows the rate over the last second."""

    def __init__(self, shard_ids: Sequence[int]) -> None:
        self.shards = {shard_id: ShardTally() for shard_id in shard_ids}
        self.started = time.monotonic()
        self._window_start = self.started
        self._window_counts: Counter[int] = Counter()
        self.rates: dict[int, float] = dict.fromkeys(shard_ids, 0.0)

    def count(self, shard_id: int, event: Event) -> None:
        if event.sequence is not None and event.kind not in _SESSION_STARTS:
            self.shards[shard_id].events += 1
            self._window_counts[shard_id] += 1

    def roll(self) -> None:
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            self.rates = {sid: self._window_counts[sid] / elapsed for sid in self.shards}
            self._window_counts.clear()
            self._window_start = now

    @property
    def total(self) -> int:
        return sum(t.events for t in self.shards.values())


def _latency_ms(info: Information) -> str:
    average = info.latency.average
    return f"{average * 1000:.1f}" if average is not None else "-"


def render_table(info: dict[int, Information], tallies: Tallies) -> list[str]:
    header = f"{'shard':>5}  {'stage':<15} {'latency ms':>10} {'events/s':>9} {'events':>8}"
    lines = [header + f" {'sequence':>9}"]
    for shard_id, shard in info.items():
        tally = tallies.shards[shard_id]
        lines.append(
            f"{shard_id:>5}  {shard.stage.value:<15} {_latency_ms(shard):>10} "
            f"{tallies.rates[shard_id]:>9.0f} {tally.events:>8} {shard.sequence or 0:>9}"
        )
    return lines


def render_summary(tallies: Tallies) -> list[str]:
    elapsed = time.monotonic() - tallies.started
    return [
        f"summary: {tallies.total} events in {elapsed:.1f} s "
        f"({tallies.total / elapsed if elapsed else 0:.0f} events/s)"
    ]


def render_shards(shards: Sequence[Shard]) -> list[str]:
    """One line per shard from its own counters: what an operator checks after a run."""
    lines = [
        f"{'shard':>5}  {'events':>8} {'identifies':>10} {'resumes':>8} {'reconnects':>10} "
        f"{'latency ms':>10}  stage"
    ]
    for shard in shards:
        info = shard.info()
        stats = shard.stats
        # The stream itself: READY and RESUMED open sessions, they are not traffic.
        events = stats.delivered - stats.events["READY"] - stats.events["RESUMED"]
        reconnects = sum(stats.reconnects.values())
        counts = f"{events:>8} {stats.identifies:>10} {stats.resumes:>8} {reconnects:>10}"
        lines.append(f"{shard.id:>5}  {counts} {_latency_ms(info):>10}  {info.stage.value}")
    return lines


class Display:
    """Redraws the table in place on a terminal; prints plain lines when piped."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.live = out.isatty()
        self._drawn = 0

    def table(self, lines: list[str]) -> None:
        if self.live:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            self.out.write(" | ".join(line.strip() for line in lines[1:]) + "\n")
        self.out.flush()

    def line(self, text: str) -> None:
        if self.live and self._drawn:
            # Print above the table, then redraw it on the next tick.
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
        self.out.write(text + "\n")
        self.out.flush()


def _describe(event: Event) -> str:
    data = event.data if isinstance(event.data, dict) else {}
    if event.kind is EventType.MESSAGE_CREATE:
        author = (data.get("author") or {}).get("username", "?")
        return f"{author}: {str(data.get('content', ''))[:60]}"
    if event.kind is EventType.READY:
        return f"session {data.get('session_id', '?')}"
    return ", ".join(
        f"{k}={v}" for k, v in list(data.items())[:3] if not isinstance(v, dict | list)
    )


def _feed(sim: Any, shard_ids: Sequence[int], total_events: int, rate: float) -> None:
    """Push `total_events` numbered events, shared evenly by the shards, at about `rate`/s."""
    quota = {sid: total_events // len(shard_ids) for sid in shard_ids}
    for sid in shard_ids[: total_events % len(shard_ids)]:
        quota[sid] += 1
    # Twenty small rounds a second keep the rate smooth; rate 0 sends as fast as possible.
    batch = max(1, int(rate / 20 / len(shard_ids))) if rate > 0 else 500
    started = time.monotonic()
    sent = 0
    while sent < total_events:
        for shard_id in shard_ids:
            share = min(batch, quota[shard_id])
            if share:
                sim.send_events(shard_id, share)
                quota[shard_id] -= share
                sent += share
        ahead = sent / rate - (time.monotonic() - started) if rate > 0 else 0.0
        gevent.sleep(max(0.0, ahead))


def demo(args: argparse.Namespace) -> int:
    from gcluster.testing import GatewaySimulator

    out = sys.stdout
    display = Display(out)
    sim = GatewaySimulator(
        shards=args.shards,
        max_concurrency=args.shards,
        heartbeat_interval=args.heartbeat,
    ).start()
    cluster = Cluster(
        sim.token,
        DEFAULT_DEMO_INTENTS,
        api_base=sim.api_base,
        shard_scheme=ShardScheme.range(range(args.shards), args.shards),
        event_types=EventTypeFlags.ALL,
    )
    shard_ids = list(range(args.shards))
    tallies = Tallies(shard_ids)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    display.line(f"gcluster demo: {args.shards} shards on the embedded simulator at {sim.url}")
    try:
        cluster.up(timeout=30)
        if not cluster.wait_until_ready(timeout=30):
            display.line("shards did not become ready within 30 s")
            return 1
        feeder = gevent.spawn(_feed, sim, shard_ids, args.events, args.rate)
        reader = gevent.spawn(_consume, cluster, tallies, display, args, stop)
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.is_set():
            tallies.roll()
            display.table(render_table(cluster.info(), tallies))
            if deadline is not None and time.monotonic() >= deadline:
                break
            if reader.dead:
                break
            stop.wait(0.5 if display.live else 1.0)
        feeder.kill()
        display.table(render_table(cluster.info(), tallies))
    except GClusterError as err:
        display.line(f"error: {err}")
        return 1
    finally:
        # Before down(): the table shows the stages the run ended in.
        summary = render_summary(tallies) + render_shards(cluster.shards())
        cluster.down()
        sim.stop()
    for line in summary:
        display.line(line)
    return 0


def _consume(
    cluster: Cluster,
    tallies: Tallies,
    display: Display,
    args: argparse.Namespace,
    done: gevent.event.Event,
) -> None:
    every = max(1, args.sample)
    for shard_id, event in cluster.events():
        tallies.count(shard_id, event)
        if tallies.total >= args.events:
            done.set()
        if event.sequence is not None and tallies.shards[shard_id].events % every == 1:
            display.line(f"[shard {shard_id}] #{event.sequence} {event.name}: {_describe(event)}")


def _parse_flags(text: str, enum: Any, what: str) -> Any:
    value = enum(0)
    for name in filter(None, (part.strip().upper() for part in text.split(","))):
        if name.isdigit():
            value |= enum(int(name))
            continue
        try:
            value |= enum[name]
        except KeyError:
            raise SystemExit(f"unknown {what}: {name}") from None
    return value


def parse_scheme(text: str | None, total: int | None) -> ShardScheme | None:
    """`--scheme`: "auto", "process:I/N" or "range:A-B" (with `--shards` as the total).

    Without `--scheme`, `--shards N` means shards 0..N-1 of N, and neither means auto.
    """
    if not text:
        return ShardScheme.range(range(total), total) if total else None
    kind, _, value = text.partition(":")
    if kind == "auto" and not value:
        return ShardScheme.auto()
    if kind not in ("process", "range") or not value:
        raise SystemExit(f"--scheme must be auto, process:I/N or range:A-B, not {text!r}")
    if not total:
        raise SystemExit(f"--scheme {text} needs the bot's shard count: --shards TOTAL")
    try:
        if kind == "process":
            index, count = (int(part) for part in value.split("/"))
            return ShardScheme.process(index, count, total)
        first, last = (int(part) for part in value.split("-"))
        return ShardScheme.range(range(first, last + 1), total)
    except ValueError as err:  # bad numbers, or ShardSchemeError
        raise SystemExit(f"--scheme {text}: {err}") from None


def run(args: argparse.Namespace) -> int:
    token = os.environ.get("DISCORD_TOKEN", "")
    scheme = parse_scheme(args.scheme, args.shards)
    sim = None
    options: dict[str, Any] = {}
    if args.simulate:
        from gcluster.testing import GatewaySimulator

        total = args.shards or 1
        sim = GatewaySimulator(shards=total, max_concurrency=total).start()
        token = sim.token
        options["api_base"] = sim.api_base
        scheme = scheme or ShardScheme.range(range(total), total)
    elif not token:
        print("DISCORD_TOKEN is not set (or use --simulate)", file=sys.stderr)
        return 2
    elif args.api_base:
        options["api_base"] = args.api_base
    intents = _parse_flags(args.intents, Intents, "intent")
    event_types = _parse_flags(args.events, EventTypeFlags, "event type") if args.events else None
    if event_types is not None:
        options["event_types"] = event_types
    if args.sink:
        from gcluster.redis.service import serve

        return serve(
            args,
            token=token,
            intents=intents,
            scheme=scheme or ShardScheme.auto(),
            options=options,
            simulate=sim,
        )
    if scheme is not None:
        options["shard_scheme"] = scheme
    cluster = Cluster(token, intents, **options)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    out = sys.stdout
    try:
        cluster.up()
        if sim is not None:
            for shard in cluster.shards():
                sim.send_events(shard.id, args.simulate_events)
        printer = gevent.spawn(_print_events, cluster, out, args.limit)
        gevent.wait([printer, stop], count=1)
    except GClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        shards = render_shards(cluster.shards())
        cluster.down()
        if sim is not None:
            sim.stop()
        # stdout carries the JSON lines; the operator's summary goes to stderr.
        for line in shards:
            print(line, file=sys.stderr)
    return 0


def _print_events(cluster: Cluster, out: TextIO, limit: int | None) -> None:
    printed = 0
    for shard_id, event in cluster.events():
        line = {"shard": shard_id, "t": event.name, "s": event.sequence, "d": event.data}
        out.write(ujson.dumps(line, ensure_ascii=False) + "\n")
        out.flush()
        printed += 1
        if limit is not None and printed >= limit:
            return


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m gcluster", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)

    d = commands.add_parser(
        "demo",
        help="run a cluster against the embedded gateway simulator",
        description="Start the embedded gateway simulator and a cluster on it, stream events "
        "through every shard, show a live table of the shards and finish with a summary.",
    )
    d.add_argument("--shards", type=int, default=4, help="number of shards (default 4)")
    d.add_argument(
        "--events", type=int, default=20_000, help="events to stream in total (default 20000)"
    )
    d.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    d.add_argument(
        "--rate",
        type=float,
        default=5_000,
        help="events per second to inject (0: as fast as possible)",
    )
    d.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        help="heartbeat interval the simulator asks for, seconds",
    )
    d.add_argument(
        "--sample", type=int, default=2_000, help="print one event in this many per shard"
    )
    d.set_defaults(func=demo)

    r = commands.add_parser(
        "run",
        help="connect to Discord with DISCORD_TOKEN; print events as JSON lines, or serve "
        "them to workers through Redis (--sink)",
        description="Connect to the Discord gateway with the bot token in DISCORD_TOKEN and "
        "print every event as one JSON line ({shard, t, s, d}). With --sink, run as a "
        "gateway service instead: publish the events to Redis Streams for StreamWorker "
        "processes, send the commands workers post to this process's shards, identify "
        "through a RedisQueue and keep sessions in a RedisSessionStore; SIGTERM saves "
        "resumable sessions and exits 0.",
    )
    r.add_argument(
        "--intents", default="GUILDS,GUILD_MESSAGES", help="comma-separated Intents names or an int"
    )
    r.add_argument(
        "--events", default="", help="comma-separated event types to deliver (default: all)"
    )
    r.add_argument(
        "--shards",
        type=int,
        default=None,
        help="the bot's shard count; alone, run shards 0..N-1 of N (default: Discord's count)",
    )
    r.add_argument(
        "--scheme",
        default=None,
        help="which shards this process runs: auto, process:I/N (the I-th of N slices of "
        "--shards) or range:A-B",
    )
    r.add_argument("--limit", type=int, default=None, help="exit after printing this many events")
    r.add_argument(
        "--api-base",
        default=None,
        help="REST base URL instead of Discord's, e.g. a gateway proxy or a simulator "
        "started elsewhere (the token still comes from DISCORD_TOKEN)",
    )
    r.add_argument(
        "--simulate", action="store_true", help="use the embedded simulator instead of Discord"
    )
    r.add_argument(
        "--simulate-events", type=int, default=10, help="with --simulate: events per shard"
    )
    service = r.add_argument_group("service mode")
    service.add_argument(
        "--sink",
        metavar="REDIS_URL",
        default=None,
        help="run as a service publishing to Redis Streams at this URL (e.g. redis://host:6379/0)",
    )
    service.add_argument(
        "--namespace",
        default="gcluster",
        help="key prefix of the bot in Redis: identify queue, sessions, command inboxes",
    )
    service.add_argument("--stream", default="gcluster:events", help="the event stream's key")
    service.add_argument(
        "--per-event-streams",
        action="store_true",
        help="one stream per event name (STREAM's hash tag + name) instead of one stream",
    )
    service.add_argument(
        "--maxlen",
        type=int,
        default=1_000_000,
        help="trim each stream to about this many entries; 0 never trims",
    )
    service.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="on SIGTERM, seconds to publish the events already read",
    )
    service.add_argument(
        "--lease",
        action="store_true",
        help="hold the shards through a lease in Redis: a second process with the same "
        "--scheme waits as a standby and takes over (resuming) when this one dies",
    )
    service.add_argument(
        "--lease-ttl",
        type=float,
        default=15.0,
        help="seconds a dead holder's lease lasts before a standby takes over (default 15)",
    )
    service.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default info)"
    )
    r.set_defaults(func=run)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
