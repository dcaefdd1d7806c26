"""`python -m gcluster`: the demo runs to completion and `run --simulate` prints JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gcluster(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "gcluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_demo_runs_to_completion_with_a_summary() -> None:
    result = gcluster("demo", "--shards", "4", "--events", "2000", "--rate", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    summary = lines.index(next(line for line in lines if line.startswith("summary:")))
    assert lines[summary].startswith("summary: 2000 events")
    rows = [line.split() for line in lines[summary + 2 : summary + 6]]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]
    assert sum(int(row[1]) for row in rows) == 2000
    assert all(row[-1] == "connected" for row in rows)


def test_run_simulate_prints_one_json_object_per_line() -> None:
    result = gcluster(
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
    env_token = os.environ.pop("DISCORD_TOKEN", None)
    try:
        result = gcluster("run")
    finally:
        if env_token is not None:
            os.environ["DISCORD_TOKEN"] = env_token
    assert result.returncode == 2
    assert "DISCORD_TOKEN" in result.stderr


@pytest.mark.parametrize("command", ["demo", "run"])
def test_help_says_what_each_command_does(command: str) -> None:
    result = gcluster(command, "--help")
    assert result.returncode == 0
    assert "simulator" in result.stdout if command == "demo" else "DISCORD_TOKEN" in result.stdout
