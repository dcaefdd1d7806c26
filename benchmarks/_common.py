"""What every benchmark shares: paths, CPU pinning, the simulator process, results files.

Benchmarks run from a checkout (``python benchmarks/throughput.py``); this
module puts the checkout on ``sys.path`` so ``gcluster`` imports without being
installed. The simulator runs in a child process pinned to the second core,
the client under test on the first, so each has a core of its own.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import gevent
import gevent.subprocess

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
VENV = BENCHMARKS / ".venv-bench"
VENV_PYTHON = VENV / "bin" / "python"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# GCLUSTER_BENCH_NO_FAST=1 measures gcluster as installed without the `fast`
# extra: zlib-ng and orjson are hidden from this process (None in sys.modules
# makes their import fail), so gcluster.backends falls back to zlib and ujson,
# exactly as when they are not installed. Set before gcluster is imported.
FAST = os.environ.get("GCLUSTER_BENCH_NO_FAST", "") in ("", "0")
FAST_MODULES = ("orjson", "zlib_ng", "zlib_ng.zlib_ng")
if not FAST:
    for _module in FAST_MODULES:
        sys.modules[_module] = None  # type: ignore[assignment]
    # Results without the extra go beside the others, not over them.
    RESULTS = RESULTS / "nofast"

from gcluster import Cluster, Intents, ShardScheme  # noqa: E402
from gcluster.testing import STREAM_INTENTS, SimulatorProcess  # noqa: E402

# What a service-mode benchmark's `python -m gcluster run` delivers and identifies with:
# every kind `GatewaySimulator.send_events` numbers, so each sent event is published.
SERVICE_EVENTS = "MESSAGE_CREATE,MESSAGE_UPDATE,MESSAGE_DELETE,TYPING_START,PRESENCE_UPDATE"
SERVICE_INTENTS = "GUILDS,GUILD_MESSAGES,GUILD_MESSAGE_TYPING,GUILD_PRESENCES"
#: Seconds `wait` and `Child.wait_for` wait by default.
TIMEOUT = 60.0

# GUILD_MESSAGE_TYPING brings the TYPING_START that ends a filtered run (_stream.blast_run).
# Every kind the simulator's streams send (it withholds what a session's intents
# do not bring, as Discord does): a benchmark that counts every event needs them all.
INTENTS = Intents.GUILDS | STREAM_INTENTS
CLIENT_CPU = 0
SIMULATOR_CPU = 1


# GCLUSTER_BENCH_NO_PIN=1 leaves both processes to the scheduler, e.g. on a
# machine where other work already occupies the first core.
PIN = os.environ.get("GCLUSTER_BENCH_NO_PIN", "") in ("", "0")


def pin_client() -> None:
    """Keep this process on the first core; the simulator gets the second."""
    if PIN and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {CLIENT_CPU})


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_simulator(**options: Any) -> SimulatorProcess:
    """A simulator in its own process, on the second core when there is one."""
    options.setdefault("identify_interval", 0)
    cpu = SIMULATOR_CPU if PIN and (os.cpu_count() or 1) > 1 else None
    return SimulatorProcess(options, cpu=cpu)


def make_cluster(
    sim: SimulatorProcess, shard_ids: Iterable[int], total: int, **options: Any
) -> Cluster:
    """A cluster on ``shard_ids`` of ``total``, up and ready."""
    ids = list(shard_ids)
    cluster = Cluster(
        sim.token,
        INTENTS,
        api_base=sim.api_base,
        shard_scheme=ShardScheme.range(ids, total),
        **options,
    )
    cluster.up(timeout=120)
    if not cluster.wait_until_ready(120):
        raise RuntimeError("the cluster did not get ready")
    if not sim.wait_connected(ids, timeout=60):
        raise RuntimeError("the simulator does not see every shard connected")
    return cluster


class Child:
    """A child process of a benchmark; its stderr lines are kept for when it fails.

    Args:
        argv: the command, e.g. ``[sys.executable, "-m", "gcluster", "run", ...]``.
        env: variables added to this process's environment; the checkout is
            put on ``PYTHONPATH`` so ``gcluster`` imports uninstalled.

    .. important:: Start it from the gevent hub that waits on it.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        environ = dict(os.environ, **(env or {}))
        environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), environ.get("PYTHONPATH")])
        )
        self.argv = list(argv)
        self.process = gevent.subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environ, cwd=ROOT
        )
        self.pid: int = self.process.pid
        self.lines: list[str] = []
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> None:
        """Wait until a line of its log holds ``text``.

        Raises:
            RuntimeError: not within ``timeout`` seconds (the log's tail attached).
        """
        wait(lambda: any(text in line for line in self.lines), f"{text!r}", self, timeout)

    def exited(self, timeout: float | None = None) -> int | None:
        """Its exit status once it exited (waiting up to ``timeout`` s), else None."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout=5)  # the log's last lines
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def tail(self, count: int = 30) -> str:
        return "\n".join(self.lines[-count:])


class Service(Child):
    """One `python -m gcluster run` process (``args`` after ``run``), with the bot token."""

    def __init__(self, args: Sequence[str], token: str) -> None:
        super().__init__(
            [sys.executable, "-m", "gcluster", "run", *args], env={"DISCORD_TOKEN": token}
        )


def wait(
    predicate: Callable[[], object],
    what: str,
    child: Child | None = None,
    timeout: float = TIMEOUT,
) -> None:
    """Wait cooperatively (polling every 10 ms) until ``predicate()`` is true.

    Raises:
        RuntimeError: not within ``timeout`` seconds; with ``child``, its log's tail.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = child.tail() if child is not None else ""
            raise RuntimeError(f"no {what} within {timeout} s\n{log}")
        gevent.sleep(0.01)


