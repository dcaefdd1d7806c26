"""`python -m gcluster`: what it prints, what it refuses, and the status it exits with.

The command line runs as a subprocess, as a user or a script runs it. Its
pipes are gevent's, so a simulator started by the test keeps serving while
the test waits for the command to finish.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import gevent
import pytest
import ujson
from gevent import subprocess

import gcluster
from gcluster import Intents
from gcluster.__main__ import _given, _subcommands, apply_environment, parser, version_text
from gcluster.backends import ZSTD_MODULES, zstd_backend
from gcluster.testing import GatewaySimulator

MakeSim = Callable[..., GatewaySimulator]
ROOT = Path(__file__).resolve().parent.parent
# Far below the simulator's 41.25 s heartbeat in `run --simulate`: a command
# that ends within it did not wait for the next event to notice anything.
PROMPTLY = 20.0


def environment(
    token: str | None = None, path: str | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [path, str(ROOT)])))
    env.pop("DISCORD_TOKEN", None)
    for name in [name for name in env if name.startswith("GCLUSTER_")]:
        del env[name]
    if token is not None:
        env["DISCORD_TOKEN"] = token
    env.update(extra or {})
    return env


def gcluster_cli(
    *args: str,
    token: str | None = None,
    path: str | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gcluster ARGS` to its end; DISCORD_TOKEN only when `token` is given.

    `env`: GCLUSTER_* variables (none are passed on from the test's own environment).
    """
    return subprocess.run(
        [sys.executable, "-m", "gcluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(token, path, env),
        cwd=ROOT,
    )


def shell(pipeline: str, timeout: float = PROMPTLY) -> subprocess.CompletedProcess[str]:
    """Run a shell pipeline in which `gcluster` is the command line; pipefail is on."""
    command = f"set -o pipefail; {pipeline.replace('gcluster', f'{sys.executable} -m gcluster')}"
    return subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(),
        cwd=ROOT,
    )


def assert_quiet(stderr: str) -> None:
    for noise in ("Traceback", "BrokenPipeError", "Exception ignored"):
        assert noise not in stderr, stderr


# --- what it does -------------------------------------------------------------------


def test_demo_runs_to_completion_with_a_summary() -> None:
    result = gcluster_cli("demo", "--shards", "4", "--events", "2000", "--rate", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    summary = lines.index(next(line for line in lines if line.startswith("summary:")))
    assert lines[summary].startswith("summary: 2000 events")
    rows = [line.split() for line in lines[summary + 2 : summary + 6]]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]
    assert sum(int(row[1]) for row in rows) == 2000
    assert all(row[-1] == "connected" for row in rows)


def test_run_simulate_prints_one_json_object_per_line() -> None:
    result = gcluster_cli(
        "run",
        "--simulate",
        "--shards",
        "2",
        "--events",
        "MESSAGE_CREATE",
        "--limit",
        "4",
        "--simulate-events",
        "10",
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == 4
    assert {e["t"] for e in events} == {"MESSAGE_CREATE"}
    assert all(set(e) == {"shard", "t", "s", "d"} for e in events)


def test_run_without_a_token_says_so() -> None:
    result = gcluster_cli("run")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "python -m gcluster run: error: DISCORD_TOKEN is not set (or use --simulate)"
    ]


@pytest.mark.parametrize("command", ["demo", "run"])
def test_help_says_what_each_command_does(command: str) -> None:
    result = gcluster_cli(command, "--help")
    assert result.returncode == 0
    assert "simulator" in result.stdout if command == "demo" else "DISCORD_TOKEN" in result.stdout


# --- exit status ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [(), ("demo",), ("run",)])
def test_help_lists_every_exit_status(command: tuple[str, ...]) -> None:
    result = gcluster_cli(*command, "--help")
    assert result.returncode == 0
    epilog = result.stdout[result.stdout.index("exit status:") :]
    for status, meaning in [("0", "done"), ("1", "an error"), ("2", "usage"), ("3", "4014")]:
        assert re.search(rf"^  {status}  .*{meaning}", epilog, re.M | re.S), epilog


