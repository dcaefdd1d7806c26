"""The command line: `python -m gcluster demo`, `python -m gcluster run` and `--version`.

`demo` needs nothing but this package: it starts the embedded gateway
simulator, brings a cluster up on it, streams events through it and shows
each shard's state as it goes. `run` connects to Discord with DISCORD_TOKEN
and prints every event as one JSON line, for piping into jq; with `--sink
redis://...` it runs as a gateway service feeding worker processes through
Redis Streams (see `gcluster.redis.service`).

Bad input is refused before anything starts, with one line on stderr and
status 2; the statuses are listed in `gcluster._exit` and under ``--help``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import resource
import signal
import stat
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn, TextIO, TypeVar
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.socket
import ujson

import gcluster
from gcluster import backends
from gcluster._exit import EPILOG, ExitStatus, exit_status
from gcluster._token import Token
from gcluster.cluster import Cluster
from gcluster.errors import GClusterError
from gcluster.events import Event, EventType, EventTypeFlags
from gcluster.intents import Intents
from gcluster.logstats import LOG_FORMATS, Reporter, configure_logging
from gcluster.proxy import parse_proxy
from gcluster.queue import DEFAULT_SPARE
from gcluster.scheme import ShardScheme
from gcluster.shard import Information, Shard

if TYPE_CHECKING:
    from gcluster.testing import GatewaySimulator

DEFAULT_DEMO_INTENTS = (
    Intents.GUILDS | Intents.GUILD_MESSAGES | Intents.GUILD_MESSAGE_TYPING | Intents.GUILD_PRESENCES
)
# Dispatches that open or resume a session; the demo counts only the stream itself.
_SESSION_STARTS = frozenset({EventType.READY, EventType.RESUMED})
# The daily session starts Discord gives most bots; the embedded simulator
# grants at least as many (see `start_simulator`).
_DAILY_SESSION_STARTS: Final = 1000
# Piped, the demo prints a progress line this often instead of a table per refresh.
_PROGRESS_EVERY: Final = 5.0
_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")

_N = TypeVar("_N", int, float)

log = logging.getLogger("gcluster.cli")


class UsageError(ValueError):
    """Options that make no sense together; reported like argparse's own errors (status 2)."""


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


def render_progress(info: dict[int, Information], tallies: Tallies) -> str:
    """One line however many shards: what a log file gets instead of the live table."""
    elapsed = time.monotonic() - tallies.started
    stages = Counter(shard.stage.value for shard in info.values())
    shards = ", ".join(f"{count} {stage}" for stage, count in sorted(stages.items()))
    rate = sum(tallies.rates.values())
    return f"{elapsed:.0f} s: {tallies.total} events, {rate:.0f} events/s; shards: {shards}"


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


