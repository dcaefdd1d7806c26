"""request_members and op 43 on the simulator and a scripted gateway; Cluster and ThreadedCluster.

What the gateway did is read from the simulator's records (commands received,
dispatches written, resumes); what the application got, from the call's
result and from `events()`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from conftest import TIMEOUT, collect
from hostile import TOKEN, HostileGateway, Peer
from test_simulator import TOKEN as SIM_TOKEN
from test_simulator import connect
from test_threaded import simulator_hub

from gcluster import (
    Cluster,
    ClusterNotUp,
    CommandSendingError,
    ConfigError,
    EventType,
    EventTypeFlags,
    GuildMembers,
    Intents,
    InvalidCommand,
    MembersRateLimited,
    MembersRequestError,
    MembersRequestLost,
    MembersTimeout,
    RequestChannelInfo,
    RequestGuildMembers,
    ShardNonexistent,
    ShardScheme,
    Stage,
    ThreadedCluster,
    UpdatePresence,
)
from gcluster.events import Event
from gcluster.testing import GatewaySimulator, event_number, faults

MakeSim = Callable[..., GatewaySimulator]
# GUILD_MESSAGES for the MESSAGE_CREATE that `send_events` sends first.
MEMBERS = Intents.GUILDS | Intents.GUILD_MEMBERS | Intents.GUILD_PRESENCES | Intents.GUILD_MESSAGES
GUILD_MEMBERS = 24  # every simulated guild has 24 members


@pytest.fixture
def clusters() -> Iterator[Callable[..., Cluster]]:
    """Build clusters on a simulator and bring them up; all are brought down after the test."""
    made: list[Cluster] = []

    def make(sim: GatewaySimulator, intents: int = MEMBERS, **options: Any) -> Cluster:
        cluster = Cluster(sim.token, intents, api_base=sim.api_base, **options)
        made.append(cluster)
        cluster.up(timeout=TIMEOUT)
        return cluster

    yield make
    for cluster in made:
        cluster.down()


def member_requests(sim: GatewaySimulator) -> list[dict[str, Any]]:
    return [command.data for command in sim.records.commands if command.op == 8]


def written(sim: GatewaySimulator, name: str) -> int:
    return sum(1 for record in sim.records.dispatches if record.t == name)


def until_numbered(received: list[tuple[int, Event]]) -> bool:
    event = received[-1][1]
    return isinstance(event.data, dict) and event_number(event.data) is not None


def ids(result: GuildMembers) -> list[int]:
    return [int(member["user"]["id"]) for member in result.members]


# --- gathering ----------------------------------------------------------------------------


def test_every_chunk_is_gathered_and_only_other_chunks_reach_events(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(members_per_chunk=10)
    cluster = clusters(sim)
    guild = sim.guilds(0)[0]

    everyone = cluster.request_members(guild.id, presences=True, timeout=TIMEOUT)
    assert everyone.chunk_count == 3 and written(sim, "GUILD_MEMBERS_CHUNK") == 3
    assert ids(everyone) == list(guild.member_ids)
    assert [p["user"]["id"] for p in everyone.presences] == [str(u) for u in guild.member_ids]
    [sent] = member_requests(sim)
    assert sent == {
        "guild_id": str(guild.id),
        "query": "",
        "limit": 0,
        "presences": True,
        "nonce": everyone.nonce,
    }
    assert len(everyone.nonce.encode()) <= 32

    some = cluster.request_members(guild.id, user_ids=[guild.member_ids[3], 42], timeout=TIMEOUT)
    assert ids(some) == [guild.member_ids[3]] and some.not_found == [42]
    assert some.presences == [] and some.nonce != everyone.nonce
    first_five = cluster.request_members(guild.id, query="", limit=5, timeout=TIMEOUT)
    assert ids(first_five) == list(guild.member_ids[:5])

    # A request of the application's own is answered through events(), as before.
    cluster.command(0, RequestGuildMembers(guild_id=guild.id, user_ids=[42], nonce="mine"))
    assert sim.wait_until(lambda: len(member_requests(sim)) == 4)  # then answered at once
    sim.send_events(0, 1)
    received = collect(cluster.events(), until_numbered)
    chunks = [e for _, e in received if e.kind is EventType.GUILD_MEMBERS_CHUNK]
    assert [e.data["nonce"] for e in chunks] == ["mine"]
    shard = cluster.shard(0)
    assert shard is not None and shard.stats.events["GUILD_MEMBERS_CHUNK"] == 6


def test_the_answer_is_gathered_even_when_events_filter_chunks_out(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(members_per_chunk=5)
    cluster = clusters(sim, event_types=EventTypeFlags.MESSAGE_CREATE)
    result = cluster.request_members(sim.guild_ids(0)[0], timeout=TIMEOUT)
    assert len(result.members) == GUILD_MEMBERS and result.chunk_count == 5
    # Filtered out for events(), and not counted as filtered: request_members had them.
    shard = cluster.shard(0)
    assert shard is not None and shard.stats.events["GUILD_MEMBERS_CHUNK"] == 5


def test_an_answer_cut_by_a_dropped_connection_completes_after_the_resume(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(members_per_chunk=10)
    cluster = clusters(sim)
    sim.schedule_fault(0, faults.DropConnection(), after_dispatches=1)
    result = cluster.request_members(sim.guild_ids(0)[0], timeout=TIMEOUT)
    assert len(result.members) == GUILD_MEMBERS
    assert [(r.ok, r.replayed) for r in sim.records.resumes] == [(True, 2)]


def test_an_answer_owed_by_a_session_that_ended_is_lost(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(members_per_chunk=10, identify_interval=0)
    cluster = clusters(sim)
    sim.schedule_fault(0, faults.ExpireSession(), after_dispatches=1)
    with pytest.raises(MembersRequestLost, match=r"session ended \(1 of 3 chunks arrived"):
        cluster.request_members(sim.guild_ids(0)[0], timeout=TIMEOUT)
    assert [r.ok for r in sim.records.resumes] == [False]  # the new session IDENTIFYs later


def test_a_stalled_answer_times_out_and_says_nothing_arrived(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    # Long heartbeats: the stall must not look like a zombie connection.
    sim = make_sim(members_per_chunk=10, heartbeat_interval=30)
    cluster = clusters(sim)
    sim.apply_fault(0, faults.Stall(seconds=3))
    with pytest.raises(MembersTimeout, match=r"within 0\.3 s: no chunk arrived") as caught:
        cluster.request_members(sim.guild_ids(0)[0], timeout=0.3)
    assert (caught.value.received, caught.value.expected) == ((), None)
    assert isinstance(caught.value, TimeoutError)


# --- Discord's rate limit -----------------------------------------------------------------------


def test_a_second_full_request_is_refused_unsent_and_discords_rate_limit_raises(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(guilds_per_shard=2)
    cluster = clusters(sim)
    first, second = sim.guild_ids(0)
    cluster.request_members(first, timeout=TIMEOUT)
    with pytest.raises(MembersRateLimited, match="ask again in") as refused:
        cluster.request_members(first, timeout=TIMEOUT)
    assert not refused.value.sent and 0 < refused.value.retry_after <= 30
    assert refused.value.nonce is None
    assert len(member_requests(sim)) == 1
    # Other kinds of request for that guild are not limited.
    assert len(cluster.request_members(first, query="", limit=3, timeout=TIMEOUT).members) == 3

    # Asked by another route (here a command), Discord's own window applies.
    cluster.command(0, RequestGuildMembers(guild_id=second, query="", nonce="mine"))
    with pytest.raises(MembersRateLimited) as limited:
        cluster.request_members(second, timeout=TIMEOUT)
    assert limited.value.sent and 0 < limited.value.retry_after <= 30
    assert written(sim, "RATE_LIMITED") == 1
    with pytest.raises(MembersRateLimited) as again:
        cluster.request_members(second, timeout=TIMEOUT)
    assert not again.value.sent and len(member_requests(sim)) == 4

    sim.send_events(0, 1)
    kinds = [e.kind for _, e in collect(cluster.events(), until_numbered)]
    # The command's answer came through events(); the RATE_LIMITED went to request_members.
    assert kinds.count(EventType.GUILD_MEMBERS_CHUNK) == 1
    assert EventType.RATE_LIMITED not in kinds


# --- refused at once ----------------------------------------------------------------------------


def test_requests_discord_would_not_answer_are_refused_before_sending(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim()
    cluster = clusters(sim, Intents.GUILDS)
    guild = sim.guild_ids(0)[0]
    with pytest.raises(InvalidCommand, match="needs the intent GUILD_MEMBERS"):
        cluster.request_members(guild)
    with pytest.raises(InvalidCommand, match="GUILD_PRESENCES"):
        cluster.request_members(guild, user_ids=[1], presences=True)
    with pytest.raises(InvalidCommand, match="limit must be between 0 and 100"):
        cluster.request_members(guild, query="a", limit=500)
    with pytest.raises(InvalidCommand, match=r"query='a'\) needs limit=1\.\.100"):
        cluster.request_members(guild, query="a")  # Discord would never answer
    with pytest.raises(InvalidCommand, match="exactly one of query or user_ids"):
        cluster.request_members(guild, query="a", user_ids=[1])
    for timeout in (0, -1, None, math.nan, math.inf, True, "5"):
        with pytest.raises(ConfigError, match="positive number of seconds"):
            cluster.request_members(guild, query="a", timeout=timeout)  # type: ignore[arg-type]
    assert member_requests(sim) == []
    # A query needs neither intent.
    assert len(cluster.request_members(guild, query="", limit=2, timeout=TIMEOUT).members) == 2


def test_a_guild_on_a_shard_elsewhere_or_not_connected_gets_a_clear_error(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    idle = Cluster(sim.token, MEMBERS, api_base=sim.api_base)
    with pytest.raises(ClusterNotUp, match=r"call cluster\.up\(\) first"):
        idle.request_members(sim.guild_ids(0)[0])
    cluster = clusters(sim, shard_scheme=ShardScheme.range([0], 2))
    elsewhere = sim.guild_ids(1)[0]
    with pytest.raises(ShardNonexistent, match=rf"guild {elsewhere} is on shard 1 of 2") as caught:
        cluster.request_members(elsewhere)
    assert "it runs shards 0" in str(caught.value) and caught.value.shard_id == 1
    shard_zero = sim.guild_ids(0)[0]
    sim.apply_fault(0, faults.RefuseConnections(count=100))
    sim.drop_shard(0)
    shard = cluster.shard(0)
    assert shard is not None and sim.wait_until(lambda: shard.stage is not Stage.CONNECTED)
    with pytest.raises(CommandSendingError, match="is not connected") as caught:
        cluster.request_members(shard_zero)
    assert "shard.wait_until_ready()" in str(caught.value)
    cluster.down()
    with pytest.raises(CommandSendingError, match="the cluster was shut down"):
        cluster.request_members(shard_zero)
    assert member_requests(sim) == []


# --- op 43 and the newer dispatches --------------------------------------------------------------


def test_channel_info_and_voice_channel_updates_arrive_with_kinds_of_their_own(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim()
    types = EventTypeFlags.CHANNEL_INFO | EventTypeFlags.VOICE_CHANNEL_STATUS_UPDATE
    intents = Intents.GUILDS | Intents.GUILD_MESSAGES
    cluster = clusters(sim, intents, event_types=types | EventTypeFlags.MESSAGE_CREATE)
    guild = sim.guilds(0)[0]
    cluster.command(0, RequestChannelInfo(guild_id=guild.id, fields=["status"]))
    assert sim.wait_until(lambda: any(c.op == 43 for c in sim.records.commands))
    channel = str(guild.channel_ids[1])
    update = {"id": channel, "guild_id": str(guild.id), "status": "lofi"}
    sim.dispatch(0, "VOICE_CHANNEL_STATUS_UPDATE", update)
    start = {"id": channel, "guild_id": str(guild.id), "voice_start_time": 1_700_000_000}
    sim.dispatch(0, "VOICE_CHANNEL_START_TIME_UPDATE", start)  # filtered out
    sim.send_events(0, 1)
    received = [e for _, e in collect(cluster.events(), until_numbered)]
    assert [e.kind for e in received[:-1]] == [
        EventType.CHANNEL_INFO,
        EventType.VOICE_CHANNEL_STATUS_UPDATE,
    ]
    info = received[0].data
    assert info["guild_id"] == str(guild.id) and len(info["channels"]) == len(guild.channel_ids)
    assert all(set(c) == {"id", "status"} for c in info["channels"])
    assert received[1].data == update
    [sent] = [c for c in sim.records.commands if c.op == 43]
    assert sent.data == {"guild_id": str(guild.id), "fields": ["status"]}
    assert written(sim, "VOICE_CHANNEL_START_TIME_UPDATE") == 1


def test_the_simulator_answers_op_8_and_op_43_on_the_wire_as_discord_documents() -> None:
    with GatewaySimulator(token=SIM_TOKEN, heartbeat_interval=12.5, members_per_chunk=10) as sim:
        client = connect(sim)
        try:
            client.ready(intents=int(Intents.GUILDS | Intents.GUILD_MEMBERS))
            guild = sim.guilds(0)[0]
            client.send(8, {"guild_id": str(guild.id), "query": "", "limit": 0, "nonce": "a"})
            chunks = [m["d"] for m in client.recv_dispatches(3)]
            assert [(c["chunk_index"], c["chunk_count"], c["nonce"]) for c in chunks] == [
                (0, 3, "a"),
                (1, 3, "a"),
                (2, 3, "a"),
            ]
            assert [len(c["members"]) for c in chunks] == [10, 10, 4]
            client.send(8, {"guild_id": str(guild.id), "query": "", "limit": 0, "nonce": "b"})
            [limited] = client.recv_dispatches(1)
            assert limited["t"] == "RATE_LIMITED"
            assert limited["d"]["opcode"] == 8 and 0 < limited["d"]["retry_after"] <= 30
            assert limited["d"]["meta"] == {"guild_id": str(guild.id), "nonce": "b"}
            # A query with limit 0 gets no answer at all, as from Discord
            # (discord-api-docs#662): the next dispatch answers the next request.
            client.send(8, {"guild_id": str(guild.id), "query": "a", "limit": 0, "nonce": "c"})
            # Presences need GUILD_PRESENCES, which this session lacks: none come.
            client.send(8, {"guild_id": str(guild.id), "user_ids": ["1"], "presences": True})
            [answer] = client.recv_dispatches(1)
            assert answer["d"].get("nonce") != "c"
            assert answer["d"]["not_found"] == ["1"] and "presences" not in answer["d"]
            client.send(43, {"guild_id": str(guild.id), "fields": ["voice_start_time"]})
            [info] = client.recv_dispatches(1)
            assert info["t"] == "CHANNEL_INFO" and info["d"]["guild_id"] == str(guild.id)
            assert [set(c) for c in info["d"]["channels"]] == [{"id", "voice_start_time"}] * 6
            client.send(43, {"guild_id": str(guild.id), "fields": "status"})
            assert client.expect_close() == 4002
        finally:
            client.drop()


@pytest.mark.parametrize(
    "options",
    [
        {"members_per_chunk": 0},
        {"members_per_chunk": 1001},
        {"members_window": -1},
        {"members_window": math.nan},
    ],
)
def test_the_simulators_member_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        GatewaySimulator(**options)


# --- ThreadedCluster ---------------------------------------------------------------------------


def test_threaded_cluster_requests_members_from_several_threads_at_once() -> None:
    with simulator_hub(members_per_chunk=7, guilds_per_shard=3) as where:
        sim = where.sim
        guilds = where.call(sim.guild_ids, 0)
        cluster = ThreadedCluster(sim.token, MEMBERS, api_base=sim.api_base, call_timeout=TIMEOUT)
        try:
            cluster.up(timeout=TIMEOUT)
            results: dict[int, GuildMembers] = {}
            errors: list[BaseException] = []

            def ask(guild: int) -> None:
                try:
                    results[guild] = cluster.request_members(guild, timeout=TIMEOUT)
                except BaseException as err:  # noqa: BLE001 - reported by the test below
                    errors.append(err)

            threads = [threading.Thread(target=ask, args=(guild,)) for guild in guilds]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(TIMEOUT)
            assert errors == []
            assert {g: (len(r.members), r.chunk_count) for g, r in results.items()} == {
                g: (GUILD_MEMBERS, 4) for g in guilds
            }
            assert len({r.nonce for r in results.values()}) == 3
            with pytest.raises(MembersRateLimited) as refused:
                cluster.request_members(guilds[0])
            assert not refused.value.sent
            with pytest.raises(ConfigError):
                cluster.request_members(guilds[0], timeout=None)  # type: ignore[arg-type]
        finally:
            cluster.down()
        with pytest.raises(CommandSendingError, match="shut down"):
            cluster.request_members(guilds[1], query="a")


# --- a gateway that breaks the rules ------------------------------------------------------------


def hostile_cluster(gateway: HostileGateway) -> Cluster:
    return Cluster(
        TOKEN,
        Intents.GUILDS | Intents.GUILD_MEMBERS,
        gateway_url=gateway.url,
        shard_scheme=ShardScheme.range([0], 1),
        compression=False,
        connect_timeout=2.0,
    )


def answering(*chunks: Callable[[str], dict[str, Any]]) -> Callable[[Peer], None]:
    """A script: a session, then `chunk(nonce)` for each chunk once op 8 comes."""

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept()
        peer.hello()
        peer.identify_or_resume()
        peer.ready()
        request = peer.read_until(lambda f: f.opcode == 0x1 and f.json().get("op") == 8)
        assert request is not None
        nonce = request.json()["d"]["nonce"]
        for seq, make in enumerate(chunks, start=2):
            peer.dispatch("GUILD_MEMBERS_CHUNK", seq, make(nonce))
        peer.drain()

    return script


def part(index: int, count: int, **extra: Any) -> Callable[[str], dict[str, Any]]:
    def make(nonce: str) -> dict[str, Any]:
        data = {
            "guild_id": "1",
            "members": [{"user": {"id": str(10 + index)}}],
            "chunk_index": index,
            "chunk_count": count,
            "nonce": nonce,
        }
        return {**data, **extra}

    return make


def ask(cluster: Cluster, timeout: float = TIMEOUT) -> GuildMembers:
    cluster.up(timeout=TIMEOUT)
    return cluster.request_members(1, timeout=timeout)


def test_a_repeated_chunk_and_another_nonces_chunk_do_not_spoil_the_answer() -> None:
    script = answering(part(1, 2), part(1, 2), lambda _: part(0, 2)("not-mine"), part(0, 2))
    with HostileGateway(script) as gateway:
        cluster = hostile_cluster(gateway)
        try:
            result = ask(cluster)
            assert ids(result) == [10, 11]
            received = collect(cluster.events(), lambda r: r[-1][1].sequence == 4)
            chunks = [e for _, e in received if e.kind is EventType.GUILD_MEMBERS_CHUNK]
            assert [e.data["nonce"] for e in chunks] == ["not-mine"]
        finally:
            cluster.down()


@pytest.mark.parametrize(
    ("chunks", "what"),
    [
        ((part(0, 2), part(1, 3)), "chunk_count 3 after 2"),
        ((part(2, 2),), "chunk_index 2 of chunk_count 2"),
        ((part(0, 1, members=["x"]),), "members holds a str"),
        ((part(0, 1, guild_id="2"),), "a chunk for guild '2'"),
        ((part(0, 10**9),), "chunk_count 1000000000"),
    ],
    ids=["count changes", "index out of range", "members not objects", "guild", "huge count"],
)
def test_an_answer_that_breaks_the_rules_raises_naming_what(chunks: Any, what: str) -> None:
    with HostileGateway(answering(*chunks)) as gateway:
        cluster = hostile_cluster(gateway)
        try:
            with pytest.raises(MembersRequestError, match="broke the rules") as caught:
                ask(cluster)
            assert what in str(caught.value)
        finally:
            cluster.down()


def test_a_chunk_stream_that_never_ends_times_out_and_down_ends_a_waiting_request() -> None:
    with HostileGateway(answering(part(0, 3))) as gateway:
        cluster = hostile_cluster(gateway)
        try:
            with pytest.raises(MembersTimeout, match=r"1 of 3 chunks arrived \(indexes 0; 1 "):
                ask(cluster, timeout=0.5)
            waiting = gevent.spawn(cluster.request_members, 1, user_ids=[5], timeout=TIMEOUT)
            [peer] = gateway.peers
            assert gateway.wait_for(
                lambda: sum(1 for f in peer.frames if f.opcode == 1 and f.json()["op"] == 8) == 2
            )
            cluster.down()
            with pytest.raises(MembersRequestLost, match="the shard was shut down"):
                waiting.get(timeout=TIMEOUT)
        finally:
            cluster.down()


def spend_the_commands(cluster: Cluster) -> None:
    """Use up shard 0's commands: the next one waits up to a minute for a slot."""
    while cluster.info()[0].ratelimit[0] > 0:  # type: ignore[index]
        cluster.command(0, UpdatePresence())


