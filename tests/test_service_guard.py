"""The service mode's guard rails: one holder per shard, one shard count, sessions that expire.

The leases are tested in this process against a real Redis (single server and
Redis Cluster); the command line (refusals, ``status``) as subprocesses, with
the simulator's records proving what reached the gateway.
"""

from __future__ import annotations

import json
import os
import subprocess as std_subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from conftest import wait_for
from hypothesis import given
from hypothesis import strategies as st
from redis_server import (  # noqa: F401 - fixtures
    RedisClusterNodes,
    RedisServer,
    raw_client,
    redis_server_fixture,
    redis_url_fixture,
    single_only,
)
from test_service import ROOT, Service
from test_service import services as services  # noqa: F401 - the fixture

from gcluster import ResumeSession
from gcluster.__main__ import main
from gcluster.errors import ConfigError, LeaseConflict
from gcluster.redis import RedisSessionStore, ShardLease
from gcluster.redis.inspect import gather, render
from gcluster.redis.lease import holder_key, live_key
from gcluster.redis.shardstate import StateBoard, _checked, read_states, state_key
from gcluster.testing import GatewaySimulator

pytestmark = pytest.mark.extras

TIMEOUT = 20.0


def lease(
    url: str, owner: str, name: str, shards: list[int], total: int | None, **kw: object
) -> ShardLease:
    return ShardLease(url, name=name, namespace="g", owner=owner, shards=shards, total=total, **kw)  # type: ignore[arg-type]


@pytest.fixture
def leases() -> Iterator[list[ShardLease]]:
    made: list[ShardLease] = []
    yield made
    for item in made:
        item.close()


# --- the lease's guards, in this process --------------------------------------------


def test_a_slice_overlapping_a_held_one_is_refused_at_once(
    redis_url: str, leases: list[ShardLease]
) -> None:
    first = lease(redis_url, "first", "process:0/2", [0, 1], 4)
    overlapping = lease(redis_url, "second", "range:1-2", [1, 2], 4)
    leases += [first, overlapping]
    assert first.acquire(timeout=2)
    # Not a standby's wait (acquire would return False after its timeout): refused.
    with pytest.raises(LeaseConflict, match="shard 1 is held by first.*overlap"):
        overlapping.acquire(timeout=5)
    assert not overlapping.held
    client = raw_client(redis_url)
    try:
        assert client.get(holder_key("g", 1)) == b"first"
        assert client.get(holder_key("g", 2)) is None  # the refused lease took nothing
    finally:
        client.close()


def test_another_shard_count_is_refused_while_a_holder_lives_then_allowed(
    redis_url: str, leases: list[ShardLease]
) -> None:
    four = lease(redis_url, "four", "process:0/2", [0, 1], 4)
    eight = lease(redis_url, "eight", "process:1/2", [4, 5, 6, 7], 8)
    leases += [four, eight]
    assert four.acquire(timeout=2)
    with pytest.raises(LeaseConflict, match="runs 4 shards .*live process four.*not 8"):
        eight.acquire(timeout=5)
    # Every holder gone (a planned reshard): the new count is taken.
    four.release()
    assert eight.acquire(timeout=2)
    client = raw_client(redis_url)
    try:
        assert client.get("{g}:shards") == b"8"
        assert client.zrange(live_key("g"), 0, -1) == [b"eight"]
    finally:
        client.close()


def test_a_dead_holders_count_stops_counting_once_its_lease_ran_out(
    redis_url: str, leases: list[ShardLease]
) -> None:
    client = raw_client(redis_url)
    try:
        # What a holder that died a while ago leaves: its count, its expired entry.
        now_ms = int(client.time()[0]) * 1000
        client.set("{g}:shards", 4)
        client.zadd(live_key("g"), {"ghost": now_ms - 1})
        client.zadd(live_key("g"), {"alive": now_ms + 60_000})
        blocked = lease(redis_url, "new", "process:0/1", list(range(8)), 8)
        leases.append(blocked)
        with pytest.raises(LeaseConflict, match="live process alive"):
            blocked.acquire(timeout=2)
        client.zrem(live_key("g"), "alive")
        assert blocked.acquire(timeout=2)
        assert client.zrange(live_key("g"), 0, -1) == [b"new"]
    finally:
        client.close()