class Output:
    """stdout for a command whose reader may stop reading early (``| head``).

    Once the reader has gone, `write` returns False and `gone` is set instead
    of BrokenPipeError being raised: the command ends as it would at its end,
    quietly, as Unix tools do. `watch` notices a pipe's reader leaving even
    while nothing is being written.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.gone = gevent.event.Event()
        self._watcher: Any = None

    def isatty(self) -> bool:
        return self.stream.isatty()

    def write(self, text: str) -> bool:
        """Write and flush `text`; False once the reader has gone."""
        if self.gone.is_set():
            return False
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            self._reader_left()
            return False
        return True

    def watch(self) -> None:
        """When stdout is a pipe, set `gone` as soon as its reader closes it."""
        try:
            fd = self.stream.fileno()
            is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
        except (OSError, ValueError):  # io.UnsupportedOperation is a ValueError too
            return
        if is_pipe:
            self._watcher = gevent.spawn(self._wait_for_reader_to_leave, fd)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not gevent.getcurrent():
            watcher.kill()

    def _wait_for_reader_to_leave(self, fd: int) -> None:
        # Nothing makes the write end of a pipe readable, but once the read end
        # is closed poll() reports an error on it, and that wakes a read watcher.
        gevent.socket.wait_read(fd)
        self._reader_left()

    def _reader_left(self) -> None:
        if self.gone.is_set():
            return
        self.close()
        # What is still buffered, and whatever is written later, goes to
        # /dev/null instead of raising again when the interpreter flushes
        # stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.stream.fileno())
        finally:
            os.close(devnull)
        self.gone.set()


class Display:
    """The demo's screen.

    On a terminal, the shard table is redrawn in place. Piped or redirected,
    it prints one progress line every `_PROGRESS_EVERY` seconds instead, so a
    log gets neither escape codes nor a table's worth of text per refresh.
    """

    def __init__(self, out: Output) -> None:
        self.out = out
        self.live = out.isatty()
        self._drawn = 0
        self._last_progress = time.monotonic()

    def refresh(self, info: dict[int, Information], tallies: Tallies) -> None:
        if self.live:
            lines = render_table(info, tallies)
            erase = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
            self.out.write(erase + "\n".join(lines) + "\n")
            self._drawn = len(lines)
            return
        now = time.monotonic()
        if now - self._last_progress >= _PROGRESS_EVERY:
            self._last_progress = now
            self.out.write(render_progress(info, tallies) + "\n")

    def line(self, text: str) -> None:
        erase = ""
        if self.live and self._drawn:
            # Print above the table, then redraw it on the next tick.
            erase = f"\x1b[{self._drawn}F\x1b[J"
            self._drawn = 0
        self.out.write(erase + text + "\n")


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


def start_simulator(shards: int, **options: Any) -> GatewaySimulator:
    """The embedded simulator, sized for a cluster of `shards` in this process.

    Every shard identifies at once (one identify bucket each), and the daily
    session starts cover every shard's first IDENTIFY and as many again for
    sessions lost during the run, on top of the one the identify queue keeps
    spare: Discord's 1,000 would stop a 1,000-shard demo before it started.
    """
    from gcluster.testing import GatewaySimulator

    # Each shard holds a socket here and the simulator its end of it.
    _allow_open_files(2 * shards + 100)
    starts = max(_DAILY_SESSION_STARTS, 2 * shards + DEFAULT_SPARE)
    return GatewaySimulator(
        shards=shards,
        max_concurrency=shards,
        session_start_limit_total=starts,
        session_start_remaining=starts,
        **options,
    ).start()


def _allow_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if limit > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def demo(args: argparse.Namespace) -> int:
    out = Output(sys.stdout)
    display = Display(out)
    shard_ids = list(range(args.shards))
    sim = start_simulator(args.shards, heartbeat_interval=args.heartbeat)
    cluster = Cluster(
        sim.token,
        DEFAULT_DEMO_INTENTS,
        api_base=sim.api_base,
        shard_scheme=ShardScheme.range(range(args.shards), args.shards),
        event_types=EventTypeFlags.ALL,
        proxy=False,  # the simulator is on 127.0.0.1, in this process: never behind a proxy
    )
    tallies = Tallies(shard_ids)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    out.gone.rawlink(lambda _: stop.set())
    out.watch()
    display.line(f"gcluster demo: {args.shards} shards on the embedded simulator at {sim.url}")
    status = ExitStatus.OK
    try:
        cluster.up(timeout=30)
        if not cluster.wait_until_ready(timeout=30):
            display.line("shards did not become ready within 30 s")
            status = ExitStatus.ERROR
        else:
            _stream(sim, cluster, tallies, display, args, stop)
    except GClusterError as err:
        display.line(f"error: {err}")
        status = exit_status(err)
    finally:
        # Before down(): the table shows the stages the run ended in.
        summary = render_summary(tallies) + render_shards(cluster.shards())
        cluster.down()
        sim.stop()
        out.close()
    for line in summary:
        display.line(line)
    return status


def _stream(
    sim: GatewaySimulator,
    cluster: Cluster,
    tallies: Tallies,
    display: Display,
    args: argparse.Namespace,
    stop: gevent.event.Event,
) -> None:
    """Feed the events and show the shards until all arrived, `--duration` or `stop`."""
    shard_ids = list(tallies.shards)
    feeder = gevent.spawn(_feed, sim, shard_ids, args.events, args.rate)
    reader = gevent.spawn(_consume, cluster, tallies, display, args, stop)
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stop.is_set() and not reader.dead:
            tallies.roll()
            display.refresh(cluster.info(), tallies)
            if deadline is not None and time.monotonic() >= deadline:
                break
            stop.wait(0.5 if display.live else 1.0)
    finally:
        feeder.kill()
    error = reader.value if reader.ready() else None
    if error is not None:
        raise error


def _consume(
    cluster: Cluster,
    tallies: Tallies,
    display: Display,
    args: argparse.Namespace,
    done: gevent.event.Event,
) -> GClusterError | None:
    """Count and sample the events; the error that ended the stream, if one did."""
    try:
        for shard_id, event in cluster.events():
            tallies.count(shard_id, event)
            if tallies.total >= args.events:
                done.set()
            if event.sequence is None or event.kind in _SESSION_STARTS:
                continue
            # The first of every `--sample` events of the shard.
            if (tallies.shards[shard_id].events - 1) % args.sample == 0:
                display.line(
                    f"[shard {shard_id}] #{event.sequence} {event.name}: {_describe(event)}"
                )
    except GClusterError as err:  # returned: a greenlet that raised would print it
        return err
    return None


# --- run ------------------------------------------------------------------------


def parse_scheme(text: str | None, total: int | None) -> ShardScheme | None:
    """`--scheme`: "auto", "process:I/N" or "range:A-B" (with `--shards` as the total).

    Without `--scheme`, `--shards N` means shards 0..N-1 of N, and neither means auto.

    Raises:
        UsageError: a scheme that is malformed, or needs `--shards` and has none.
    """
    if not text:
        return ShardScheme.range(range(total), total) if total else None
    kind, _, value = text.partition(":")
    if kind == "auto" and not value:
        return ShardScheme.auto()
    if kind not in ("process", "range") or not value:
        raise UsageError(f"--scheme must be auto, process:I/N or range:A-B, not {text!r}")
    if not total:
        raise UsageError(f"--scheme {text} needs the bot's shard count: --shards TOTAL")
    try:
        if kind == "process":
            index, count = (int(part) for part in value.split("/"))
            return ShardScheme.process(index, count, total)
        first, last = (int(part) for part in value.split("-"))
        return ShardScheme.range(range(first, last + 1), total)
    except ValueError as err:  # bad numbers, or ShardSchemeError
        raise UsageError(f"--scheme {text}: {err}") from err


def run(args: argparse.Namespace) -> int:
    # Everything the command line alone decides is checked before anything starts.
    if args.simulate and args.api_base:
        raise UsageError("--simulate serves its own REST API: leave out --api-base")
    if args.simulate and args.proxy:
        raise UsageError("--simulate serves on 127.0.0.1 in this process: leave out --proxy")
    if args.sink and args.limit is not None:
        raise UsageError("--limit counts the events printed, and with --sink none are")
    if args.metrics_port is not None and not args.sink:
        raise UsageError("--metrics-port serves the service mode's status: add --sink REDIS_URL")
    scheme = parse_scheme(args.scheme, args.shards)
    # stderr: in printing mode stdout carries the events.
    configure_logging(args.log_level, args.log_format)
    token = ""
    if not args.simulate:
        token = _token_from_environment()
    serve: Callable[..., int] | None = None
    if args.sink:
        try:
            from gcluster.redis.service import serve
        except ImportError as err:
            print(
                f"error: --sink needs the redis extra: pip install 'gcluster[redis]' ({err})",
                file=sys.stderr,
            )
            return ExitStatus.ERROR
    # Bound before anything starts: a taken port is a one-line error, not a half-started service.
    status_listener = _status_listener(args) if serve is not None else None
    sim = None
    options: dict[str, Any] = {}
    if args.simulate:
        total = args.shards or 1
        sim = start_simulator(total)
        token = sim.token
        options["api_base"] = sim.api_base
        scheme = scheme or ShardScheme.range(range(total), total)
    elif args.api_base:
        options["api_base"] = args.api_base
    if args.simulate or args.no_proxy:
        options["proxy"] = False  # the simulator is local; or told so
    elif args.proxy:
        options["proxy"] = args.proxy
    if args.events is not None:
        options["event_types"] = args.events
    if serve is not None:
        return serve(
            args,
            token=token,
            intents=args.intents,
            scheme=scheme or ShardScheme.auto(),
            options=options,
            simulate=sim,
            status_listener=status_listener,
        )
    if scheme is not None:
        options["shard_scheme"] = scheme
    return _print_stream(args, token, options, sim)


def status(args: argparse.Namespace) -> int:
    if not args.sink:
        raise UsageError("--sink REDIS_URL is needed: the Redis the gateway processes use")
    try:
        from gcluster.redis import inspect
        from gcluster.redis._client import safe_url
    except ImportError as err:
        print(
            f"error: status needs the redis extra: pip install 'gcluster[redis]' ({err})",
            file=sys.stderr,
        )
        return ExitStatus.ERROR
    from gcluster.errors import ConfigError, RedisCallError

    try:
        report = inspect.gather(args.sink, args.namespace, args.stream)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    except RedisCallError as err:
        print(f"error: Redis at {safe_url(args.sink)} failed: {err}", file=sys.stderr)
        return ExitStatus.ERROR
    print(inspect.dumps(report) if args.json else "\n".join(inspect.render(report)))
    return ExitStatus.OK if report["total"] is not None else ExitStatus.ERROR


def _status_listener(args: argparse.Namespace) -> Any:
    """The socket of ``--metrics-port`` (None without it); one that cannot be bound is refused."""
    if args.metrics_port is None:
        return None
    from gcluster.errors import ConfigError
    from gcluster.web import listen

    try:
        return listen(args.metrics_host, args.metrics_port)
    except ConfigError as err:
        raise UsageError(f"--metrics-port {args.metrics_port}: {err}") from err


def _token_from_environment() -> str:
    token = os.environ.get("DISCORD_TOKEN")
    if token is None:
        raise UsageError("DISCORD_TOKEN is not set (or use --simulate)")
    try:
        Token(token)
    except ValueError as err:  # its message never holds the token
        raise UsageError("DISCORD_TOKEN is blank (or use --simulate)") from err
    return token


def _print_stream(
    args: argparse.Namespace, token: str, options: dict[str, Any], sim: GatewaySimulator | None
) -> int:
    """Print every event as a JSON line until `--limit`, a signal, or stdout's reader leaves."""
    out = Output(sys.stdout)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    status = ExitStatus.OK
    cluster = None
    reporter = None
    try:
        cluster = Cluster(token, args.intents, **options)
        reporter = Reporter(cluster, args.stats_interval).start()
        cluster.up()
        if sim is not None and args.simulate_events:
            for shard in cluster.shards():
                sim.send_events(shard.id, args.simulate_events)
        out.watch()
        printer = gevent.spawn(_print_events, cluster, out, args.limit)
        gevent.wait([printer, stop, out.gone], count=1)
        error = printer.value if printer.ready() else None
        if error is not None:
            raise error
    except GClusterError as err:
        if args.log_format == "json":
            log.error("error: %s", err)
        else:
            print(f"error: {err}", file=sys.stderr)
        status = exit_status(err)
    finally:
        out.close()
        if reporter is not None:
            reporter.stop()
        if cluster is not None:
            shards = render_shards(cluster.shards())
            cluster.down()
            # stdout carries the JSON lines; the operator's summary goes to stderr,
            # through the log when that is JSON lines, so a shipper reads every line.
            for line in shards:
                if args.log_format == "json":
                    log.info("%s", line, extra={"step": "summary"})
                else:
                    print(line, file=sys.stderr)
        if sim is not None:
            sim.stop()
    return status