def test_a_full_request_made_while_another_waits_for_a_slot_is_refused_unsent(
    make_sim: MakeSim, clusters: Callable[..., Cluster]
) -> None:
    sim = make_sim(heartbeat_interval=30)
    cluster = clusters(sim)
    guild = sim.guild_ids(0)[0]
    spend_the_commands(cluster)
    first = gevent.spawn(cluster.request_members, guild, timeout=120)
    gevent.idle()  # it waits for its slot now
    with pytest.raises(MembersRateLimited) as refused:
        cluster.request_members(guild, timeout=120)
    assert not refused.value.sent and refused.value.retry_after > 0
    assert not first.ready()
    first.kill()


@pytest.mark.parametrize("stop", ["down", "remove_shard"])
def test_down_or_removal_ends_a_request_waiting_for_a_slot_at_once(
    make_sim: MakeSim, clusters: Callable[..., Cluster], stop: str
) -> None:
    sim = make_sim(heartbeat_interval=30)
    cluster = clusters(sim)
    spend_the_commands(cluster)
    sent_before = len(member_requests(sim))
    waiting = gevent.spawn(cluster.request_members, sim.guild_ids(0)[0], user_ids=[5], timeout=120)
    gevent.idle()  # it waits for its slot now
    if stop == "down":
        cluster.down()
    else:
        cluster.remove_shard(0)
    # It hears of it now, not when the slot would have come (a minute on).
    with pytest.raises(MembersRequestLost, match="the shard was shut down"):
        waiting.get(timeout=TIMEOUT)
    assert len(member_requests(sim)) == sent_before