def test_the_same_count_and_disjoint_slices_live_side_by_side(
    redis_url: str, leases: list[ShardLease]
) -> None:
    a = lease(redis_url, "a", "process:0/2", [0, 1], 4)
    b = lease(redis_url, "b", "process:1/2", [2, 3], 4)
    standby = lease(redis_url, "c", "process:1/2", [2, 3], 4)
    leases += [a, b, standby]
    assert a.acquire(timeout=2)
    assert b.acquire(timeout=2)
    assert not standby.acquire(timeout=0.3)  # the same slice: a standby waits
    client = raw_client(redis_url)
    try:
        assert client.mget([holder_key("g", i) for i in range(4)]) == [b"a", b"a", b"b", b"b"]
        b.release()
        assert client.mget([holder_key("g", i) for i in range(4)]) == [b"a", b"a", None, None]
        assert client.zrange(live_key("g"), 0, -1) == [b"a"]
        assert standby.acquire(timeout=2)
        assert client.get(holder_key("g", 3)) == b"c"
    finally:
        client.close()


@single_only
def test_renewal_keeps_the_holder_keys_alive(redis_url: str, leases: list[ShardLease]) -> None:
    held = lease(redis_url, "h", "process:0/1", [0], 1, ttl=0.9)
    leases.append(held)
    assert held.acquire(timeout=2)
    client = raw_client(redis_url)
    try:
        key = holder_key("g", 0)
        # Renewed every ttl/3 (0.3 s): the key's time left falls, then is pushed back.
        for _ in range(3):
            wait_for(lambda: 0 < client.pttl(key) < 700)
            wait_for(lambda: client.pttl(key) > 800)
        assert client.get(key) == b"h"
    finally:
        client.close()


def test_check_raises_what_acquire_would_and_takes_nothing(
    redis_url: str, leases: list[ShardLease]
) -> None:
    holder = lease(redis_url, "holder", "process:0/2", [0, 1], 4)
    leases.append(holder)
    free = lease(redis_url, "x", "check", [2, 3], 4)
    free.check()
    client = raw_client(redis_url)
    try:
        assert client.keys("*") == []  # checking took nothing
        assert holder.acquire(timeout=2)
        with pytest.raises(LeaseConflict, match="shard 0 is held by holder"):
            lease(redis_url, "x", "check", [0, 2], 4).check()
        with pytest.raises(LeaseConflict, match="runs 4 shards"):
            lease(redis_url, "x", "check", [2, 3], 6).check()
        free.check()
    finally:
        client.close()


def test_a_lease_refuses_a_bad_total() -> None:
    for bad in (0, -1, True, 2.0, "4"):
        with pytest.raises(ConfigError, match="total must be a shard count"):
            ShardLease("redis://127.0.0.1:1/0", name="x", total=bad)  # type: ignore[arg-type]


# --- stored sessions expire ------------------------------------------------------------


def test_saved_sessions_expire_ttl_after_the_last_save_or_refresh(redis_url: str) -> None:
    session = ResumeSession(session_id="abc", sequence=5, shard_id=0, total=1)
    store = RedisSessionStore(redis_url, namespace="g", ttl=60)
    forever = RedisSessionStore(redis_url, namespace="h")
    client = raw_client(redis_url)
    try:
        store.save(0, session)
        assert 55_000 < client.pttl(store.key(0)) <= 60_000
        client.pexpire(store.key(0), 1000)
        store.refresh([0])
        assert client.pttl(store.key(0)) > 55_000
        assert store.load([0]) == {0: session}
        forever.save(0, session)
        forever.refresh([0])  # nothing to push back
        assert client.pttl(forever.key(0)) == -1
    finally:
        store.close()
        forever.close()
        client.close()


def test_a_session_ttl_must_be_a_second_or_more() -> None:
    for bad in (0, 0.5, -3, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="ttl must be at least 1 second"):
            RedisSessionStore("redis://127.0.0.1:1/0", ttl=bad)


# --- the shards' state records -----------------------------------------------------------