def _print_events(cluster: Cluster, out: Output, limit: int | None) -> GClusterError | None:
    """Print events until `limit` or stdout's reader leaves; the error that ended the stream."""
    printed = 0
    try:
        for shard_id, event in cluster.events():
            line = {"shard": shard_id, "t": event.name, "s": event.sequence, "d": event.data}
            if not out.write(ujson.dumps(line, ensure_ascii=False) + "\n"):
                return None
            printed += 1
            if limit is not None and printed >= limit:
                return None
    except GClusterError as err:  # returned: a greenlet that raised would print it
        return err
    return None


# --- options ----------------------------------------------------------------------


def positive_int(text: str) -> int:
    return _number(text, int, lambda value: value > 0, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda value: value >= 0, "an integer, 0 or more")


def port_option(text: str) -> int:
    return _number(text, int, lambda value: 0 <= value <= 65535, "a port, 0 to 65535")


def positive_float(text: str) -> float:
    return _number(text, float, lambda value: value > 0, "a positive number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda value: value >= 0, "a number, 0 or more")


def _number(text: str, kind: Callable[[str], _N], fits: Callable[[_N], bool], what: str) -> _N:
    try:
        value = kind(text)
    except ValueError:
        value = None
    # NaN fits nothing; infinity is refused too, as no option means "forever" by it.
    if value is None or not math.isfinite(value) or not fits(value):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
    return value


def intents_option(text: str) -> Intents:
    """`--intents`: Intents names and integers, comma-separated, OR-ed together."""
    value = Intents(0)
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("no intents given (0 asks for none)")
    for part in parts:
        if part.isdigit():
            number = int(part)
            unknown = number & ~int(Intents.ALL)  # ~ on the flag keeps only its own bits
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"{part} sets bits no intent has ({unknown:#x}); Discord would close with 4013"
                )
            value |= Intents(number)
        elif part.upper() in Intents.__members__:
            value |= Intents[part.upper()]
        else:
            raise argparse.ArgumentTypeError(f"unknown intent {part!r}")
    return value