def test_disallowed_intents_exit_3_with_the_close_in_one_line(make_sim: MakeSim) -> None:
    sim = make_sim(shards=1, privileged_intents=0)
    result = gcluster_cli(
        "run",
        "--api-base",
        sim.api_base,
        "--shards",
        "1",
        "--intents",
        "GUILDS,GUILD_MEMBERS",
        token=sim.token,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    assert [close.code for close in sim.records.closes] == [4014]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: shard 0 closed by the gateway with 4014: Disallowed intent(s)."]
    assert_quiet(result.stderr)


def test_a_refused_token_exits_3(make_sim: MakeSim) -> None:
    sim = make_sim(shards=1)
    result = gcluster_cli("run", "--api-base", sim.api_base, token="not-the-token", timeout=60)
    assert result.returncode == 3, result.stderr
    assert [(r.path, r.status) for r in sim.records.requests] == [("/api/v10/gateway/bot", 401)]
    assert sim.records.identifies == []
    assert "error: refused with 4004" in result.stderr
    assert_quiet(result.stderr)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("demo", "--shards", "0"), "argument --shards: must be a positive integer, not '0'"),
        (("demo", "--shards", "-3"), "argument --shards"),
        (("demo", "--shards", "many"), "argument --shards"),
        (("demo", "--events", "-5"), "argument --events: must be a positive integer, not '-5'"),
        (("demo", "--events", "0"), "argument --events"),
        (("demo", "--rate", "-1"), "argument --rate: must be a number, 0 or more"),
        (("demo", "--rate", "nan"), "argument --rate"),
        (("demo", "--duration", "0"), "argument --duration: must be a positive number"),
        (("demo", "--heartbeat", "0"), "argument --heartbeat"),
        (("demo", "--heartbeat", "inf"), "argument --heartbeat"),
        (("demo", "--sample", "0"), "argument --sample"),
        (("run", "--simulate", "--shards", "0"), "argument --shards"),
        (("run", "--limit", "0"), "argument --limit"),
        (("run", "--limit", "-1"), "argument --limit"),
        (("run", "--simulate-events", "-1"), "argument --simulate-events"),
        (("run", "--log-level", "loud"), "argument --log-level: invalid choice: 'loud'"),
        (("run", "--intents", "GUILDS,NOPE"), "argument --intents: unknown intent 'NOPE'"),
        (("run", "--intents", "-1"), "argument --intents: unknown intent '-1'"),
        (("run", "--intents", "67108864"), "argument --intents: 67108864 sets bits no intent"),
        (("run", "--intents", ","), "argument --intents: no intents given"),
        (("run", "--events", "NOPE"), "argument --events: unknown event type 'NOPE'"),
        (("run", "--api-base", "localhost:8080"), "argument --api-base: must be an http://"),
        (("run", "--api-base", "ftp://example.com/api"), "argument --api-base"),
        (("run", "--api-base", "http://"), "argument --api-base"),
        (("run", "--api-base", "http://example.com:port"), "argument --api-base"),
        (("run", "--scheme", "slices:1"), "--scheme must be auto, process:I/N or range:A-B"),
        (("run", "--scheme", "process:0/2"), "needs the bot's shard count"),
        (("run", "--simulate", "--api-base", "http://example.com"), "leave out --api-base"),
        (("run", "--sink", "redis://127.0.0.1:1/0", "--limit", "5"), "--limit counts"),
        (("run", "--maxlen", "-1"), "argument --maxlen"),
        (("run", "--drain-timeout", "-1"), "argument --drain-timeout"),
        (("run", "--lease-ttl", "0"), "argument --lease-ttl"),
        ((), "the following arguments are required: command"),
    ],
)
def test_bad_input_gets_one_line_and_status_2(args: tuple[str, ...], complaint: str) -> None:
    # A token is set: the command line must be refused for itself, not for lacking one.
    result = gcluster_cli(*args, token="a-token", timeout=30)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("python -m gcluster") and complaint in line, line
    assert result.stdout == ""