def test_state_records_round_trip_and_expire(redis_url: str) -> None:
    board = StateBoard(redis_url, namespace="g", life=30)
    client = raw_client(redis_url)
    try:
        record = {
            "holder": "p", "stage": "connected", "sequence": 7,
            "latency_ms": 41.5, "saved_at": 1.0, "at": 2.0,
        }  # fmt: skip
        board.write({0: record, 2: dict(record, stage="resuming", sequence=None)})
        states = read_states(board._redis, "g", range(3))
        assert states == {0: record, 2: dict(record, stage="resuming", sequence=None)}
        assert 25_000 < client.pttl(state_key("g", 0)) <= 30_000
    finally:
        board.close()
        client.close()


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300), st.none(), st.integers()))
def test_a_state_record_from_redis_is_checked_field_by_field(raw: object) -> None:
    record = _checked(raw)
    if record is not None:
        assert set(record) == {"holder", "stage", "sequence", "latency_ms", "saved_at", "at"}
        assert record["holder"] is None or isinstance(record["holder"], str)
        assert record["stage"] is None or isinstance(record["stage"], str)
        assert record["sequence"] is None or (
            type(record["sequence"]) is int and record["sequence"] >= 0
        )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"holder": 5, "stage": ["x"], "sequence": -1, "latency_ms": "fast", "at": true}',
        b'{"sequence": 1.5, "saved_at": 1e999}',
        json.dumps({"holder": "h" * 5000}).encode(),
        b"[1, 2]",
        b"not json",
    ],
)
def test_hostile_state_values_show_as_unknown(raw: bytes) -> None:
    record = _checked(raw)
    if record is not None:
        assert record["stage"] is None and record["sequence"] is None and record["at"] is None


# --- the status command, from Redis alone ---------------------------------------------------


def test_status_reports_holders_stages_sessions_and_groups(
    redis_url: str, leases: list[ShardLease]
) -> None:
    held = lease(redis_url, "gw-1", "process:0/2", [0, 1], 4)
    leases.append(held)
    assert held.acquire(timeout=2)
    board = StateBoard(redis_url, namespace="g", life=30)
    store = RedisSessionStore(redis_url, namespace="g")
    client = raw_client(redis_url)
    try:
        now = float(client.time()[0])
        board.write(
            {
                0: {"holder": "gw-1", "stage": "connected", "sequence": 12,
                    "latency_ms": 40.0, "saved_at": now - 3, "at": now - 1},
                1: {"holder": "gw-1", "stage": "resuming", "sequence": None,
                    "latency_ms": None, "saved_at": None, "at": now - 1},
            }
        )  # fmt: skip
        store.save(3, ResumeSession(session_id="s3", sequence=99, shard_id=3, total=4))
        client.xgroup_create("{g}:events", "bot", id="0", mkstream=True)
        client.xadd("{g}:events", {"x": "1"})
        report = gather(redis_url, "g")
        assert report["total"] == 4
        assert [s["holder"] for s in report["shards"]] == ["gw-1", "gw-1", None, None]
        assert [s["stage"] for s in report["shards"]] == ["connected", "resuming", None, None]
        assert report["shards"][3]["saved_sequence"] == 99
        assert report["leases"][0]["holder"] == "gw-1"
        assert report["leases"][0]["shards"] == "0-1"
        assert report["groups"][0]["group"] == "bot"
        assert report["groups"][0]["lag"] == 1
        json.dumps(report)  # --json prints it as it is
        lines = render(report)
        assert lines[0].endswith(": 4 shards")
        assert lines[2].startswith("  gw-1: shards 0-1, expires in")
        rows = [line.split() for line in lines[3:8]]
        assert rows[0] == [
            "shard",
            "holder",
            "stage",
            "sequence",
            "latency",
            "last",
            "save",
            "updated",
        ]
        assert rows[1][:5] == ["0", "gw-1", "connected", "12", "40"]
        assert rows[2][:4] == ["1", "gw-1", "resuming", "-"]
        assert rows[3][:4] == ["2", "-", "no", "process"]
        assert rows[4][:6] == ["3", "-", "no", "process", "99", "(saved)"]
        assert lines[8] == "consumer groups of '{g}:events':"
        assert lines[10].split() == ["bot", "0", "0", "1"]
    finally:
        board.close()
        store.close()
        client.close()