def event_types_option(text: str) -> EventTypeFlags:
    """`--events` of `run`: EventType names, comma-separated."""
    value = EventTypeFlags(0)
    parts = [part.strip().upper() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("no event types given (leave --events out for all)")
    for part in parts:
        if part not in EventTypeFlags.__members__:
            raise argparse.ArgumentTypeError(f"unknown event type {part!r}")
        value |= EventTypeFlags[part]
    return value


def proxy_option(text: str) -> str:
    """`--proxy`: an http://[user:password@]host:port URL (checked as the option is)."""
    try:
        parse_proxy(text)
    except ValueError as err:  # its message never holds the credentials
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def api_base_option(text: str) -> str:
    """`--api-base`: an http:// or https:// URL with a host."""
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"must be an http:// or https:// URL such as https://discord.com/api/v10, not {text!r}"
        )
    return text


# --- the command line ---------------------------------------------------------------


def version_text() -> str:
    """What `--version` prints: gcluster, what it runs on, the libraries it uses.

    The JSON decoder and the zlib and zstd libraries are the ones
    `gcluster.backends` picks in this process (what `decoder="auto"` and the
    inflaters use), with the extra that would add a faster one.
    """
    loop = gevent.config.loop
    used = backends.in_use()
    json_decoder, zlib_module, zstd = used.json, used.zlib_stream, used.zstd_stream
    return "\n".join(
        [
            f"gcluster {gcluster.__version__}",
            f"Python {platform.python_version()} ({platform.python_implementation()})",
            f"gevent {gevent.__version__} (loop {loop.__module__})",
            f"JSON decoder: {json_decoder}" + _faster(json_decoder, "orjson"),
            f"zlib-stream: {zlib_module}" + _faster(zlib_module, "zlib-ng"),
            "zstd-stream: "
            + (f"{zstd}" if zstd is not None else "no zstd library: pip install 'gcluster[zstd]'"),
        ]
    )


