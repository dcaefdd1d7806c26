"""RedisQueue and RedisSessionStore against a real redis-server (see redis_server.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import pytest
import redis
from redis.crc import key_slot
from redis_server import (  # noqa: F401 - fixtures
    RedisClusterNodes,
    RedisServer,
    all_keys,
    free_port,
    make_redis_server_fixture,
    raw_client,
    redis_server_fixture,
    redis_url_fixture,
)

from gcluster.errors import QueueError, RedisCallError, SessionStartLimitExhausted
from gcluster.http import SessionStartLimit
from gcluster.protocol import ResumeSession
from gcluster.queue import SESSION_START_DAY, ConfigurableQueue
from gcluster.redis import RedisQueue, RedisSessionStore, SessionStoreError
from gcluster.redis._client import make_client
from gcluster.sessions import SessionStore

ROOT = Path(__file__).resolve().parent.parent
INTERVAL = 0.5

pytestmark = pytest.mark.extras


def limit(
    remaining: int, total: int = 1000, reset_after: float = 60.0, concurrency: int = 1
) -> SessionStartLimit:
    return SessionStartLimit(
        total=total, remaining=remaining, reset_after=reset_after, max_concurrency=concurrency
    )


def raw(url: str) -> redis.Redis | redis.RedisCluster:
    return raw_client(url)


def assert_spaced(grants: list[tuple[int, float]], concurrency: int, interval: float) -> None:
    """No two grants of one bucket closer than `interval`."""
    for bucket in range(concurrency):
        times = sorted(t for shard, t in grants if shard % concurrency == bucket)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert gaps and min(gaps) >= interval, (bucket, gaps)


# --- which Redis --------------------------------------------------------------------


def test_the_kind_of_redis_is_found_out_at_first_use(
    redis_server: RedisServer | RedisClusterNodes, redis_url: str
) -> None:
    target = make_client(redis_url, None, connect_timeout=1.0, timeout=2.0)
    try:
        assert target.client is None  # nothing asked at construction
        client = target.get()
        assert isinstance(client, redis.RedisCluster) is isinstance(redis_server, RedisClusterNodes)
        assert target.get() is client  # asked once
    finally:
        target.close()


@pytest.mark.parametrize("redis_server", ["cluster"], indirect=True)
def test_a_cluster_url_naming_another_database_is_refused_clearly(redis_url: str) -> None:
    store = RedisSessionStore(redis_url.rsplit("/", 1)[0] + "/1")
    with pytest.raises(ValueError, match="only database 0"):
        store.load([0])
    store.close()


# --- RedisQueue: spacing --------------------------------------------------------


def test_greenlets_of_one_bucket_are_spaced_and_buckets_run_in_parallel(redis_url: str) -> None:
    queue = RedisQueue(redis_url, max_concurrency=2, interval=INTERVAL)
    grants: list[tuple[int, float]] = []

    def identify(shard: int) -> None:
        queue.request(shard, 6)
        grants.append((shard, time.monotonic()))

    # Connected (and, on a Redis Cluster, its slots mapped) before the clock starts.
    queue.check_budget(0)
    started = time.monotonic()
    with gevent.Timeout(10):
        gevent.joinall([gevent.spawn(identify, shard) for shard in range(6)], raise_error=True)
    assert_spaced(grants, 2, INTERVAL)
    waited = {shard: t - started for shard, t in grants}
    for bucket in (0, 1):  # both buckets start at once
        assert min(w for shard, w in waited.items() if shard % 2 == bucket) < 0.2
    assert max(waited.values()) < 2 * (INTERVAL + queue.margin) + 0.3
    queue.close()


PROCESS = """
import json, sys, time
import gevent
from gcluster.redis import RedisQueue

url, start_at, shards = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
queue = RedisQueue(url, max_concurrency=2, interval=float(sys.argv[4]))
grants = []

def identify(shard):
    queue.request(shard, 12)
    grants.append((shard, time.time()))

