"""The Cluster API against the simulator, with four shards or more."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import gevent
import pytest
from conftest import TIMEOUT, assert_exactly_once_in_order, collect, has_numbers, numbers
from gevent.event import Event as Flag

from gcluster import (
    AuthenticationFailed,
    ClusterStartError,
    ClusterStartErrorType,
    CommandSendingError,
    DisallowedIntents,
    EventStreamBusy,
    EventType,
    EventTypeFlags,
    Intents,
    InvalidShard,
    LocalQueue,
    Message,
    NoOpQueue,
    RequestGuildMembers,
    ResumeSession,
    SessionStartLimitExhausted,
    ShardNonexistent,
    ShardScheme,
    Stage,
    UpdatePresence,
    shard_for_guild,
)
from gcluster.cluster import Cluster
from gcluster.testing import STREAM_INTENTS, GatewaySimulator, faults

MakeSim = Callable[..., GatewaySimulator]
SHARDS = 4


def make_cluster(sim: GatewaySimulator, **options: object) -> Cluster:
    return Cluster(sim.token, Intents.GUILDS | STREAM_INTENTS, api_base=sim.api_base, **options)


@pytest.fixture
def sim(make_sim: MakeSim) -> GatewaySimulator:
    # max_concurrency = shards so start-up does not wait 5 s per shard.
    return make_sim(shards=SHARDS, max_concurrency=SHARDS)


@pytest.fixture
def cluster(sim: GatewaySimulator) -> Iterator[Cluster]:
    yield from _started(make_cluster(sim))


# The transports whose guarantees are the same; zstd-stream needs the zstd extra.
COMPRESSIONS = ["zlib-stream", pytest.param("zstd-stream", marks=pytest.mark.extras)]


@pytest.fixture(params=COMPRESSIONS)
def each_transport(request: pytest.FixtureRequest, sim: GatewaySimulator) -> Iterator[Cluster]:
    """The cluster once per transport compression (the tests name what they check)."""
    yield from _started(make_cluster(sim, compression=request.param))


def _started(cluster: Cluster) -> Iterator[Cluster]:
    cluster.up(timeout=TIMEOUT)
    assert cluster.wait_until_ready(TIMEOUT)
    yield cluster
    cluster.down()


def test_every_event_of_every_shard_exactly_once_in_order(
    sim: GatewaySimulator, each_transport: Cluster
) -> None:
    cluster = each_transport
    for shard_id in range(SHARDS):
        sim.send_events(shard_id, 300)
    received = collect(cluster.events(), has_numbers(range(SHARDS), 300))
    assert_exactly_once_in_order(received, range(SHARDS), 300)
    compression = cluster.config().compression
    assert [c.compression for c in sim.records.connections] == [compression] * SHARDS
    assert [c.query["compress"] for c in sim.records.connections] == [compression] * SHARDS


def test_a_decoder_given_as_a_callable_decodes_every_dispatch(sim: GatewaySimulator) -> None:
    decoded: list[bytes] = []

    def loads(payload: bytes) -> object:
        decoded.append(payload)
        return json.loads(payload)

    with make_cluster(sim, decoder=loads) as cluster:
        cluster.up(timeout=TIMEOUT)
        for shard_id in range(SHARDS):
            sim.send_events(shard_id, 50)
        received = collect(cluster.events(), has_numbers(range(SHARDS), 50))
    assert_exactly_once_in_order(received, range(SHARDS), 50)
    dispatches = [e for _, e in received if e.sequence is not None]
    # Every dispatch went through it (READY too, which the shard decodes itself).
    assert len(decoded) >= len(dispatches) == len(sim.records.dispatches)


@pytest.mark.extras
def test_orjson_decoder_delivers_the_same_events(sim: GatewaySimulator) -> None:
    with make_cluster(sim, decoder="orjson") as cluster:
        cluster.up(timeout=TIMEOUT)
        for shard_id in range(SHARDS):
            sim.send_events(shard_id, 200)
        received = collect(cluster.events(), has_numbers(range(SHARDS), 200))
    assert_exactly_once_in_order(received, range(SHARDS), 200)


def test_auto_scheme_uses_the_recommended_count(make_sim: MakeSim) -> None:
    sim = make_sim(shards=3, max_concurrency=3)
    cluster = make_cluster(sim)
    try:
        cluster.up(timeout=TIMEOUT)
        assert [s.id for s in cluster.shards()] == [0, 1, 2]
        assert sim.wait_until(lambda: len(sim.records.identifies) == 3, timeout=TIMEOUT)
        assert sorted((i.shard_id, i.total) for i in sim.records.identifies) == [
            (0, 3),
            (1, 3),
            (2, 3),
        ]
        assert cluster.shard(2) is not None and cluster.shard(3) is None
    finally:
        cluster.down()


def test_info_reports_sessions_sequences_and_latency(
    sim: GatewaySimulator, cluster: Cluster
) -> None:
    for shard_id in range(SHARDS):
        sim.send_events(shard_id, 10)
    collect(cluster.events(), has_numbers(range(SHARDS), 10))
    assert sim.wait_until(
        lambda: all(i.latency.heartbeats >= 1 for i in cluster.info().values()), timeout=TIMEOUT
    )
    info = cluster.info()
    assert sorted(info) == list(range(SHARDS))
    for shard_id, shard in info.items():
        session = sim.session(shard_id)
        assert session is not None
        assert shard.stage is Stage.CONNECTED
        assert shard.session_id == session.session_id
        assert shard.sequence == session.sequence == 11  # READY + 10 events
        assert shard.resume_url == sim.resume_url
        assert shard.latency.average is not None
        assert shard.ratelimit is not None and shard.ratelimit[0] > 0
        assert shard.error is None


def test_command_reaches_the_right_shard(sim: GatewaySimulator, cluster: Cluster) -> None:
    guild_id = sim.guild_ids(2)[0]
    shard_id = shard_for_guild(guild_id, SHARDS)
    assert shard_id == 2
    cluster.command(shard_id, RequestGuildMembers(guild_id=guild_id, query="", limit=0, nonce="n1"))
    cluster.command(1, UpdatePresence(status="idle"))
    assert sim.wait_until(lambda: len(sim.records.commands) == 2, timeout=TIMEOUT)
    by_op = {c.op: c for c in sim.records.commands}
    assert by_op[8].shard_id == 2 and by_op[8].data["guild_id"] == str(guild_id)
    assert by_op[3].shard_id == 1 and by_op[3].data["status"] == "idle"
    # The simulator answers op 8 with a chunk on the same shard.
    received = collect(
        cluster.events(), lambda got: got[-1][1].kind is EventType.GUILD_MEMBERS_CHUNK
    )
    assert received[-1][0] == 2 and received[-1][1].data["nonce"] == "n1"


def test_unknown_shard_is_refused(cluster: Cluster) -> None:
    with pytest.raises(ShardNonexistent) as caught:
        cluster.command(99, UpdatePresence())
    assert caught.value.shard_id == 99 and caught.value.kind.name == "SHARD_NONEXISTENT"
    with pytest.raises(ShardNonexistent):
        cluster.send(99, Message.text("{}"))


def test_command_raw_is_deprecated_but_works(sim: GatewaySimulator, cluster: Cluster) -> None:
    with pytest.deprecated_call():
        cluster.command_raw(
            0, b'{"op":3,"d":{"since":null,"activities":[],"status":"dnd","afk":false}}'
        )
    assert sim.wait_until(lambda: len(sim.records.commands) == 1, timeout=TIMEOUT)
    assert sim.records.commands[0].data["status"] == "dnd"


def test_close_4000_resumes_and_loses_nothing(
    sim: GatewaySimulator, each_transport: Cluster
) -> None:
    cluster = each_transport
    sim.send_events(1, 100)
    collect(cluster.events(), has_numbers([1], 100))
    cluster.send(1, Message.close(4000, "testing"))
    # Sent while the shard is away: kept in the session and replayed on RESUME.
    sim.send_events(1, 100)
    received = collect(cluster.events(), has_numbers([1], 200))
    assert numbers(received, 1) == list(range(101, 201))
    assert sim.wait_until(lambda: any(r.ok for r in sim.records.resumes), timeout=TIMEOUT)
    (resume,) = sim.records.resumes
    assert resume.shard_id == 1 and resume.ok
    assert [c.code for c in sim.records.closes if c.initiator == "client"] == [4000]
    assert len(sim.records.identifies) == SHARDS  # no new session
    resumed_on = [c for c in sim.records.connections if c.id == resume.connection_id]
    assert resumed_on[0].path.startswith("/resume")
    # A new connection, so a new compression stream of the same kind.
    assert resumed_on[0].compression == cluster.config().compression


def test_down_ends_the_iterator_after_queued_events(
    sim: GatewaySimulator, cluster: Cluster
) -> None:
    sim.send_events(0, 50)
    assert sim.wait_until(lambda: len(sim.records.dispatches) >= SHARDS + 50, timeout=TIMEOUT)
    assert sim.wait_until(lambda: cluster.shard(0).info().sequence == 51, timeout=TIMEOUT)  # type: ignore[union-attr]
    cluster.down()
    received = list(cluster.events())  # must end, not block
    assert numbers(received, 0) == list(range(1, 51))
    disconnects = [e for _, e in received if e.kind is EventType.SHARD_DISCONNECTED]
    assert len(disconnects) == SHARDS and all(e.data["code"] == 1000 for e in disconnects)
    with pytest.raises(CommandSendingError):
        cluster.command(0, UpdatePresence())


def test_down_resumable_then_a_new_cluster_resumes_every_shard(sim: GatewaySimulator) -> None:
    first = make_cluster(sim)
    first.up(timeout=TIMEOUT)
    for shard_id in range(SHARDS):
        sim.send_events(shard_id, 20)
    collect(first.events(), has_numbers(range(SHARDS), 20))
    sessions = first.down_resumable()
    assert sorted(sessions) == list(range(SHARDS))
    assert all(c.code not in (1000, 1001) for c in sim.records.closes)
    saved = json.dumps({str(k): v.to_dict() for k, v in sessions.items()})

    # Dispatched while no process holds the shards.
    for shard_id in range(SHARDS):
        sim.send_events(shard_id, 30)

    restored = {int(k): ResumeSession.from_dict(v) for k, v in json.loads(saved).items()}
    assert restored == sessions
    second = make_cluster(sim, resume_sessions=restored)
    try:
        second.up(timeout=TIMEOUT)
        received = collect(second.events(), has_numbers(range(SHARDS), 50))
        for shard_id in range(SHARDS):
            assert numbers(received, shard_id) == list(range(21, 51))
        assert sorted(r.shard_id for r in sim.records.resumes if r.ok) == list(range(SHARDS))
        assert all(r.replayed == 30 for r in sim.records.resumes)
        assert len(sim.records.identifies) == SHARDS  # only the first cluster's
        assert not any(e.kind is EventType.READY for _, e in received)
    finally:
        second.down()


def test_context_manager_brings_the_cluster_up_and_down(sim: GatewaySimulator) -> None:
    with make_cluster(sim) as cluster:
        assert cluster.wait_until_ready(TIMEOUT)
        assert all(i.stage is Stage.CONNECTED for i in cluster.info().values())
    assert all(i.stage is Stage.DISCONNECTED for i in cluster.info().values())
    assert sim.wait_until(lambda: len(sim.records.closes) == SHARDS, timeout=TIMEOUT)


def test_bad_token_raises_authentication_failed_from_up(make_sim: MakeSim) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    cluster = Cluster("Bot wrong-token", Intents.GUILDS, api_base=sim.api_base)
    with pytest.raises(AuthenticationFailed) as caught:
        cluster.up(timeout=TIMEOUT)
    assert "wrong-token" not in str(caught.value)
    assert sim.records.connections == []


def test_bad_token_on_the_gateway_fails_the_shards_and_ends_events(make_sim: MakeSim) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    cluster = Cluster(
        "wrong-token",
        Intents.GUILDS,
        gateway_url=sim.url,
        shard_scheme=ShardScheme.range(range(2), 2),
        queue=NoOpQueue(),
    )
    try:
        with pytest.raises(AuthenticationFailed):
            cluster.up(timeout=TIMEOUT)
        with pytest.raises(AuthenticationFailed):
            collect(cluster.events(), lambda got: False)
        info = cluster.info()
        assert all(i.stage is Stage.FATALLY_CLOSED for i in info.values())
        assert all(isinstance(i.error, AuthenticationFailed) for i in info.values())
    finally:
        cluster.down()


def test_disallowed_intents_fail_fatally(make_sim: MakeSim) -> None:
    sim = make_sim(shards=1, privileged_intents=0)
    cluster = Cluster(sim.token, Intents.MESSAGE_CONTENT, api_base=sim.api_base)
    try:
        # As the docs say: up() raises it, rather than return before the close came.
        with pytest.raises(DisallowedIntents) as caught:
            cluster.up(timeout=TIMEOUT)
        assert caught.value.shard_id == 0 and caught.value.code == 4014
        # The simulator records the close once the closing handshake is over.
        assert sim.wait_until(lambda: sim.records.closes, timeout=TIMEOUT)
        assert [(c.code, c.initiator) for c in sim.records.closes] == [(4014, "server")]
        received = []
        with pytest.raises(DisallowedIntents):
            for item in cluster.events():
                received.append(item)
        (disconnect,) = [e for _, e in received if e.kind is EventType.SHARD_DISCONNECTED]
        assert disconnect.data == {"code": 4014, "reason": disconnect.data["reason"], "fatal": True}
        assert len(sim.records.identifies) == 0 and len(sim.records.connections) == 1
    finally:
        cluster.down()


def test_up_times_out_while_the_identify_queue_holds_a_shard(make_sim: MakeSim) -> None:
    sim = make_sim(shards=2, max_concurrency=1)
    cluster = make_cluster(sim)
    try:
        # Two shards in one bucket: the second may identify only 5 s after the first.
        with pytest.raises(ClusterStartError) as caught:
            cluster.up(timeout=1.0)
        assert caught.value.kind is ClusterStartErrorType.TIMEOUT
        assert len(sim.records.identifies) == 1
    finally:
        cluster.down()


def test_unreachable_rest_is_a_start_error() -> None:
    cluster = Cluster("token", Intents.GUILDS, api_base="http://127.0.0.1:9/api/v10")
    with pytest.raises(ClusterStartError) as caught:
        cluster.up(timeout=TIMEOUT)
    assert caught.value.kind is ClusterStartErrorType.RETRIEVING_GATEWAY_INFO


def test_too_few_session_starts_fail_before_any_identify(make_sim: MakeSim) -> None:
    sim = make_sim(shards=4, max_concurrency=4, session_start_remaining=3)
    cluster = make_cluster(sim)
    with pytest.raises(SessionStartLimitExhausted) as caught:
        cluster.up(timeout=TIMEOUT)
    # One start is always kept back: spending the last one resets the bot's token.
    assert caught.value.needed == 4 and caught.value.remaining == 2
    assert sim.records.connections == [] and sim.records.identifies == []
    cluster.down()


def test_up_returns_once_every_shard_has_received_ready(make_sim: MakeSim) -> None:
    # Two buckets 0.3 s apart: the second bucket's IDENTIFYs are the last thing
    # up() would have waited for before; now it waits for their READYs too.
    sim = make_sim(shards=SHARDS, max_concurrency=2, identify_interval=0.3)
    cluster = make_cluster(sim, queue=LocalQueue(interval=0.3))
    try:
        cluster.up(timeout=TIMEOUT)
        # Checked before anything else can run: up() returned after the READYs.
        info = cluster.info()
        assert [i.stage for i in info.values()] == [Stage.CONNECTED] * SHARDS
        assert sorted(i.shard_id for i in sim.records.identifies) == list(range(SHARDS))
        for shard_id, shard in info.items():
            session = sim.session(shard_id)
            assert session is not None and shard.session_id == session.session_id
    finally:
        cluster.down()


def test_up_without_blocking_returns_before_any_identify(sim: GatewaySimulator) -> None:
    cluster = make_cluster(sim)
    try:
        cluster.up(block=False)
        assert sim.records.identifies == []
        assert [s.id for s in cluster.shards()] == list(range(SHARDS))
        assert cluster.wait_until_ready(TIMEOUT)
        assert len(sim.records.identifies) == SHARDS
    finally:
        cluster.down()


class HeldQueue:
    """An identify queue that keeps some shards waiting until released."""

    def __init__(self, held: set[int]) -> None:
        self.held = held
        self.released = Flag()

    def request(self, shard_id: int, total: int) -> None:
        if shard_id in self.held:
            self.released.wait()


def test_up_raises_the_first_fatal_close_while_other_shards_still_wait(
    make_sim: MakeSim,
) -> None:
    sim = make_sim(shards=3, max_concurrency=3)
    queue = HeldQueue({0, 1})
    # Shard 2 alone may identify; the gateway closes it for good after its READY.
    sim.schedule_fault(2, faults.CloseConnection(code=4010), after_dispatches=1)
    cluster = make_cluster(sim, queue=queue)
    try:
        with gevent.Timeout(TIMEOUT, AssertionError("up() did not raise while shards waited")):
            with pytest.raises(InvalidShard) as caught:
                cluster.up(timeout=TIMEOUT)
        assert caught.value.shard_id == 2 and caught.value.code == 4010
        assert sim.wait_until(lambda: sim.records.closes, timeout=TIMEOUT)
        assert [(c.shard_id, c.code, c.initiator) for c in sim.records.closes] == [
            (2, 4010, "server")
        ]
        assert [i.shard_id for i in sim.records.identifies] == [2]
        # The other shards go on: they identify once the queue lets them.
        queue.released.set()
        assert sim.wait_until(lambda: len(sim.records.identifies) == 3, timeout=TIMEOUT)
        info = cluster.info()
        assert info[2].stage is Stage.FATALLY_CLOSED and isinstance(info[2].error, InvalidShard)
    finally:
        queue.released.set()
        cluster.down()


def test_a_second_events_iterator_while_one_is_open_is_refused(
    sim: GatewaySimulator, cluster: Cluster
) -> None:
    sim.send_events(0, 10)
    first = cluster.events()
    collect(first, has_numbers([0], 5))  # `first` stays open: it may be read on
    with gevent.Timeout(TIMEOUT, AssertionError("the second iterator waited")):
        with pytest.raises(EventStreamBusy, match="another events"):
            next(cluster.events())
    rest = collect(first, has_numbers([0], 10))
    assert numbers(rest, 0) == list(range(6, 11))
    first.close()
    # Closed: the next iterator carries on with what comes after.
    sim.send_events(0, 5)
    received = collect(cluster.events(), has_numbers([0], 15))
    assert numbers(received, 0) == list(range(11, 16))


def test_info_and_stats_convert_to_json(sim: GatewaySimulator, cluster: Cluster) -> None:
    sim.send_events(1, 5)
    collect(cluster.events(), has_numbers([1], 5))
    served = json.loads(
        json.dumps(
            {
                "shards": [i.to_dict() for i in cluster.info().values()],
                "stats": {s.id: s.stats.to_dict() for s in cluster.shards()},
            }
        )
    )
    shard = served["shards"][1]
    session = sim.session(1)
    assert session is not None
    assert shard["id"] == 1 and shard["stage"] == "connected" and shard["error"] is None
    assert shard["session_id"] == session.session_id and shard["sequence"] == session.sequence
    assert shard["resume_url"] == sim.resume_url
    assert isinstance(shard["latency"]["recent"], list) and isinstance(shard["ratelimit"], list)
    stats = served["stats"]["1"]
    dispatched = [d for d in sim.records.dispatches if d.shard_id == 1]
    assert stats["identifies"] == 1 and stats["delivered"] == len(dispatched)
    assert sum(stats["events"].values()) == len(dispatched)


def test_up_returns_at_ready_even_when_ready_and_lifecycle_events_are_filtered_out(
    make_sim: MakeSim,
) -> None:
    # Heartbeats far apart: nothing but READY itself can tell up() the shard is ready.
    sim = make_sim(shards=1, heartbeat_interval=41.25)
    cluster = make_cluster(sim, event_types=EventTypeFlags.MESSAGE_CREATE)
    try:
        cluster.up(timeout=5)
        assert cluster.info()[0].stage is Stage.CONNECTED
        assert [r.shard_id for r in sim.records.identifies] == [0]
    finally:
        cluster.down()


def test_two_greenlets_calling_up_at_once_start_each_shard_once(sim: GatewaySimulator) -> None:
    cluster = make_cluster(sim)
    try:
        # Both calls wait on GET /gateway/bot (in the thread pool) at the same time.
        calls = [gevent.spawn(cluster.up, timeout=TIMEOUT) for _ in range(2)]
        gevent.joinall(calls, timeout=TIMEOUT, raise_error=True)
        assert all(call.successful() for call in calls)
        assert sorted(shard.id for shard in cluster.shards()) == list(range(SHARDS))
        assert sorted(r.shard_id for r in sim.records.identifies) == list(range(SHARDS))
        assert [sim.live_connections(i) for i in range(SHARDS)] == [1] * SHARDS
    finally:
        cluster.down()


def test_down_while_up_is_making_the_shards_starts_none(sim: GatewaySimulator) -> None:
    cluster = make_cluster(sim)
    starting = gevent.spawn(cluster.up, timeout=TIMEOUT)
    gevent.sleep(0)  # up() is now waiting on GET /gateway/bot
    cluster.down()
    with pytest.raises(ClusterStartError, match="shut down while up\\(\\) was starting it"):
        starting.get(timeout=TIMEOUT)
    assert cluster.shards() == []
    assert sim.records.identifies == []