def _faster(backend: backends.Backend, fast: str) -> str:
    """Where the `fast` extra's library is not the one in use, how to get it."""
    if backend.distribution == fast:
        return " (the fast extra)"
    return f" ({fast} is not installed: pip install 'gcluster[fast]')"


class _Version(argparse.Action):
    """``--version``: computed only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> NoReturn:
        sys.stdout.write(version_text() + "\n")
        parser.exit(ExitStatus.OK)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but a usage error is one line (what is wrong), status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitStatus.USAGE, f"{self.prog}: error: {message}\n")


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions as usual, and keeps the layout of the exit status table."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text is EPILOG:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Switch(argparse.BooleanOptionalAction):
    """``--x``/``--no-x``, whose help text is used as written.

    Python 3.10 appends " (default: %(default)s)" to it, which the
    environment's pass (`_given`, defaults suppressed) cannot format.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        text = kwargs.pop("help", None)
        super().__init__(option_strings, dest, **kwargs)
        self.help = text


def parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="python -m gcluster",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    top.add_argument(
        "--version",
        action=_Version,
        help="print gcluster's version, and Python's, gevent's and the decoders' in use",
    )
    commands = top.add_subparsers(dest="command", required=True)

    d = commands.add_parser(
        "demo",
        help="run a cluster against the embedded gateway simulator",
        description="Start the embedded gateway simulator and a cluster on it, stream events "
        "through every shard, show a live table of the shards (on a terminal; piped, a "
        "progress line every 5 s) and finish with a summary.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    d.add_argument("--shards", type=positive_int, default=4, help="number of shards (default 4)")
    d.add_argument(
        "--events",
        type=positive_int,
        default=20_000,
        help="events to stream in total (default 20000)",
    )
    d.add_argument(
        "--duration", type=positive_float, default=None, help="stop after this many seconds"
    )
    d.add_argument(
        "--rate",
        type=non_negative_float,
        default=5_000,
        help="events per second to inject (default 5000; 0: as fast as possible)",
    )
    d.add_argument(
        "--heartbeat",
        type=positive_float,
        default=5.0,
        help="heartbeat interval the simulator asks for, seconds (default 5)",
    )
    d.add_argument(
        "--sample",
        type=positive_int,
        default=2_000,
        help="print the first of every this many events of each shard (default 2000)",
    )
    d.set_defaults(func=demo, parser=d)

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
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    r.add_argument(
        "--intents",
        type=intents_option,
        default=Intents.GUILDS | Intents.GUILD_MESSAGES,
        help="comma-separated Intents names or integers, e.g. GUILDS,GUILD_MESSAGES or 513 "
        "(the default)",
    )
    r.add_argument(
        "--events",
        type=event_types_option,
        default=None,
        help="comma-separated event types to deliver, e.g. MESSAGE_CREATE (default: all)",
    )
    r.add_argument(
        "--shards",
        type=positive_int,
        default=None,
        help="the bot's shard count; alone, run shards 0..N-1 of N (default: Discord's count)",
    )
    r.add_argument(
        "--scheme",
        default=None,
        help="which shards this process runs: auto, process:I/N (the I-th of N slices of "
        "--shards) or range:A-B",
    )
    r.add_argument(
        "--limit", type=positive_int, default=None, help="exit after printing this many events"
    )
    r.add_argument(
        "--api-base",
        type=api_base_option,
        default=None,
        help="REST base URL instead of Discord's, e.g. a gateway proxy or a simulator "
        "started elsewhere (the token still comes from DISCORD_TOKEN)",
    )
    proxy = r.add_mutually_exclusive_group()
    proxy.add_argument(
        "--proxy",
        type=proxy_option,
        default=None,
        metavar="URL",
        help="reach Discord through this HTTP proxy, http://[user:password@]host:port "
        "(default: HTTPS_PROXY and NO_PROXY, as requests reads them)",
    )
    proxy.add_argument(
        "--no-proxy",
        action="store_true",
        help="connect directly, whatever HTTPS_PROXY says",
    )
    r.add_argument(
        "--simulate", action="store_true", help="use the embedded simulator instead of Discord"
    )
    r.add_argument(
        "--simulate-events",
        type=non_negative_int,
        default=10,
        help="with --simulate: events per shard (default 10)",
    )
    service = r.add_argument_group("service mode")
    service.add_argument(
        "--sink",
        metavar="REDIS_URL",
        default=None,
        help="run as a service publishing to Redis Streams at this URL (e.g. "
        "redis://host:6379/0: a server, or any node of a Redis Cluster); needs gcluster[redis]",
    )
    service.add_argument(
        "--namespace",
        default="gcluster",
        help="key prefix of the bot in Redis: identify queue, sessions, command inboxes",
    )
    service.add_argument(
        "--stream",
        default=None,
        help="the event stream's key (default {NAMESPACE}:events; gcluster < 0.2 used "
        "gcluster:events)",
    )
    service.add_argument(
        "--per-event-streams",
        action="store_true",
        help="one stream per event name (STREAM's hash tag + name) instead of one stream",
    )
    service.add_argument(
        "--maxlen",
        type=non_negative_int,
        default=1_000_000,
        help="trim each stream to about this many entries; 0 never trims",
    )
    service.add_argument(
        "--drain-timeout",
        type=non_negative_float,
        default=10.0,
        help="on SIGTERM, seconds to publish the events already read",
    )
    service.add_argument(
        "--lease",
        action=_Switch,
        default=True,
        help="hold the shards through a lease in Redis (the default): a second process "
        "with the same --scheme waits as a standby and takes over (resuming) when this one "
        "dies, one whose --scheme overlaps or whose --shards differs is refused; "
        "--no-lease runs without one (then nothing keeps two processes off one shard)",
    )
    service.add_argument(
        "--lease-ttl",
        type=positive_float,
        default=15.0,
        help="seconds a dead holder's lease lasts before a standby takes over (default 15)",
    )
    service.add_argument(
        "--session-ttl",
        type=non_negative_float,
        default=300.0,
        help="seconds a stored session is kept once no process runs its shard (Discord "
        "forgets it after some minutes, and a RESUME then only fails); 0: for ever "
        "(default 300)",
    )
    service.add_argument(
        "--metrics-port",
        type=port_option,
        default=None,
        help="serve /metrics (Prometheus), /healthz, /readyz and the status page (/status) "
        "on this port; 0 picks a free one (logged)",
    )
    service.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="the address --metrics-port listens on (default 127.0.0.1; 0.0.0.0 for every one)",
    )
    logs = r.add_argument_group("logs (on stderr)")
    logs.add_argument(
        "--log-level",
        type=str.lower,
        choices=_LOG_LEVELS,
        default="info",
        help="the log's level (default info)",
    )
    logs.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        default="text",
        help="text lines, or one JSON object per line for log shippers (default text)",
    )
    logs.add_argument(
        "--stats-interval",
        type=non_negative_float,
        default=60.0,
        help="seconds between stats lines (events/s, stages, backlog, reconnects); "
        "0: none (default 60)",
    )
    mention_environment(r)
    r.set_defaults(func=run, parser=r)

    st = commands.add_parser(
        "status",
        help="print a service-mode bot's state from Redis: shards, lease holders, consumer groups",
        description="Print, from Redis alone, what the gateway processes of a bot run with "
        "--sink left there: each shard's holder, stage, sequence, latency and last session "
        "save; the live lease holders; the event stream's consumer groups with their "
        "pending entries and lag. Exits 1 when Redis does not answer or no gateway process "
        "has run on the namespace.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    st.add_argument(
        "--sink",
        metavar="REDIS_URL",
        required=False,
        default=None,
        help="the Redis the gateway processes run with (their --sink); needs gcluster[redis]",
    )
    st.add_argument("--namespace", default="gcluster", help="the bot's --namespace")
    st.add_argument(
        "--stream", default=None, help="the event stream's key (default {NAMESPACE}:events)"
    )
    st.add_argument("--json", action="store_true", help="print one JSON document instead")
    mention_environment(st)
    st.set_defaults(func=status, parser=st)
    return top


