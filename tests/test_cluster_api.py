"""The Cluster API without a gateway: what it says when used before `up()`, and
the JSON-ready forms of the values an application prints or serves."""

from __future__ import annotations

import json
from collections.abc import Iterable

import gevent
import pytest
from conftest import TIMEOUT

from gcluster import (
    Cluster,
    ClusterNotUp,
    DisallowedIntents,
    Dispatcher,
    DispatcherStats,
    GClusterError,
    Information,
    Intents,
    Latency,
    Message,
    ResumeSession,
    Shard,
    ShardNonexistent,
    Stage,
    UpdatePresence,
)
from gcluster.stats import ShardStats

# Never asked: these clusters are never brought up (nothing listens there anyway).
NOWHERE = "http://127.0.0.1:9/api/v10"


def new_cluster() -> Cluster:
    return Cluster("token", Intents.GUILDS, api_base=NOWHERE)


def first_event(events: Iterable[object]) -> object:
    """The first item, or a failed test (not a hung one) if it never comes."""
    with gevent.Timeout(TIMEOUT, AssertionError(f"events() waited {TIMEOUT} s without raising")):
        return next(iter(events))


# --- used before up() ----------------------------------------------------------------


def test_events_before_up_raises_at_once_instead_of_waiting_forever() -> None:
    cluster = new_cluster()
    events = cluster.events()  # made before up(), as twilight's stream is: that is allowed
    with pytest.raises(ClusterNotUp, match=r"call cluster\.up\(\) first") as caught:
        first_event(events)
    # Catchable as the library's error and as a RuntimeError.
    assert isinstance(caught.value, GClusterError) and isinstance(caught.value, RuntimeError)


def test_a_dispatcher_on_a_cluster_that_is_not_up_raises_from_run() -> None:
    dispatcher = Dispatcher(new_cluster())
    dispatcher.on_any(lambda shard_id, event: None)
    with gevent.Timeout(TIMEOUT, AssertionError("run() waited instead of raising")):
        with pytest.raises(ClusterNotUp, match=r"call cluster\.up\(\) first"):
            dispatcher.run()
    assert dispatcher.stats().events_received == 0


def test_wait_until_ready_before_up_is_false() -> None:
    assert new_cluster().wait_until_ready(0.05) is False


def test_commands_before_up_say_the_cluster_is_not_up() -> None:
    cluster = new_cluster()
    for call in (
        lambda: cluster.command(0, UpdatePresence()),
        lambda: cluster.send(0, Message.text("{}")),
        lambda: cluster.restart(0),
        lambda: cluster.shard_for(81384788765712384),
    ):
        with pytest.raises(ClusterNotUp, match=r"call cluster\.up\(\) first") as caught:
            call()
        assert not isinstance(caught.value, ShardNonexistent)
        assert "not part of this cluster" not in str(caught.value)


def test_before_up_the_cluster_has_no_shards() -> None:
    cluster = new_cluster()
    assert cluster.shard(0) is None
    assert cluster.shards() == [] and cluster.info() == {} and cluster.total is None


def test_a_cluster_shut_down_without_up_ends_events_and_refuses_commands() -> None:
    cluster = new_cluster()
    cluster.down()
    with gevent.Timeout(TIMEOUT, AssertionError("events() did not end after down()")):
        assert list(cluster.events()) == []
    with pytest.raises(ClusterNotUp, match="shut down without being brought up"):
        cluster.command(0, UpdatePresence())


def test_a_shard_never_started_raises_from_events() -> None:
    shard = Shard(0, 1, "token", Intents.GUILDS, gateway_url="ws://127.0.0.1:9")
    with pytest.raises(ClusterNotUp, match=r"call shard\.start\(\) first"):
        first_event(shard.events())
    shard.down()
    with gevent.Timeout(TIMEOUT, AssertionError("events() did not end after down()")):
        assert list(shard.events()) == []


# --- to_dict() ---------------------------------------------------------------------


def round_trip(data: object) -> object:
    return json.loads(json.dumps(data))