def test_status_of_a_namespace_no_process_ran_on_says_so(redis_url: str) -> None:
    report = gather(redis_url, "nobody")
    assert report["total"] is None
    assert "no gateway process has run here ({nobody}:shards is absent)" in render(report)[0]


@single_only
def test_the_status_command_exits_1_without_a_gateway_or_redis(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--sink", redis_url, "--namespace", "nobody"]) == 1
    assert "no gateway process has run here" in capsys.readouterr().out
    assert main(["status", "--sink", "redis://127.0.0.1:1/0"]) == 1
    assert "error: Redis at redis://127.0.0.1:1/0 failed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["status"])
    assert exited.value.code == 2
    assert "--sink REDIS_URL is needed" in capsys.readouterr().err


# --- the command line: refusals before any IDENTIFY, status of a live service ----------


def base_args(url: str, sim: GatewaySimulator, shards: int, scheme: str) -> tuple[str, ...]:
    return (
        "--sink", url,
        "--namespace", "gd",
        "--shards", str(shards),
        "--scheme", scheme,
        "--api-base", sim.api_base,
        "--lease-ttl", "3",
    )  # fmt: skip


@single_only
def test_a_process_with_another_total_or_an_overlapping_slice_spends_no_session_start(
    redis_url: str, make_sim: Callable[..., GatewaySimulator], services: list[Service]
) -> None:
    sim = make_sim(shards=4)
    first = Service(*base_args(redis_url, sim, 4, "process:0/2"), token=sim.token)
    services.append(first)
    first.wait_for_line("service: shards 0-1 ready")
    assert len(sim.records.identifies) == 2

    # A second process of the same slice waits as a standby, without --lease.
    standby = Service(*base_args(redis_url, sim, 4, "process:0/2"), token=sim.token)
    services.append(standby)
    standby.wait_for_line("lease {gd}:lease:process:0/2: held by")
    standby.kill()

    refused = [
        (base_args(redis_url, sim, 8, "process:1/2"), "namespace 'gd' runs 4 shards"),
        (base_args(redis_url, sim, 4, "range:1-2"), "shard 1 is held by"),
        ((*base_args(redis_url, sim, 4, "range:1-2"), "--no-lease"), "shard 1 is held by"),
    ]
    for args, why in refused:
        other = Service(*args, token=sim.token)
        services.append(other)
        assert other.process.wait(timeout=TIMEOUT) == 1, other.log
        other._reader.join(timeout=5)
        assert f"service: refusing to start: {why}" in other.log
        assert "Traceback" not in other.log
    # Nothing reached the gateway from the refused processes.
    assert len(sim.records.identifies) == 2
    assert first.process.poll() is None
    assert first.stop() == 0, first.log


@single_only
def test_status_command_shows_a_running_service_and_sessions_expire_after_it(
    redis_url: str, make_sim: Callable[..., GatewaySimulator], services: list[Service]
) -> None:
    sim = make_sim(shards=2)
    args = (*base_args(redis_url, sim, 2, "process:0/1"), "--session-ttl", "30")
    service = Service(*args, token=sim.token)
    services.append(service)
    service.wait_for_line("service: shards 0-1 ready")
    command = [sys.executable, "-m", "gcluster", "status", "--json"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), GCLUSTER_SINK=redis_url, GCLUSTER_NAMESPACE="gd")

    def report() -> dict[str, object]:
        done = std_subprocess.run(
            command, env=env, capture_output=True, timeout=TIMEOUT, check=True
        )
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def connected() -> bool:
        shards = report()["shards"]
        return [s["stage"] for s in shards] == ["connected", "connected"]  # type: ignore[index, union-attr]

    service.wait_until(connected)
    now = report()
    holder = now["leases"][0]["holder"]  # type: ignore[index]
    assert [s["holder"] for s in now["shards"]] == [holder, holder]  # type: ignore[index, union-attr]
    assert service.stop() == 0, service.log
    client = raw_client(redis_url)
    try:
        for shard_id in range(2):
            # Saved on the way out, kept --session-ttl seconds from then.
            assert 25_000 < client.pttl(f"{{gd}}:session:{shard_id}") <= 30_000
        assert client.zrange(live_key("gd"), 0, -1) == []  # released: the count is free
    finally:
        client.close()


