"""examples/flask_app.py in both modes, through real HTTP, against this test's simulator.

The app runs in a child process pointed at the simulator (``--api-base``,
DISCORD_TOKEN); the test talks HTTP to it from gevent's thread pool, so the
simulator in this hub keeps serving meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from conftest import TIMEOUT
from gevent import subprocess

from gcluster import shard_for_guild
from gcluster.testing import GatewaySimulator

MakeSim = Callable[..., GatewaySimulator]
ROOT = Path(__file__).resolve().parent.parent
SHARDS = 3

pytestmark = pytest.mark.extras


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP request, run in a real thread so this hub is not blocked."""

    def call() -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    result: tuple[int, Any] = gevent.get_hub().threadpool.apply(call)
    return result


@pytest.fixture(params=["gevent", "thread"])
def app(
    request: pytest.FixtureRequest, make_sim: MakeSim
) -> Iterator[tuple[str, GatewaySimulator]]:
    """The running app's base URL, and the simulator behind it."""
    sim = make_sim(shards=SHARDS, max_concurrency=SHARDS)
    env = dict(os.environ)
    env["DISCORD_TOKEN"] = sim.token
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "flask_app.py"),
            "--mode",
            request.param,
            "--port",
            "0",
            "--api-base",
            sim.api_base,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        with gevent.Timeout(TIMEOUT, AssertionError("the app did not start")):
            line = proc.stdout.readline().decode()
        assert line.startswith("listening on http://"), proc.stderr.read().decode()
        yield line.split()[2], sim
        # A clean stop: SIGTERM brings the cluster down and the process exits 0.
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr.read().decode()
        assert sim.wait_until(lambda: len(sim.records.closes) == SHARDS, TIMEOUT)
        assert sorted(c.code for c in sim.records.closes) == [1000] * SHARDS
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shards_route_shows_every_shard(app: tuple[str, GatewaySimulator]) -> None:
    url, sim = app
    status, shards = http("GET", f"{url}/shards")
    assert status == 200
    assert [shard["id"] for shard in shards] == list(range(SHARDS))
    sessions = {i.shard_id: i.session_id for i in sim.records.identifies}
    for shard in shards:
        assert shard["stage"] == "connected"
        assert shard["session"] == sessions[shard["id"]]
        assert shard["sequence"] == 1  # READY
        assert shard["latency"] is None or shard["latency"] >= 0


def test_presence_route_reaches_every_shard(app: tuple[str, GatewaySimulator]) -> None:
    url, sim = app
    status, answer = http("POST", f"{url}/presence", {"status": "dnd", "activity": "HTTP"})
    assert status == 200 and answer == {"sent": [0, 1, 2], "failed": {}}
    assert sim.wait_until(lambda: len(sim.records.commands) == SHARDS, TIMEOUT)
    assert sorted(c.shard_id for c in sim.records.commands) == [0, 1, 2]
    for command in sim.records.commands:
        assert command.op == 3 and command.data["status"] == "dnd"
        assert command.data["activities"] == [{"name": "HTTP", "type": 0}]

    status, answer = http("POST", f"{url}/presence", {"status": "sleepy"})
    assert status == 400 and "status" in answer["error"]


def test_members_route_goes_to_the_guilds_shard(app: tuple[str, GatewaySimulator]) -> None:
    url, sim = app
    for shard_id in range(SHARDS):
        guild_id = sim.guild_ids(shard_id)[0]
        assert shard_for_guild(guild_id, SHARDS) == shard_id
        body = {"query": "a", "limit": 5, "nonce": f"n{shard_id}"}
        status, answer = http("POST", f"{url}/guilds/{guild_id}/members", body)
        assert status == 202 and answer == {"shard": shard_id}
    assert sim.wait_until(lambda: len(sim.records.commands) == SHARDS, TIMEOUT)
    for command in sim.records.commands:
        assert command.op == 8
        assert command.data["guild_id"] == str(sim.guild_ids(command.shard_id)[0])
        assert command.data["nonce"] == f"n{command.shard_id}"

    bad = {"query": "a", "user_ids": [1]}
    status, answer = http("POST", f"{url}/guilds/{sim.guild_ids(0)[0]}/members", bad)
    assert status == 400 and "exactly one" in answer["error"]