def test_information_to_dict_is_json_ready() -> None:
    info = Information(
        id=3,
        stage=Stage.FATALLY_CLOSED,
        latency=Latency(average=0.02, heartbeats=2, recent=(0.01, 0.03), sent=5.0, received=5.03),
        session_id=None,
        sequence=None,
        resume_url=None,
        ratelimit=(118, 42.5),
        error=DisallowedIntents(3, reason="Disallowed intent(s)."),
    )
    expected = {
        "id": 3,
        "stage": "fatally_closed",
        "latency": {
            "average": 0.02,
            "heartbeats": 2,
            "recent": [0.01, 0.03],
            "sent": 5.0,
            "received": 5.03,
        },
        "session_id": None,
        "sequence": None,
        "resume_url": None,
        "ratelimit": [118, 42.5],
        "error": "shard 3 closed by the gateway with 4014: Disallowed intent(s).",
    }
    assert info.to_dict() == expected
    assert round_trip(info.to_dict()) == expected


def test_resume_session_to_dict_round_trips_through_json() -> None:
    session = ResumeSession("abc", 42, "wss://resume.example")
    data = round_trip(session.to_dict())
    assert data == {"session_id": "abc", "sequence": 42, "resume_url": "wss://resume.example"}
    assert ResumeSession.from_dict(data) == session  # type: ignore[arg-type]


def test_shard_stats_to_dict_is_json_ready() -> None:
    stats = ShardStats()
    stats.events["MESSAGE_CREATE"] += 3
    stats.filtered = 2
    stats.reconnects[("resume", "zombie")] += 1
    stats.reconnects[("identify", "invalid_session")] += 1
    stats.close_codes[4000] += 1
    stats.close_codes[None] += 1
    stats.identifies = 1
    stats.observe_latency(0.03)
    data = round_trip(stats.to_dict())
    assert data == {
        "events": {"MESSAGE_CREATE": 3},
        "delivered": 3,
        "filtered": 2,
        "duplicates": 0,
        "skipped": 0,
        "reconnects": {"identify": {"invalid_session": 1}, "resume": {"zombie": 1}},
        "close_codes": {"4000": 1, "none": 1},
        "identifies": 1,
        "resumes": 0,
        "ratelimit_waits": 0,
        "ratelimit_wait_seconds": 0.0,
        "identify_waits": 0,
        "identify_wait_seconds": 0.0,
        "latency_buckets": [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        "latency_sum": 0.03,
        "latency_count": 1,
    }


def test_dispatcher_stats_to_dict_is_json_ready() -> None:
    fields = {
        "events_received": 5,
        "events_handled": 4,
        "events_in_flight": 0,
        "events_pending": 0,
        "peak_events_in_flight": 2,
        "calls_returned": 6,
        "calls_failed": 1,
    }
    assert round_trip(DispatcherStats(**fields).to_dict()) == fields


@pytest.mark.extras
def test_redis_stats_to_dict_are_json_ready() -> None:
    from gcluster.redis.inbox import InboxStats
    from gcluster.redis.streams import SinkStats
    from gcluster.redis.worker import WorkerStats

    sink = SinkStats(
        read=10,
        published=9,
        batches=2,
        failures=1,
        buffered=1,
        paused=False,
        pauses=0,
        outages=1,
        outage_seconds=0.5,
        last_error="Connection refused",
    )
    assert round_trip(sink.to_dict())["last_error"] == "Connection refused"  # type: ignore[index]
    worker = WorkerStats(
        received=3, acked=3, claimed=0, lost=0, undecodable=0, commands=1, failures=0
    )
    assert round_trip(worker.to_dict()) == {
        "received": 3,
        "acked": 3,
        "claimed": 0,
        "lost": 0,
        "undecodable": 0,
        "commands": 1,
        "failures": 0,
        "removed_consumers": 0,
    }
    inbox = InboxStats(received=2, sent=1, expired=1, failed=0, last_error=None, left=1)
    assert round_trip(inbox.to_dict()) == {
        "received": 2,
        "sent": 1,
        "expired": 1,
        "failed": 0,
        "last_error": None,
        "left": 1,
    }
