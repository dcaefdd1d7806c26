"""The Cluster API without a gateway: what it says when used before `up()`."""

from __future__ import annotations

from collections.abc import Iterable

import gevent
import pytest
from conftest import TIMEOUT

from gcluster import (
    Cluster,
    ClusterNotUp,
    Dispatcher,
    GClusterError,
    Intents,
    Message,
    Shard,
    ShardNonexistent,
    UpdatePresence,
)

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
    assert dispatcher.stats().received == 0


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