@pytest.mark.parametrize("token", ["", "   ", "Bot "])
def test_a_blank_token_gets_one_line_and_status_2(token: str) -> None:
    result = gcluster_cli("run", token=token, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "python -m gcluster run: error: DISCORD_TOKEN is blank (or use --simulate)"
    ]


def test_sink_without_the_redis_extra_gets_one_line_and_status_1(tmp_path: Path) -> None:
    # A `redis` package that fails to import, found before the installed one.
    hidden = tmp_path / "redis"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError(\"No module named 'redis'\")\n")
    result = gcluster_cli(
        "run", "--simulate", "--sink", "redis://127.0.0.1:1/0", path=str(tmp_path), timeout=30
    )
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: --sink needs the redis extra: pip install 'gcluster[redis]'")


def test_intents_may_be_names_integers_or_both() -> None:
    def intents(text: str) -> Intents:
        parsed: Intents = parser().parse_args(["run", "--intents", text]).intents
        return parsed

    assert intents("513") == Intents.GUILDS | Intents.GUILD_MESSAGES
    assert intents("guilds, 512") == Intents.GUILDS | Intents.GUILD_MESSAGES
    assert intents("0") == Intents(0)
    assert parser().parse_args(["run"]).intents == Intents.GUILDS | Intents.GUILD_MESSAGES