time.sleep(max(0.0, start_at - time.time()))
gevent.joinall([gevent.spawn(identify, s) for s in shards], raise_error=True)
print(json.dumps(grants))
"""


def test_processes_sharing_redis_never_identify_a_bucket_too_soon(redis_url: str) -> None:
    start_at = time.time() + 1.5  # every process is up and waiting by then
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PROCESS,
                redis_url,
                str(start_at),
                json.dumps([p, p + 3, p + 6, p + 9]),
                str(INTERVAL),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        for p in range(3)
    ]
    grants: list[tuple[int, float]] = []
    by_process: list[set[int]] = []
    for process in processes:
        out, err = process.communicate(timeout=20)
        assert process.returncode == 0, err.decode()
        mine = [(int(shard), float(t)) for shard, t in json.loads(out)]
        grants += mine
        by_process.append({shard for shard, _ in mine})
    assert sorted(shard for shard, _ in grants) == list(range(12))
    assert_spaced(grants, 2, INTERVAL)
    # Each bucket's six shards came from all three processes, interleaved.
    assert all(any(s % 2 == 0 for s in shards) for shards in by_process)


def test_a_killed_waiter_leaves_its_slot_empty_and_the_next_shard_goes(redis_url: str) -> None:
    queue = RedisQueue(redis_url, max_concurrency=1, interval=0.2, margin=0)
    granted: list[int] = []

    def identify(shard: int) -> None:
        queue.request(shard, 3)
        granted.append(shard)

    started = time.monotonic()
    identify(0)
    killed = gevent.spawn(identify, 1)
    gevent.sleep(0.05)  # it holds the slot at +0.2 s and waits for it
    last = gevent.spawn(identify, 2)  # the slot at +0.4 s
    gevent.sleep(0.05)
    killed.kill()
    with gevent.Timeout(2):
        last.join()
    assert granted == [0, 2]
    assert 0.35 <= time.monotonic() - started < 1.0


# --- RedisQueue: keys ---------------------------------------------------------------


def test_keys_are_namespaced_and_share_one_cluster_slot(redis_url: str) -> None:
    queue = RedisQueue(
        redis_url, namespace="bot-a", session_start_limit=limit(10, concurrency=4), interval=5
    )
    queue.request(7, 8)
    keys = all_keys(redis_url)
    assert keys == ["{bot-a}:bucket:3", "{bot-a}:budget", "{bot-a}:concurrency"]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    with pytest.raises(ValueError):
        RedisQueue(redis_url, namespace="a}b")


def test_bucket_keys_expire_once_the_slot_has_passed(redis_url: str) -> None:
    queue = RedisQueue(redis_url, max_concurrency=1, interval=0.2, margin=0)
    queue.request(0, 1)
    client = raw(redis_url)
    assert 0 < client.pttl("{gcluster}:bucket:0") <= 200
    gevent.sleep(0.3)
    assert not client.exists("{gcluster}:bucket:0")


# --- RedisQueue: the budget -------------------------------------------------------


def test_the_budget_is_shared_and_its_last_start_is_kept(redis_url: str) -> None:
    one = RedisQueue(redis_url, session_start_limit=limit(4), interval=0, margin=0)
    # Another process read /gateway/bot later; Redis's count wins over its snapshot.
    other = RedisQueue(redis_url, session_start_limit=limit(1000), interval=0, margin=0)
    one.request(0, 1)
    other.request(0, 1)
    one.request(0, 1)
    client = raw(redis_url)
    assert client.get("{gcluster}:budget") == b"1"
    for queue in (one, other):
        with pytest.raises(SessionStartLimitExhausted) as caught:
            queue.request(0, 1)
        assert (caught.value.remaining, caught.value.needed) == (0, 1)
        assert 55 < caught.value.reset_after <= 60
    assert client.get("{gcluster}:budget") == b"1"


def test_check_budget_refuses_before_any_identify(redis_url: str) -> None:
    queue = RedisQueue(redis_url, session_start_limit=limit(5, reset_after=30), interval=0)
    queue.check_budget(4)
    with pytest.raises(SessionStartLimitExhausted) as caught:
        queue.check_budget(5)
    assert (caught.value.remaining, caught.value.needed) == (4, 5)
    assert 25 < caught.value.reset_after <= 30
    assert raw(redis_url).get("{gcluster}:budget") == b"5"  # nothing spent


def test_the_budget_key_expires_at_the_reset_and_a_fresh_day_begins(redis_url: str) -> None:
    queue = RedisQueue(
        redis_url, session_start_limit=limit(3, total=50, reset_after=0.3), interval=0
    )
    queue.request(0, 1)
    client = raw(redis_url)
    assert client.get("{gcluster}:budget") == b"2"
    assert 0 < client.pttl("{gcluster}:budget") <= 300
    with gevent.Timeout(2):
        while client.exists("{gcluster}:budget"):
            gevent.sleep(0.02)
    queue.request(0, 1)
    assert client.get("{gcluster}:budget") == b"49"
    assert client.pttl("{gcluster}:budget") > (SESSION_START_DAY - 10) * 1000


def test_wait_for_reset_waits_instead_of_raising(redis_url: str) -> None:
    queue = RedisQueue(
        redis_url,
        session_start_limit=limit(2, total=50, reset_after=0.2),
        interval=0,
        wait_for_reset=True,
    )
    queue.check_budget(3)  # warns only
    started = time.monotonic()
    queue.request(0, 1)
    queue.request(0, 1)  # the only usable start is spent: waits for the reset
    assert time.monotonic() - started >= 0.2
    assert raw(redis_url).get("{gcluster}:budget") == b"49"


def test_without_a_known_budget_only_a_shared_one_is_enforced(redis_url: str) -> None:
    unknown = RedisQueue(redis_url, max_concurrency=1, interval=0)
    for _ in range(3):
        unknown.request(0, 1)
    assert not raw(redis_url).exists("{gcluster}:budget")
    RedisQueue(redis_url, session_start_limit=limit(3), interval=0).request(0, 1)
    unknown.request(0, 1)  # spends the shared budget's last usable start
    with pytest.raises(SessionStartLimitExhausted):
        unknown.request(0, 1)


# --- RedisQueue: configuration ----------------------------------------------------


def test_configure_supplies_what_was_not_given(redis_url: str) -> None:
    queue = RedisQueue(redis_url, interval=0)
    assert isinstance(queue, ConfigurableQueue)
    with pytest.raises(QueueError, match="max_concurrency"):
        queue.request(0, 1)
    queue.configure(2, limit(10, concurrency=2))
    assert queue.max_concurrency == 2
    queue.check_budget(9)
    with pytest.raises(SessionStartLimitExhausted):
        queue.check_budget(10)

    given = RedisQueue(redis_url, namespace="given", max_concurrency=2, interval=0)
    given.configure(16, limit(10, concurrency=16))
    assert given.max_concurrency == 2


def test_processes_that_disagree_on_max_concurrency_are_refused(redis_url: str) -> None:
    RedisQueue(redis_url, max_concurrency=2, interval=0).request(0, 4)
    with pytest.raises(QueueError, match="max_concurrency 3 but another one 2"):
        RedisQueue(redis_url, max_concurrency=3, interval=0).request(0, 4)
    RedisQueue(redis_url, namespace="other-bot", max_concurrency=3, interval=0).request(0, 4)


# --- RedisQueue: failing closed -------------------------------------------------------


def test_a_stopped_redis_raises_queue_error_quickly_and_grants_nothing(
    make_redis_server: Callable[[], RedisServer],
) -> None:
    server = make_redis_server()
    queue = RedisQueue(server.url, max_concurrency=1, interval=0, connect_timeout=0.5)
    queue.request(0, 1)
    server.stop()
    granted: list[int] = []

    def identify() -> None:
        queue.request(0, 1)
        granted.append(0)

    started = time.monotonic()
    attempt = gevent.spawn(identify)
    attempt.join(5)
    assert attempt.dead and granted == []
    assert isinstance(attempt.exception, QueueError)
    assert "Redis at redis://127.0.0.1" in str(attempt.exception)
    assert isinstance(attempt.exception.__cause__, RedisCallError)
    assert isinstance(attempt.exception.__cause__.__cause__, redis.ConnectionError)
    assert time.monotonic() - started < 2
    with pytest.raises(QueueError):
        queue.check_budget(1)


def test_a_redis_that_never_ran_raises_queue_error() -> None:
    queue = RedisQueue(
        f"redis://:secret@127.0.0.1:{free_port()}/0", max_concurrency=1, connect_timeout=0.5
    )
    started = time.monotonic()
    with pytest.raises(QueueError) as caught:
        queue.request(0, 1)
    assert time.monotonic() - started < 2
    assert "secret" not in str(caught.value) and "secret" not in repr(queue)


def test_a_script_error_raises_queue_error(redis_url: str) -> None:
    raw(redis_url).set("{gcluster}:budget", "not a number", px=10_000)
    queue = RedisQueue(redis_url, max_concurrency=1, interval=0)
    with pytest.raises(QueueError) as caught:
        queue.request(0, 1)
    cause = caught.value.__cause__
    assert isinstance(cause, RedisCallError) and isinstance(cause.__cause__, redis.ResponseError)
    assert cause.reply is not None and "does not hold a number" in cause.reply


def test_the_hub_keeps_running_while_redis_is_called(redis_url: str) -> None:
    queue = RedisQueue(redis_url, max_concurrency=1, interval=0)
    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)

    background = gevent.spawn(ticker)
    gevent.sleep(0)
    raw(redis_url).execute_command("CLIENT", "PAUSE", "300", "ALL")
    started = time.monotonic()
    queue.request(0, 1)  # blocked in Redis for ~0.3 s, in a thread
    assert time.monotonic() - started >= 0.25
    background.kill()
    assert len([t for t in ticks if t >= started]) > 10


# --- RedisSessionStore ------------------------------------------------------------------


def test_sessions_round_trip_and_delete(redis_url: str) -> None:
    store = RedisSessionStore(redis_url)
    assert isinstance(store, SessionStore)
    one = ResumeSession("abc", 42, "wss://resume.example")
    two = ResumeSession("def", 7)
    store.save(1, one)
    store.save(2, two)
    assert store.load(range(4)) == {1: one, 2: two}
    assert store.load([]) == {}
    stored = json.loads(raw(redis_url).get("{gcluster}:session:1") or b"")
    assert stored == one.to_dict()
    store.save(1, None)
    store.save(3, None)  # nothing to delete: fine
    assert store.load(range(4)) == {2: two}
    store.close()


def test_namespaces_keep_bots_apart(redis_url: str) -> None:
    a = RedisSessionStore(redis_url, namespace="bot-a")
    b = RedisSessionStore(redis_url, namespace="bot-b")
    a.save(0, ResumeSession("a", 1))
    assert b.load([0]) == {}
    b.save(0, ResumeSession("b", 2))
    assert a.load([0]) == {0: ResumeSession("a", 1)}
    assert b.load([0]) == {0: ResumeSession("b", 2)}


def test_a_corrupt_session_is_left_out(redis_url: str) -> None:
    raw(redis_url).set("{gcluster}:session:5", b"{not json")
    raw(redis_url).set("{gcluster}:session:6", json.dumps({"session_id": "", "sequence": 1}))
    store = RedisSessionStore(redis_url)
    store.save(7, ResumeSession("ok", 3))
    assert store.load([5, 6, 7]) == {7: ResumeSession("ok", 3)}


def test_a_store_without_redis_raises_its_error() -> None:
    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    with pytest.raises(SessionStoreError) as caught:
        store.load([0])
    cause = caught.value.__cause__
    assert isinstance(cause, RedisCallError) and cause.reply is None
    assert isinstance(cause.__cause__, redis.ConnectionError)
    with pytest.raises(SessionStoreError):
        store.save(0, ResumeSession("x", 1))


def test_importing_gcluster_does_not_import_redis() -> None:
    code = (
        "import sys, gcluster; sys.exit('redis' in sys.modules or 'gcluster.redis' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT))
    )
    assert result.returncode == 0