# --- options from the environment -----------------------------------------------------

ENV_PREFIX: Final = "GCLUSTER_"
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


def env_name(action: argparse.Action) -> str:
    """The variable an option is read from: ``--log-level`` is GCLUSTER_LOG_LEVEL."""
    if isinstance(action, argparse.BooleanOptionalAction):
        longest = action.option_strings[0]  # --lease, not --no-lease
    else:
        longest = max(action.option_strings, key=len)
    return ENV_PREFIX + longest.lstrip("-").upper().replace("-", "_")


def _from_environment(command: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of `command` that the environment may give (all but --help)."""
    return [
        action
        for action in command._actions
        if action.option_strings
        and action.dest not in ("help", argparse.SUPPRESS)
        and action.nargs != argparse.PARSER
    ]


def mention_environment(command: argparse.ArgumentParser) -> None:
    """Name each option's variable in its ``--help`` text."""
    for action in _from_environment(command):
        if action.help is not None and action.help is not argparse.SUPPRESS:
            action.help += f" [env {env_name(action)}]"
    if command.description:
        command.description += (
            f" Every option may be given in the environment as {ENV_PREFIX}<OPTION> "
            f"({ENV_PREFIX}SINK, {ENV_PREFIX}LOG_LEVEL, ...); the flag wins."
        )


def env_value(action: argparse.Action, text: str) -> Any:
    """An option's value from its variable's text, checked as the flag's would be.

    Raises:
        argparse.ArgumentTypeError: what the flag would be refused with.
    """
    if action.nargs == 0:  # a switch such as --simulate, or --lease/--no-lease
        word = text.strip().lower()
        if isinstance(action, argparse.BooleanOptionalAction) and (word in _TRUE or word in _FALSE):
            return word in _TRUE
        if word in _TRUE or word in _FALSE:
            return action.const if word in _TRUE else action.default
        raise argparse.ArgumentTypeError(f"must be 1, 0, true or false, not {text!r}")
    convert: Callable[[str], Any] = action.type if callable(action.type) else str
    try:
        value = convert(text)
    except (ValueError, TypeError) as err:  # ArgumentTypeError is neither
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: {err}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise argparse.ArgumentTypeError(f"must be one of {choices}, not {text!r}")
    return value


def apply_environment(
    command: argparse.ArgumentParser,
    given: set[str],
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Make the options' variables `command`'s defaults: a flag given on the command line wins.

    An empty variable counts as unset. A bad value exits with status 2 and
    the variable's name, as a bad flag would.

    Args:
        given: the dests of the options given on the command line.
    """
    chosen: dict[argparse.Action, str] = {}
    original = {action: action.default for action in _from_environment(command)}
    for action in _from_environment(command):
        name = env_name(action)
        text = environ.get(name, "")
        if not text or action.dest in given:
            continue
        try:
            value = env_value(action, text)
        except argparse.ArgumentTypeError as err:
            command.error(f"{name}: {err}")
        if action.nargs == 0 and value == original[action]:
            continue  # a switch turned off: as if unset
        command.set_defaults(**{action.dest: value})
        chosen[action] = name
    # Options that exclude each other: a flag beats the variable of another;
    # two variables are refused as two flags would be.
    for group in command._mutually_exclusive_groups:
        members = group._group_actions
        if any(action.dest in given for action in members):
            for action in members:
                if action in chosen:
                    command.set_defaults(**{action.dest: original[action]})
            continue
        names = [chosen[action] for action in members if action in chosen]
        if len(names) > 1:
            command.error(f"{' and '.join(names)} exclude each other: set one")


def _given(top: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[str, set[str]]:
    """The command and the dests of the options given on the command line (flags only)."""
    for sub in _subcommands(top).values():
        for action in sub._actions:
            action.default = argparse.SUPPRESS
    namespace = top.parse_args(argv)
    command = namespace.command
    return command, set(vars(namespace)) - {"command", "func", "parser"}


def _subcommands(top: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    name, given = _given(parser(), argv)
    if name in ("run", "status"):
        apply_environment(_subcommands(top)[name], given)
    args = top.parse_args(argv)
    try:
        status: int = args.func(args)
    except UsageError as err:
        command: argparse.ArgumentParser = args.parser
        command.error(str(err))
    return status


if __name__ == "__main__":
    sys.exit(main())