def cpu_seconds() -> float:
    """This process's CPU time (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kb() -> int:
    """This process's resident set size now, in KiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def flat_verdict(
    samples: Sequence[tuple[float, float]], warm_up: float, growth: float = 1.05
) -> dict[str, Any]:
    """Whether a memory figure is flat after ``warm_up`` s: the last third's peak vs the first's.

    Args:
        samples: (seconds since the start, value) pairs, in order.
        growth: the largest ratio of the two peaks that still counts as flat.
    """
    after = [(t, value) for t, value in samples if t >= warm_up]
    third = len(after) // 3
    if third < 2:
        return {"flat": None, "why": f"{len(after)} samples after the warm-up: too few to tell"}
    first = max(value for _, value in after[:third])
    last = max(value for _, value in after[-third:])
    # Least squares over every sample after the warm-up, for the JSON.
    mean_t = sum(t for t, _ in after) / len(after)
    mean_value = sum(value for _, value in after) / len(after)
    spread = sum((t - mean_t) ** 2 for t, _ in after)
    slope = (
        sum((t - mean_t) * (value - mean_value) for t, value in after) / spread if spread else 0.0
    )
    return {
        "flat": last <= first * growth,
        "first_third_max": first,
        "last_third_max": last,
        "growth": last / first if first else float("inf"),
        "slope_per_minute": slope * 60,
        "samples_per_third": third,
    }


def compression_name(value: bool | str | None) -> str:
    if value is True:
        return "zlib-stream"
    return str(value) if value else "none"


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def environment() -> dict[str, Any]:
    """Where and on what the figures were measured."""
    try:
        revision = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--", "gcluster"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        revision, dirty = "", False
    import ujson

    from gcluster import backends

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gevent": gevent.__version__,
        "ujson": ujson.__version__,
        # What gcluster inflates and decodes with in this run (the `fast` extra or not).
        "fast": FAST,
        "backends": backends.in_use().to_dict(),
        "git": revision + ("+dirty" if dirty else ""),
        # Other work on the machine skews every figure: look here first.
        "loadavg": os.getloadavg(),
        "pinned": PIN,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "command": command_line(), "environment": environment()}
    payload.update(data)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def command_line() -> str:
    script = Path(sys.argv[0])
    try:
        shown = str(script.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(script)
    return " ".join(["python", shown, *sys.argv[1:]])


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                value.rjust(w) if _numeric(value) else value.ljust(w)
                for value, w in zip(row, widths, strict=True)
            )
        )
    return "\n".join(lines)


def _numeric(value: str) -> bool:
    return (
        value.replace(",", "")
        .replace(".", "")
        .replace("x", "")
        .replace("%", "")
        .strip("-")
        .isdigit()
    )


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)
