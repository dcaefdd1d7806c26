"""Shards added to and removed from a running cluster, and moved between clusters.

Two clusters in one process against one simulator stand for two processes
of one bot: a shard removed from one with its session RESUMEs in the other,
and the simulator's records show that it did (no second IDENTIFY) and that
every dispatch it wrote reached the application once, through one cluster
or the other. The identify rules hold for a shard added to a running
cluster as for the ones `up()` starts, measured on the simulator's clock
with the interval scaled from Discord's 5 s to 1 s as in
test_identify_rules.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from conftest import TIMEOUT, collect, has_numbers, numbers
from gevent.event import Event as Flag

from gcluster import (
    AuthenticationFailed,
    Cluster,
    ClusterNotUp,
    ConfigError,
    EventType,
    InvalidState,
    LocalQueue,
    MemorySessionStore,
    ResumeSession,
    ShardNonexistent,
    ShardScheme,
    ShardSchemeError,
    Stage,
)
from gcluster.events import Event
from gcluster.sessions import SessionStore
from gcluster.testing import STREAM_INTENTS, GatewaySimulator, event_number

MakeSim = Callable[..., GatewaySimulator]

INTERVAL = 1.0  # seconds between two IDENTIFYs of a bucket; Discord's is 5 s


@pytest.fixture
def clusters() -> Iterator[Callable[..., Cluster]]:
    """Build clusters against a simulator; all are brought down after the test."""
    made: list[Cluster] = []

    def make(sim: GatewaySimulator, ids: list[int], total: int, **options: Any) -> Cluster:
        cluster = Cluster(
            sim.token,
            STREAM_INTENTS,
            api_base=sim.api_base,
            shard_scheme=ShardScheme.range(ids, total),
            **options,
        )
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.down()


def disconnected(shard_id: int) -> Callable[[list[tuple[int, Event]]], bool]:
    """`until` for `collect`: the shard's SHARD_DISCONNECTED has been read."""

    def until(received: list[tuple[int, Event]]) -> bool:
        sid, event = received[-1]
        return sid == shard_id and event.kind is EventType.SHARD_DISCONNECTED

    return until


# --- moving a shard between clusters ------------------------------------------------


def test_a_shard_moves_to_another_cluster_with_its_session_and_no_event_is_lost_or_repeated(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=3, max_concurrency=3)
    queue = LocalQueue()  # one process: one identify queue for both clusters
    old = clusters(sim, [0, 1], 3, queue=queue)
    new = clusters(sim, [2], 3, queue=queue)
    old.up(timeout=TIMEOUT)
    new.up(timeout=TIMEOUT)

    # Events 1..10 reach the old cluster's shard 1 and wait there, unread.
    sim.send_events(1, 10)
    assert sim.wait_until(lambda: old.info()[1].sequence == sim.session(1).sequence, TIMEOUT)
    session = old.remove_shard(1)
    assert session is not None
    assert (session.shard_id, session.total) == (1, 3)
    assert session.sequence == sim.session(1).sequence
    assert old.shard(1) is None and sorted(old.info()) == [0]
    with pytest.raises(ShardNonexistent):
        old.command(1, {"op": 3, "d": {"status": "idle", "afk": False, "since": None}})

    # 11..20 while the shard is between clusters: the gateway keeps them for the RESUME.
    assert sim.wait_until(lambda: not sim.session(1).connected, TIMEOUT)
    sim.send_events(1, 10)
    shard = new.add_shard(1, session)
    assert new.shard(1) is shard and sorted(new.info()) == [1, 2]
    assert shard.wait_until_ready(TIMEOUT)
    sim.send_events(1, 10)  # 21..30 to the new cluster

    from_old = collect(old.events(), disconnected(1))
    from_new = collect(new.events(), has_numbers([1], 30))

    # The old cluster delivered what its shard had received; the new one the rest.
    assert numbers(from_old, 1) == list(range(1, 11))
    assert numbers(from_new, 1) == list(range(11, 31))
    assert not any(sid == 1 and e.kind is EventType.READY for sid, e in from_new)
    # The simulator's side: one IDENTIFY for shard 1 ever, one RESUME that
    # replayed the ten sent in between, and each event written once, in one session.
    assert [r.shard_id for r in sim.records.identifies].count(1) == 1
    resumes = [(r.shard_id, r.ok, r.seq, r.replayed) for r in sim.records.resumes]
    assert resumes == [(1, True, session.sequence, 10)]
    written = [d for d in sim.records.dispatches if d.shard_id == 1 and d.number is not None]
    assert sorted(d.number for d in written) == list(range(1, 31))
    assert {d.session_id for d in written} == {session.session_id}