@single_only
def test_a_stored_session_the_gateway_forgot_is_dropped_with_one_line(
    redis_url: str, make_sim: Callable[..., GatewaySimulator], services: list[Service]
) -> None:
    # What a long-stopped bot leaves: a session Discord no longer knows, on a
    # resume URL nobody answers any more.
    sim = make_sim(shards=1)
    store = RedisSessionStore(redis_url, namespace="gd")
    dead = ResumeSession("forgotten", 500, "ws://127.0.0.1:1", shard_id=0, total=1)
    store.save(0, dead)
    service = Service(*base_args(redis_url, sim, 1, "process:0/1"), token=sim.token)
    services.append(service)
    try:
        service.wait_for_line("service: shards 0 ready")
        # It went back to the main gateway, was refused, and identified once.
        assert [r.ok for r in sim.records.resumes] == [False]
        assert len(sim.records.identifies) == 1
        invalidated = [line for line in service.lines if "session invalidated" in line]
        assert len(invalidated) == 1, service.log
        assert "shard 0: session invalidated (op 9, not resumable)" in invalidated[0]
        # The forgotten session is gone from the store: the new one replaced it.
        service.wait_until(lambda: store.load([0]).get(0, dead).session_id != "forgotten")
        assert service.stop() == 0, service.log
    finally:
        store.close()


@single_only
def test_with_scheme_auto_the_lease_covers_discords_recommended_count(
    redis_url: str, make_sim: Callable[..., GatewaySimulator], services: list[Service]
) -> None:
    sim = make_sim(shards=3)
    args = ("--sink", redis_url, "--namespace", "gd", "--api-base", sim.api_base)
    service = Service(*args, token=sim.token)
    services.append(service)
    service.wait_for_line("service: shards 0-2 ready")
    client = raw_client(redis_url)
    try:
        holders = client.mget([holder_key("gd", i) for i in range(3)])
        assert len(set(holders)) == 1 and holders[0] is not None
        assert client.get("{gd}:shards") == b"3"
        assert service.stop() == 0, service.log
        # A token the gateway's REST API refuses: exit 3 before any lease or shard.
        refused = Service(*args, token="not-the-token")
        services.append(refused)
        assert refused.process.wait(timeout=TIMEOUT) == 3
        assert client.zrange(live_key("gd"), 0, -1) == []
    finally:
        client.close()


@single_only
def test_no_lease_still_refuses_shards_another_process_is_running(
    redis_url: str, make_sim: Callable[..., GatewaySimulator], services: list[Service]
) -> None:
    sim = make_sim(shards=2)
    args = (*base_args(redis_url, sim, 2, "process:0/1"), "--no-lease")
    first = Service(*args, token=sim.token)
    services.append(first)
    first.wait_for_line("service: shards 0-1 ready")
    client = raw_client(redis_url)
    try:
        # Unleased: no holder keys, but the state records name it.
        assert client.get(holder_key("gd", 0)) is None
        first.wait_until(lambda: client.exists(state_key("gd", 0), state_key("gd", 1)) == 2)
    finally:
        client.close()
    second = Service(*args, token=sim.token)
    services.append(second)
    assert second.process.wait(timeout=TIMEOUT) == 1
    second._reader.join(timeout=5)
    assert "service: refusing to start: shards 0-1 are run by" in second.log
    assert len(sim.records.identifies) == 2  # the first process's only
    assert first.stop() == 0, first.log


def test_status_names_a_shard_count_key_that_holds_no_count(redis_url: str) -> None:
    client = raw_client(redis_url)
    try:
        client.set("{odd}:shards", "99999999999")
        report = gather(redis_url, "odd")
    finally:
        client.close()
    assert report["total"] is None
    assert render(report) == [
        f"namespace 'odd' at {report['redis']}: {{odd}}:shards holds '99999999999', "
        "not a shard count"
    ]
