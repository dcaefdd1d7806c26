"""Every example, run with ``--simulate`` as a user would: it prints what it promises, exits 0."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gevent import subprocess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# Each example ends by itself within a few seconds; this only bounds a broken one.
LIMIT = 30.0


def run(name: str, *args: str, simulate: bool = True) -> tuple[int, str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("DISCORD_TOKEN", None)
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), *args]
    if simulate:
        command.append("--simulate")
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(ROOT)
    )
    try:
        out, err = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), err.decode()


def check_basic(out: str) -> None:
    lines = out.splitlines()
    messages = [line for line in lines if line.endswith("got a new message")]
    # 10 events a shard cycle through 5 kinds: 2 MESSAGE_CREATE per shard.
    assert sorted(messages) == ["Shard 0 got a new message"] * 2 + ["Shard 1 got a new message"] * 2
    assert "simulator: 2 identifies, 0 resumes" in out


def check_dispatcher(out: str) -> None:
    # 20 events a shard: 4 MESSAGE_CREATE and 4 MESSAGE_UPDATE each.
    assert re.search(r"^handled 16 messages in \d+ channels", out, re.M)
    assert "order kept in every channel: yes" in out
    peak = int(re.search(r"most handled at once: (\d+) \(pool of 20\)", out)[1])  # type: ignore[index]
    assert 1 < peak <= 20
    assert "in_flight=0 pending=0; handler calls:" in out and "failed=0" in out


def check_resume(out: str) -> None:
    assert "first cluster read 10 events" in out
    assert "saved 2 sessions to a JSON file" in out
    assert "second cluster resumed shards [0, 1] and read 14 events" in out
    assert "simulator: 2 identifies, 2 resumes" in out


def check_move_shard(out: str) -> None:
    assert "shard 1 moved: first runs [0], second [1]" in out
    assert "shard 0 moved: first runs [], second [0, 1]" in out
    # 5 events a shard before the moves, 5 after: each read once, by one cluster or the other.
    assert "events read: shard 0: 10, shard 1: 10" in out
    assert "simulator: 2 identifies, 2 resumes" in out


def check_threaded(out: str) -> None:
    assert "presence sent to shards [0, 1]" in out
    assert re.search(r"^shard 0: connected, session \w+$", out, re.M)
    assert len(re.findall(r"^\[reader\] shard \d: new message$", out, re.M)) == 4
    assert "messages: 4," in out
    assert "gevent monkey-patched: False" in out
    assert "commands: op 3 on shard 0, op 3 on shard 1" in out


def check_commands(out: str) -> None:
    assert out.count("presence -> shard") == 2
    asked = re.findall(r"^members of guild (\d+) -> shard (\d)$", out, re.M)
    answered = re.findall(r"^chunk for guild (\d+) on shard (\d) \(asked shard (\d)\)", out, re.M)
    assert sorted(asked) == sorted((guild, shard) for guild, shard, _ in answered)
    assert all(shard == expected for _, shard, expected in answered)
    assert {shard for _, shard in asked} == {"0", "1"}
    assert "answers: 2 of 2" in out
    assert "op 8 on shard 0, op 8 on shard 1" in out


def check_flask(mode: str) -> Callable[[str], None]:
    def check(out: str) -> None:
        assert re.search(rf"^listening on http://127\.0\.0\.1:\d+ \({mode}\)$", out, re.M)
        assert "GET /shards -> 2 shards: 0:connected, 1:connected" in out
        assert "POST /presence -> sent to shards [0, 1]" in out
        assert re.search(r"^POST /guilds/\d+/members -> shard 1$", out, re.M)
        assert "commands: op 3 on shard 0, op 3 on shard 1, op 8 on shard 1" in out

    return check


CASES: dict[str, tuple[tuple[str, ...], Callable[[str], None]]] = {
    "basic": ((), check_basic),
    "dispatcher": ((), check_dispatcher),
    "resume": ((), check_resume),
    "move_shard": ((), check_move_shard),
    "threaded": ((), check_threaded),
    "commands": ((), check_commands),
    "flask_app-gevent": (("--mode", "gevent"), check_flask("gevent")),
    "flask_app-thread": (("--mode", "thread"), check_flask("threads")),
}


# The Flask example needs Flask, which the test extra installs but the core does not.
PARAMS = [
    pytest.param(case, marks=pytest.mark.extras) if case.startswith("flask") else case
    for case in sorted(CASES)
]


@pytest.mark.parametrize("case", PARAMS)
def test_example_runs_against_the_simulator(case: str) -> None:
    args, check = CASES[case]
    code, out, err = run(case.split("-")[0], *args)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    check(out)


# Examples that need a Redis server are run by the Redis test modules.
TESTED_ELSEWHERE = {
    "multiprocess": "tests/test_multiprocess.py",
    "workers": "tests/test_streams.py",
}


def test_every_example_is_run() -> None:
    scripts = {path.stem for path in EXAMPLES.glob("*.py") if not path.stem.startswith("_")}
    assert scripts == {case.split("-")[0] for case in CASES} | set(TESTED_ELSEWHERE) & scripts


def test_without_a_token_an_example_says_what_to_do() -> None:
    code, out, err = run("basic", simulate=False)
    assert code != 0
    assert "DISCORD_TOKEN is not set" in err and "--simulate" in err


# --- what an example needs, said in one line ---------------------------------------------

# Python's start and gcluster's imports take most of it; the checks themselves are
# immediate (a Redis that is not there refuses the connection at once). Before
# them, a missing Redis cost 30 s and a page of tracebacks.
PROMPT = 5.0

# Runs an example as a script, with one module made unimportable: None in
# sys.modules is how Python marks a module that must not be imported.
WITHOUT = """
import runpy, sys
sys.modules[sys.argv[1]] = None
sys.path.insert(0, {examples!r})
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_quick(name: str, *args: str, without: str | None = None) -> tuple[int, str, float]:
    """Run an example (without `without`); its exit code, stderr and seconds taken."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    script = str(EXAMPLES / f"{name}.py")
    if without is None:
        command = [sys.executable, script, *args]
    else:
        code = WITHOUT.format(examples=str(EXAMPLES))
        command = [sys.executable, "-c", code, without, script, *args]
    started = time.monotonic()
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=LIMIT
    )
    return proc.returncode, proc.stderr, time.monotonic() - started


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("name", "args", "missing", "install"),
    [
        ("flask_app", ("--simulate",), "flask", "pip install flask"),
        ("workers", ("--simulate",), "redis", "pip install 'gcluster[redis]'"),
        ("multiprocess", ("--simulate", "--redis", "redis://127.0.0.1:6379/0"), "redis",
         "pip install 'gcluster[redis]'"),
    ],
)  # fmt: skip
def test_an_example_without_its_package_says_what_to_install(
    name: str, args: tuple[str, ...], missing: str, install: str
) -> None:
    code, err, took = run_quick(name, *args, without=missing)
    assert code != 0
    assert err.splitlines() == [f"{name}.py: needs the {missing} package: {install}"]
    assert took < PROMPT


@pytest.mark.extras  # the redis package
@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("multiprocess", ("--simulate", "--redis")),
        ("workers", ("--simulate", "--redis")),
        ("workers", ("--name", "w1", "--redis")),
    ],
    ids=["multiprocess", "workers-simulate", "workers"],
)
def test_an_example_without_a_reachable_redis_says_to_start_one(
    name: str, args: tuple[str, ...]
) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    code, err, took = run_quick(name, *args, url)
    assert code != 0
    (line,) = err.splitlines()
    assert line.startswith(f"{name}.py: no Redis answers at {url} (")
    assert line.endswith("): start one (redis-server), or pass its URL")
    assert took < PROMPT