def test_integer_intents_reach_the_identify(make_sim: MakeSim) -> None:
    sim = make_sim(shards=1)
    result = gcluster_cli(
        "run",
        "--api-base",
        sim.api_base,
        "--shards",
        "1",
        "--intents",
        "33281",  # GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT
        "--events",
        "READY",
        "--limit",
        "1",
        token=sim.token,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [identify.intents for identify in sim.records.identifies] == [33281]


# --- a reader that leaves early -------------------------------------------------------------


def test_run_piped_into_head_ends_quietly() -> None:
    result = shell("gcluster run --simulate | head -1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["shard"] == 0
    assert_quiet(result.stderr)


def test_demo_piped_into_head_ends_quietly_and_promptly() -> None:
    # Ten lines come at once; at 100 events/s the demo alone would take 200 s.
    result = shell("gcluster demo --rate 100 --sample 1 | head")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("gcluster demo: 4 shards")
    assert_quiet(result.stderr)


def test_run_notices_its_reader_leaving_while_no_event_comes() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gcluster", "run", "--simulate", "--simulate-events", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        numbered = 0
        with gevent.Timeout(PROMPTLY):
            while numbered < 4:  # READY and the 3 events: nothing more comes until a heartbeat
                numbered += json.loads(process.stdout.readline())["s"] is not None
        process.stdout.close()
        started = time.monotonic()
        status = process.wait(timeout=PROMPTLY)
        assert status == 0
        assert time.monotonic() - started < PROMPTLY
        assert process.stderr is not None
        assert_quiet(process.stderr.read())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- version, scale, and a demo that is piped ----------------------------------------------------


def test_version_names_what_gcluster_runs_on() -> None:
    result = gcluster_cli("--version", timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"gcluster {gcluster.__version__}"
    assert lines[1].startswith(f"Python {platform.python_version()} ")
    assert lines[2].startswith(f"gevent {gevent.__version__} ")
    # The libraries, as this interpreter has them (the next two tests pin each case).
    assert lines[3:] == version_text().splitlines()[3:]
    assert [line.split(":")[0] for line in lines[3:]] == [
        "JSON decoder",
        "zlib-stream",
        "zstd-stream",
    ]


def test_version_without_the_extras_names_the_standard_libraries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As installed without the fast and zstd extras, on Python before 3.14.
    for module in ("orjson", "zlib_ng", "zlib_ng.zlib_ng", *(m for m, _ in ZSTD_MODULES)):
        monkeypatch.setitem(sys.modules, module, None)
    assert version_text().splitlines()[3:] == [
        f"JSON decoder: ujson {ujson.__version__} "
        "(orjson is not installed: pip install 'gcluster[fast]')",
        f"zlib-stream: zlib {zlib.ZLIB_RUNTIME_VERSION} "
        "(zlib-ng is not installed: pip install 'gcluster[fast]')",
        "zstd-stream: no zstd library: pip install 'gcluster[zstd]'",
    ]


@pytest.mark.extras  # the fast and zstd extras
def test_version_with_the_extras_names_the_faster_libraries() -> None:
    import orjson

    result = gcluster_cli("--version", timeout=30)
    assert result.returncode == 0, result.stderr
    zstd = "compression.zstd" if sys.version_info >= (3, 14) else "backports.zstd"
    assert result.stdout.splitlines()[3:] == [
        f"JSON decoder: orjson {orjson.__version__} (the fast extra)",
        f"zlib-stream: zlib_ng.zlib_ng {importlib.metadata.version('zlib-ng')} (the fast extra)",
        f"zstd-stream: {zstd_backend(zstd)}",
    ]


def test_the_demo_starts_a_thousand_shards() -> None:
    # Discord's 1,000 daily session starts, one kept spare, would not cover them.
    result = gcluster_cli("demo", "--shards", "1000", "--events", "1000", "--rate", "0")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    lines = result.stdout.splitlines()
    summary = lines.index(next(line for line in lines if line.startswith("summary:")))
    assert lines[summary].startswith("summary: 1000 events")
    rows = [line.split() for line in lines[summary + 2 :]]
    assert len(rows) == 1000
    assert all(row[2] == "1" and row[-1] == "connected" for row in rows)  # one IDENTIFY each


def test_a_piped_demo_prints_progress_lines_not_the_table() -> None:
    result = gcluster_cli(
        "demo", "--events", "100000", "--rate", "1000", "--duration", "5.5", "--sample", "100000"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "\x1b[" not in result.stdout
    assert not any(" | " in line or line.lstrip().startswith("shard  stage") for line in lines)
    progress = [line for line in lines if re.match(r"^\d+ s: \d+ events, \d+ events/s; ", line)]
    assert len(progress) == 1, lines
    assert progress[0].endswith("; shards: 4 connected")
    assert all(len(line) <= 100 for line in lines)
    assert any(line.startswith("summary: ") for line in lines)


# --- options from the environment ---------------------------------------------------


def shards_printed(stdout: str) -> set[int]:
    return {json.loads(line)["shard"] for line in stdout.splitlines()}


def test_run_options_come_from_the_environment_and_a_flag_wins() -> None:
    env = {"GCLUSTER_SHARDS": "3", "GCLUSTER_SIMULATE": "true", "GCLUSTER_SIMULATE_EVENTS": "1"}
    from_env = gcluster_cli("run", "--events", "MESSAGE_CREATE", "--limit", "3", env=env)
    assert from_env.returncode == 0, from_env.stderr
    assert shards_printed(from_env.stdout) == {0, 1, 2}

    flag = gcluster_cli(
        "run", "--events", "MESSAGE_CREATE", "--limit", "2", "--shards", "2", env=env
    )
    assert flag.returncode == 0, flag.stderr
    assert shards_printed(flag.stdout) == {0, 1}


def test_a_bad_variable_is_ignored_when_its_flag_is_given() -> None:
    result = gcluster_cli(
        "run", "--simulate", "--shards", "1", "--limit", "1", env={"GCLUSTER_SHARDS": "x"}
    )
    assert result.returncode == 0, result.stderr


def test_a_switch_turned_off_in_the_environment_is_off() -> None:
    result = gcluster_cli("run", "--shards", "1", "--limit", "1", env={"GCLUSTER_SIMULATE": "0"})
    assert result.returncode == 2
    assert "DISCORD_TOKEN is not set (or use --simulate)" in result.stderr


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"GCLUSTER_SHARDS": "x"}, "GCLUSTER_SHARDS: must be a positive integer, not 'x'"),
        ({"GCLUSTER_SHARDS": "0"}, "GCLUSTER_SHARDS: must be a positive integer, not '0'"),
        ({"GCLUSTER_LEASE": "maybe"}, "GCLUSTER_LEASE: must be 1, 0, true or false, not 'maybe'"),
        ({"GCLUSTER_LOG_LEVEL": "loud"}, "GCLUSTER_LOG_LEVEL: must be one of debug, info"),
        ({"GCLUSTER_LOG_FORMAT": "xml"}, "GCLUSTER_LOG_FORMAT: must be one of text, json"),
        ({"GCLUSTER_INTENTS": "NOPE"}, "GCLUSTER_INTENTS: unknown intent 'NOPE'"),
        ({"GCLUSTER_STATS_INTERVAL": "-1"}, "GCLUSTER_STATS_INTERVAL: must be a number, 0 or"),
        (
            {"GCLUSTER_PROXY": "http://proxy:3128", "GCLUSTER_NO_PROXY": "1"},
            "GCLUSTER_PROXY and GCLUSTER_NO_PROXY exclude each other",
        ),
    ],
)
def test_a_bad_variable_gets_one_line_naming_it_and_status_2(
    env: dict[str, str], complaint: str
) -> None:
    result = gcluster_cli("run", "--simulate", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("python -m gcluster run: error: ")
    assert complaint in line


def test_run_help_names_each_options_variable() -> None:
    result = gcluster_cli("run", "--help")
    text = " ".join(result.stdout.split())  # help wraps lines
    run = next(a for a in parser()._actions if a.dest == "command").choices["run"]
    for action in run._actions:
        if action.option_strings and action.dest != "help":
            # The first spelling: --lease of --lease/--no-lease.
            name = "GCLUSTER_" + action.option_strings[0].lstrip("-").upper().replace("-", "_")
            assert f"[env {name}]" in text, name


def parsed(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    """What `main` would run `argv` with, given these variables."""
    top = parser()
    name, given = _given(parser(), argv)
    apply_environment(_subcommands(top)[name], given, environ)
    return top.parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "environ", "lease"),
    [
        ([], {}, True),  # the lease is the default
        (["--no-lease"], {}, False),
        ([], {"GCLUSTER_LEASE": "0"}, False),
        ([], {"GCLUSTER_LEASE": "false"}, False),
        (["--lease"], {"GCLUSTER_LEASE": "0"}, True),  # the flag wins
        (["--no-lease"], {"GCLUSTER_LEASE": "1"}, False),
    ],
)
def test_the_lease_is_on_unless_turned_off(
    argv: list[str], environ: dict[str, str], lease: bool
) -> None:
    args = parsed(["run", "--simulate", "--sink", "redis://x", *argv], environ)
    assert args.lease is lease


def test_session_ttl_and_status_options_come_from_the_environment() -> None:
    run = parsed(["run", "--simulate"], {"GCLUSTER_SESSION_TTL": "60"})
    assert run.session_ttl == 60.0
    assert parsed(["run", "--simulate"], {}).session_ttl == 300.0
    status = parsed(["status"], {"GCLUSTER_SINK": "redis://h:1/0", "GCLUSTER_NAMESPACE": "b"})
    assert (status.sink, status.namespace, status.stream) == ("redis://h:1/0", "b", None)


def test_json_log_lines_for_a_log_shipper() -> None:
    result = gcluster_cli(
        "run", "--simulate", "--shards", "2", "--limit", "2", env={"GCLUSTER_LOG_FORMAT": "json"}
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    ready = [line for line in lines if line.get("step") == "ready"]
    assert sorted(line["shard"] for line in ready) == [0, 1]
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    # The end-of-run shard table comes as log lines too.
    assert any(line.get("step") == "summary" for line in lines)