def test_a_shard_moves_through_a_session_store(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    memory = MemorySessionStore()
    move_through_a_store(lambda: memory, make_sim, clusters)


def move_through_a_store(
    store: Callable[[], SessionStore], make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    """remove_shard saves the session; add_shard without one takes it from the store.

    `store()` makes a store of the one storage each time, as two processes would.
    """
    sim = make_sim(shards=3, max_concurrency=3)
    queue = LocalQueue()
    old = clusters(sim, [0, 1], 3, queue=queue, session_store=store())
    new = clusters(sim, [2], 3, queue=queue, session_store=store())
    old.up(timeout=TIMEOUT)
    new.up(timeout=TIMEOUT)

    sim.send_events(1, 10)
    # The old cluster's application handles the first five of them before the move.
    collect(old.events(), has_numbers([1], 5))
    assert sim.wait_until(lambda: old.info()[1].sequence == sim.session(1).sequence, TIMEOUT)
    session = old.remove_shard(1)
    assert session is not None
    # Saved as the shard left: its own session, past the events still queued here.
    assert store().load([1]) == {1: session}

    sim.send_events(1, 10)
    shard = new.add_shard(1)
    assert shard.wait_until_ready(TIMEOUT)
    assert [(r.shard_id, r.ok, r.seq) for r in sim.records.resumes] == [(1, True, session.sequence)]
    assert [r.shard_id for r in sim.records.identifies].count(1) == 1

    from_old = collect(old.events(), disconnected(1))
    from_new = collect(new.events(), has_numbers([1], 20))
    assert numbers(from_old, 1) == list(range(6, 11))
    assert numbers(from_new, 1) == list(range(11, 21))

    # Each cluster saves what it has on the way down. The old one must not
    # write its view of shard 1 over the new owner's session.
    new.down_resumable()
    old.down_resumable()
    saved = store().load([1])[1]
    assert saved.session_id == session.session_id and saved.sequence > session.sequence


# --- the identify queue --------------------------------------------------------------


def test_added_shards_wait_their_turn_in_their_identify_bucket(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=4, max_concurrency=2, identify_interval=INTERVAL)
    cluster = clusters(sim, [0, 1], 4, queue=LocalQueue(interval=INTERVAL))
    cluster.up(timeout=TIMEOUT)
    # Right after shards 0 and 1 identified: 2 and 3 share their buckets.
    added = [cluster.add_shard(2), cluster.add_shard(3)]
    assert all(shard.wait_until_ready(TIMEOUT) for shard in added)

    assert sim.records.violations == []
    identifies = sim.records.identifies
    assert sorted(r.shard_id for r in identifies) == [0, 1, 2, 3]
    for bucket in (0, 1):
        first, second = sorted(r.time for r in identifies if r.bucket == bucket)
        assert second - first >= INTERVAL
    assert [shard.id for shard in cluster.shards()] == [0, 1, 2, 3]


def test_a_shard_added_while_up_still_identifies_queues_behind_the_others(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=3, max_concurrency=1, identify_interval=INTERVAL)
    cluster = clusters(sim, [0, 1], 3, queue=LocalQueue(interval=INTERVAL))
    starting = gevent.spawn(cluster.up, timeout=TIMEOUT)
    assert sim.wait_until(lambda: len(sim.records.identifies) == 1, TIMEOUT)
    cluster.add_shard(2)
    # up() waits for the shards the cluster has when they are all ready, the added one too.
    starting.get(timeout=TIMEOUT)
    assert all(info.stage is Stage.CONNECTED for info in cluster.info().values())

    assert sim.records.violations == []
    times = sorted(r.time for r in sim.records.identifies)
    assert len(times) == 3
    assert all(b - a >= INTERVAL for a, b in zip(times, times[1:], strict=False))


def test_a_shard_removed_while_it_waits_to_identify_never_does_and_up_returns(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=2, max_concurrency=1, identify_interval=INTERVAL)
    cluster = clusters(sim, [0, 1], 2, queue=LocalQueue(interval=INTERVAL))
    starting = gevent.spawn(cluster.up, timeout=TIMEOUT)
    # One shard has identified; the other waits a full interval for its turn.
    assert sim.wait_until(lambda: len(sim.records.identifies) == 1, TIMEOUT)
    (first,) = [r.shard_id for r in sim.records.identifies]
    waiting = 1 - first
    assert cluster.remove_shard(waiting) is None  # no session yet
    starting.get(timeout=TIMEOUT)  # up() waits for the shards the cluster has: done
    assert sorted(cluster.info()) == [first] and cluster.wait_until_ready(0)
    assert [r.shard_id for r in sim.records.identifies] == [first]
    # Its slot and session start were given back to the queue unspent.
    assert cluster.session_starts_remaining == sim.session_start_remaining - 1


# --- what a demanding caller meets ------------------------------------------------------


def test_add_and_remove_refuse_clearly_what_cannot_be_done(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=3, max_concurrency=3)
    cluster = clusters(sim, [0, 1], 3)
    with pytest.raises(ClusterNotUp, match=r"call cluster.up\(\) first"):
        cluster.add_shard(2)
    with pytest.raises(ClusterNotUp, match=r"call cluster.up\(\) first"):
        cluster.remove_shard(0)
    cluster.up(timeout=TIMEOUT)

    with pytest.raises(ShardSchemeError, match="outside 0..2.*another total are a new cluster"):
        cluster.add_shard(3)
    with pytest.raises(ShardSchemeError, match="outside"):
        cluster.add_shard(-1)
    with pytest.raises(ShardSchemeError, match="not an int"):
        cluster.add_shard(True)
    with pytest.raises(ShardSchemeError, match="not an int"):
        cluster.remove_shard([0])  # type: ignore[arg-type]
    with pytest.raises(InvalidState, match=r"already runs .*remove_shard\(1\) first"):
        cluster.add_shard(1)
    with pytest.raises(ShardNonexistent):
        cluster.remove_shard(2)

    session = cluster.shard(1).session  # type: ignore[union-attr]
    assert session is not None and (session.shard_id, session.total) == (1, 3)
    with pytest.raises(ConfigError, match="of shard 1, not of shard 2"):
        cluster.add_shard(2, session)
    other_total = ResumeSession(session.session_id, session.sequence, shard_id=2, total=4)
    with pytest.raises(ConfigError, match="4 shards, not 3"):
        cluster.add_shard(2, other_total)
    with pytest.raises(ConfigError, match=r"not dict: ResumeSession\.from_dict\(data\)") as raw:
        cluster.add_shard(2, session.to_dict())  # type: ignore[arg-type]
    assert session.session_id not in str(raw.value)
    assert sim.records.resumes == [] and sorted(cluster.info()) == [0, 1]

    # Not resumable: closed with 1000, the session ends and nothing is returned.
    assert cluster.remove_shard(1, resumable=False) is None
    assert sim.wait_until(lambda: any(r.shard_id == 1 for r in sim.records.closes), TIMEOUT)
    closes = [r for r in sim.records.closes if r.shard_id == 1]
    assert [(r.code, r.initiator) for r in closes] == [(1000, "client")]
    assert sim.session(1) is None  # ended
    with pytest.raises(ShardNonexistent):
        cluster.remove_shard(1)

    cluster.down()
    with pytest.raises(InvalidState, match="shut down, so it cannot add shard 2"):
        cluster.add_shard(2)
    with pytest.raises(InvalidState, match="shut down, so it cannot remove shard 0"):
        cluster.remove_shard(0)


class GatedStore(MemorySessionStore):
    """A session store whose `load` waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Flag()
        self.gate.set()
        self.entered = Flag()

    def load(self, shard_ids: Any) -> dict[int, ResumeSession]:
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        return super().load(shard_ids)


def test_one_shard_id_is_added_or_removed_by_one_call_at_a_time(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=3, max_concurrency=3)
    store = GatedStore()
    cluster = clusters(sim, [0, 1], 3, session_store=store)
    cluster.up(timeout=TIMEOUT)

    store.gate.clear()  # the first add waits on the store
    store.entered.clear()
    first = gevent.spawn(cluster.add_shard, 2)
    assert store.entered.wait(TIMEOUT)
    with pytest.raises(InvalidState, match="shard 2 is being added or removed by another call"):
        cluster.add_shard(2)
    with pytest.raises(InvalidState, match="being added or removed"):
        cluster.remove_shard(2)
    store.gate.set()
    shard = first.get(timeout=TIMEOUT)
    assert cluster.shard(2) is shard and shard.wait_until_ready(TIMEOUT)

    # Two removals of one shard: the second is told, the first gets the session.
    removals = [gevent.spawn(cluster.remove_shard, 2) for _ in range(2)]
    gevent.joinall(removals, timeout=TIMEOUT)
    outcomes = sorted(type(g.value or g.exception).__name__ for g in removals)
    assert outcomes == ["InvalidState", "ResumeSession"]
    assert [r.shard_id for r in sim.records.identifies].count(2) == 1


def test_events_go_on_after_the_last_shard_is_removed_and_its_events_arrive(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    cluster = clusters(sim, [0, 1], 2)
    cluster.up(timeout=TIMEOUT)
    sim.send_events(0, 3)
    sim.send_events(1, 3)
    assert sim.wait_until(
        lambda: all(cluster.info()[i].sequence == sim.session(i).sequence for i in (0, 1)),
        TIMEOUT,
    )
    sessions = {i: cluster.remove_shard(i) for i in (0, 1)}
    assert cluster.shards() == [] and cluster.info() == {}
    assert cluster.total == 2  # fixed when it came up, shards or none
    assert cluster.wait_until_ready(0)  # every shard it runs (none) is ready

    # One loop reads it all: the removed shards' events, then, after a shard
    # comes back, its new ones; it did not end when the cluster had no shard.
    events = cluster.events()
    received = collect(events, has_numbers([0, 1], 3))
    cluster.add_shard(0, sessions[0])
    sim.send_events(0, 2)
    received += collect(events, has_numbers([0], 5))
    assert numbers(received, 0) == [1, 2, 3, 4, 5] and numbers(received, 1) == [1, 2, 3]
    kinds = [(sid, e.kind) for sid, e in received]
    assert (0, EventType.SHARD_DISCONNECTED) in kinds and (1, EventType.SHARD_DISCONNECTED) in kinds
    assert [(r.shard_id, r.ok) for r in sim.records.resumes] == [(0, True)]
    assert sorted(r.shard_id for r in sim.records.identifies) == [0, 1]


# --- sessions of another shard count -----------------------------------------------------


def test_a_stored_session_of_another_total_is_not_resumed(
    make_sim: MakeSim, clusters: Callable[..., Cluster], caplog: pytest.LogCaptureFixture
) -> None:
    """A bot resharded from 2 to 4 shards finds the old sessions in its store: it identifies."""
    store = MemorySessionStore()
    old_sim = make_sim(shards=2, max_concurrency=2)
    old = clusters(old_sim, [0, 1], 2, session_store=store)
    old.up(timeout=TIMEOUT)
    old.down_resumable()
    assert sorted(store.sessions) == [0, 1] and store.sessions[0].total == 2
    old_session = store.sessions[0]

    sim = make_sim(shards=4, max_concurrency=4)
    new = clusters(sim, [0], 4, session_store=store)
    with caplog.at_level(logging.WARNING, logger="gcluster.cluster"):
        new.up(timeout=TIMEOUT)
        assert new.add_shard(1).wait_until_ready(TIMEOUT)  # up() and add_shard alike
    assert sim.records.resumes == []
    assert sorted(r.shard_id for r in sim.records.identifies) == [0, 1]
    warnings = [r.getMessage() for r in caplog.records if "stored session" in r.getMessage()]
    assert len(warnings) == 2 and all("2 shards, not 4" in w for w in warnings)
    new.down_resumable()
    assert {i: s.total for i, s in store.sessions.items()} == {0: 4, 1: 4}  # the old ones replaced

    # Given explicitly, it is refused before anything connects.
    with pytest.raises(ConfigError, match=r"resume_sessions\[0\].*2 shards, not 4"):
        clusters(sim, [0], 4, resume_sessions={0: old_session})


# --- metrics -------------------------------------------------------------------------------


@pytest.mark.extras
def test_metrics_follow_the_shards_the_cluster_runs(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    from gcluster.metrics import ClusterCollector

    sim = make_sim(shards=3, max_concurrency=3)
    cluster = clusters(sim, [0, 1], 3)
    cluster.up(timeout=TIMEOUT)
    collector = ClusterCollector(cluster)

    def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in collector.collect():
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                found.setdefault(sample.name, {})[labels] = sample.value
        return found

    def shards_in(samples: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> set[str]:
        return {dict(labels)["shard"] for labels in samples["gcluster_shard_identifies_total"]}

    assert shards_in(scrape()) == {"0", "1"}
    assert cluster.add_shard(2).wait_until_ready(TIMEOUT)
    before = scrape()
    assert shards_in(before) == {"0", "1", "2"}
    cluster.remove_shard(0)
    after = scrape()
    assert shards_in(after) == {"1", "2"}
    # Cluster-wide counters keep what the removed shard added.
    assert (
        after["gcluster_identify_queue_waits_total"]
        == before["gcluster_identify_queue_waits_total"]
    )
    assert cluster.session_starts_remaining == sim.session_start_remaining - 1


# --- ThreadedCluster ------------------------------------------------------------------------


def test_threaded_cluster_adds_and_removes_shards_from_any_thread() -> None:
    from test_threaded import first_event, in_thread, simulator_hub

    from gcluster.threaded import ThreadedCluster, ThreadedShard

    with simulator_hub(shards=3, max_concurrency=3) as where:
        sim = where.sim
        cluster = ThreadedCluster(
            sim.token,
            STREAM_INTENTS,
            api_base=sim.api_base,
            shard_scheme=ShardScheme.range([0], 3),
            call_timeout=TIMEOUT,
        )
        try:
            with pytest.raises(ClusterNotUp, match=r"call cluster.up\(\) first"):
                cluster.add_shard(1)
            cluster.up(timeout=TIMEOUT)
            # Two threads add shard 1 at once: one starts it, the other is told.
            together = threading.Barrier(2, timeout=TIMEOUT)

            def add() -> object:
                together.wait()
                return cluster.add_shard(1)

            outcomes: list[object] = []
            threads = [
                threading.Thread(target=lambda: outcomes.append(in_thread(add))) for _ in range(2)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(TIMEOUT)
            (handle,) = [o for o in outcomes if isinstance(o, ThreadedShard)]
            (refused,) = [o for o in outcomes if isinstance(o, InvalidState)]
            assert "already runs" in str(refused)
            assert cluster.shard(1) is handle and [s.id for s in cluster.shards()] == [0, 1]
            assert handle.wait_until_ready(TIMEOUT) and handle.total == 3
            with pytest.raises(ShardSchemeError):
                cluster.add_shard(3)

            where.call(sim.send_events, 1, 3)
            assert where.wait_until(lambda: sim.session(1).sequence == handle.info().sequence)
            session = cluster.remove_shard(1)
            assert session is not None and (session.shard_id, session.total) == (1, 3)
            assert cluster.shard(1) is None and sorted(cluster.info()) == [0]
            with pytest.raises(ShardNonexistent):
                handle.info()  # the handle of a removed shard says so
            with pytest.raises(ShardNonexistent):
                cluster.remove_shard(1)
            # Its events, received before it left, still come out of events().
            shard_id, third = first_event(cluster, lambda _, e: event_number(e.data) == 3)
            assert shard_id == 1 and third.sequence == session.sequence

            back = cluster.add_shard(1, session)
            assert back.wait_until_ready(TIMEOUT)
            assert [(r.shard_id, r.ok) for r in sim.records.resumes] == [(1, True)]
            assert sorted(r.shard_id for r in sim.records.identifies) == [0, 1]
        finally:
            cluster.down()
        with pytest.raises(InvalidState, match="shut down, so it cannot add shard 2"):
            cluster.add_shard(2)
        with pytest.raises(InvalidState, match="shut down"):
            cluster.remove_shard(0)


def test_when_the_shards_left_have_all_failed_events_raise_and_an_added_shard_revives_them(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    cluster = clusters(sim, [0, 1], 2)
    cluster.up(timeout=TIMEOUT)
    sim.close_shard(0, 4004)  # closed for good: authentication failed
    assert sim.wait_until(lambda: cluster.info()[0].error is not None, TIMEOUT)
    session = cluster.remove_shard(1)
    events = cluster.events()
    # Shard 1's last events first, then the error: nothing else can arrive.
    with pytest.raises(AuthenticationFailed), gevent.Timeout(TIMEOUT):
        for _ in events:
            pass

    cluster.add_shard(1, session)
    received = collect(
        cluster.events(), lambda got: got[-1][0] == 1 and got[-1][1].kind is EventType.RESUMED
    )
    assert received[-1][1].kind is EventType.RESUMED


def test_after_down_the_queue_gives_events_only_never_the_clusters_session_marks(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    store = MemorySessionStore()
    sim = make_sim(shards=2, max_concurrency=2)
    cluster = clusters(sim, [0, 1], 2, session_store=store)
    cluster.up(timeout=TIMEOUT)
    cluster.remove_shard(1)  # a ShardRemoved mark follows its events in the queue
    assert sorted(store.sessions) == [1]
    cluster.down()  # ends the sessions: nothing is saved from now on
    with gevent.Timeout(TIMEOUT):
        left = list(cluster.events())  # read only now: READYs, session marks and all
    assert left and all(isinstance(event, Event) for _, event in left)
    assert {sid for sid, e in left if e.kind is EventType.READY} == {0, 1}
    assert sorted(store.sessions) == [1]  # shard 1 left with its session; 0 ended with down()
