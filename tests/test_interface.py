"""GatewayCluster and GatewayShard: Cluster and ThreadedCluster offer the same, and do the same.

mypy checks the assignments (tests/test_typing.py); here the members are
compared at run time, and one function written against the interface alone
runs on both clusters, each against a simulator in a process of its own.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any, cast

import gevent
import pytest
from conftest import TIMEOUT

from gcluster import (
    Cluster,
    Event,
    EventType,
    GatewayCluster,
    GatewayShard,
    Intents,
    Message,
    RequestGuildMembers,
    Shard,
    Stage,
    ThreadedCluster,
    ThreadedShard,
    UpdatePresence,
)
from gcluster.interface import ClusterLifecycle
from gcluster.testing import STREAM_INTENTS, SimulatorProcess, event_number

INTENTS = STREAM_INTENTS | Intents.GUILD_MEMBERS


def members(protocol: type) -> dict[str, Any]:
    """The protocol's own members: its methods and properties, `__enter__`/`__exit__` too."""
    return {
        name: value
        for name, value in vars(protocol).items()
        if (not name.startswith("_") or name in ("__enter__", "__exit__"))
        and (callable(value) or isinstance(value, property))
    }


def same_signature(implementation: Callable[..., Any], declared: Callable[..., Any]) -> bool:
    """Same parameters: names, kinds and defaults (annotations are mypy's business)."""

    def shape(func: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(func).parameters.values()]

    return shape(implementation) == shape(declared)


@pytest.mark.parametrize("cls", [Cluster, ThreadedCluster])
def test_each_cluster_has_every_member_of_gateway_cluster(cls: type) -> None:
    declared = members(GatewayCluster)
    assert {"up", "down", "events", "finish", "restart", "shard_for", "__enter__"} <= set(declared)
    for name, member in declared.items():
        found = inspect.getattr_static(cls, name)
        if isinstance(member, property):
            assert isinstance(found, property), name
        else:
            assert same_signature(getattr(cls, name), member), name


@pytest.mark.parametrize("cls", [Shard, ThreadedShard])
def test_each_shard_has_every_member_of_gateway_shard(cls: type) -> None:
    for name, member in members(GatewayShard).items():
        if name in ("id", "total"):
            continue  # attributes of the instance, below
        found = inspect.getattr_static(cls, name)
        if isinstance(member, property):
            assert isinstance(found, property), name
        else:
            assert same_signature(getattr(cls, name), member), name
    shard = Shard(3, 4, "token", 0, gateway_url="wss://gateway.invalid")
    handle = ThreadedShard(cast(ThreadedCluster, None), 3, 4)
    assert (shard.id, shard.total) == (handle.id, handle.total) == (3, 4)


def test_the_threaded_cluster_shares_down_and_the_context_manager() -> None:
    for name in ("down", "down_resumable", "__enter__", "__exit__"):
        assert name not in vars(ThreadedCluster)
        assert getattr(ThreadedCluster, name) is getattr(ClusterLifecycle, name)


Wanted = Callable[[int, Event], bool]
Reader = Callable[[GatewayCluster, Wanted], tuple[int, Event]]


def read_in_this_hub(cluster: GatewayCluster, wanted: Wanted) -> tuple[int, Event]:
    """A `Cluster`'s: the first event of a new loop that `wanted` accepts."""
    with gevent.Timeout(TIMEOUT, AssertionError(f"no such event within {TIMEOUT} s")):
        for shard_id, event in cluster.events():
            if wanted(shard_id, event):
                return shard_id, event
    raise AssertionError("events() ended first")


def read_in_a_thread(cluster: GatewayCluster, wanted: Wanted) -> tuple[int, Event]:
    """A `ThreadedCluster`'s: the same, read by another thread."""
    found: list[tuple[int, Event]] = []

    def read() -> None:
        for shard_id, event in cluster.events():
            if wanted(shard_id, event):
                found.append((shard_id, event))
                return

    thread = threading.Thread(target=read, name="reader", daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert found, f"no such event within {TIMEOUT} s"
    return found[0]


def exercise(cluster: GatewayCluster, sim: SimulatorProcess, read: Reader) -> None:
    """Written against the interface alone."""
    with cluster:
        assert cluster.wait_until_ready(TIMEOUT)
        assert cluster.config().intents == INTENTS and cluster.total == 2
        assert [shard.id for shard in cluster.shards()] == [0, 1]
        shard = cluster.shard(1)
        assert shard is not None and shard.total == 2
        assert shard.wait_until_ready(TIMEOUT)
        assert shard.stage is Stage.CONNECTED and shard.error is None
        assert shard.info() == cluster.info()[1]
        assert shard.session is not None
        assert shard.session.session_id == cluster.info()[1].session_id
        # The simulator's 1000, less 2 IDENTIFYs and the one LocalQueue keeps back.
        assert cluster.session_starts_remaining == 997

        _, ready = read(cluster, lambda sid, event: sid == 1 and event.kind is EventType.READY)
        guild_id = int(ready.data["guilds"][0]["id"])
        assert cluster.shard_for(guild_id) == 1
        shard.command(RequestGuildMembers(guild_id=guild_id, query="", nonce="either"))
        chunk_shard, _ = read(cluster, lambda _, event: event.kind is EventType.GUILD_MEMBERS_CHUNK)
        assert chunk_shard == 1
        cluster.command(0, UpdatePresence(status="idle"))

        cluster.restart(0)
        read(cluster, lambda sid, event: sid == 0 and event.kind is EventType.RESUMED)
        cluster.send(1, Message.close(4000))
        read(cluster, lambda sid, event: sid == 1 and event.kind is EventType.RESUMED)
        shard.restart()
        read(cluster, lambda sid, event: sid == 1 and event.kind is EventType.RESUMED)

        sim.send_events(0, 3)
        shard_id, _ = read(cluster, lambda _, event: event_number(event.data) == 3)
        assert shard_id == 0
        assert cluster.backlog >= 0
        cluster.finish()  # without a session store, nothing to finish
        sessions = cluster.down_resumable()
    # __exit__'s down() found it down already.
    assert sorted(sessions) == [0, 1]
    assert sessions[1].session_id == shard.info().session_id
    stats = sim.stats()
    assert (stats["identifies"], stats["resumes"]) == (2, 3)


@pytest.mark.parametrize("flavour", ["Cluster", "ThreadedCluster"])
def test_one_function_written_against_the_interface_runs_on_both(flavour: str) -> None:
    with SimulatorProcess({"shards": 2, "max_concurrency": 2, "heartbeat_interval": 0.5}) as sim:
        cluster: GatewayCluster
        read: Reader
        if flavour == "Cluster":
            cluster, read = Cluster(sim.token, INTENTS, api_base=sim.api_base), read_in_this_hub
        else:
            cluster = ThreadedCluster(
                sim.token, INTENTS, api_base=sim.api_base, call_timeout=TIMEOUT
            )
            read = read_in_a_thread
        exercise(cluster, sim, read)
