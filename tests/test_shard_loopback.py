"""One shard against the simulator: what arrives, in what order, and what the gateway saw."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import ujson
from conftest import TIMEOUT, collect, has_numbers, numbers

from gcluster import Event, EventType, EventTypeFlags, Shard, Stage
from gcluster.testing import STREAM_INTENTS, GatewaySimulator

MakeSim = Callable[..., GatewaySimulator]


def make_shard(sim: GatewaySimulator, **options: object) -> Shard:
    shard = Shard(0, 1, sim.token, STREAM_INTENTS, gateway_url=sim.url, **options)  # type: ignore[arg-type]
    shard.start()
    return shard


def send_marker(sim: GatewaySimulator) -> None:
    """A MESSAGE_CREATE ``{"marker": "last"}`` in one of shard 0's guilds (a guild one:
    the shard has no DIRECT_MESSAGES intent)."""
    guild_id = str(sim.guild_ids(0)[0])
    sim.dispatch(0, "MESSAGE_CREATE", {"marker": "last", "guild_id": guild_id})


def _through_marker(got: list[tuple[int, Event]]) -> bool:
    """Until the MESSAGE_CREATE whose data is ``{"marker": "last"}``."""
    data = got[-1][1].data
    return isinstance(data, dict) and data.get("marker") == "last"


@pytest.mark.parametrize("compression", [True, False], ids=["zlib-stream", "uncompressed"])
def test_ready_then_exactly_the_dispatches_sent_in_order(
    make_sim: MakeSim, compression: bool
) -> None:
    sim = make_sim()
    shard = make_shard(sim, compression=compression)
    try:
        assert shard.wait_until_ready(TIMEOUT)
        sim.send_events(0, 500)
        received = collect(shard.events(), has_numbers([0], 500))
        dispatches = [event for _, event in received if event.sequence is not None]
        assert dispatches[0].kind is EventType.READY
        assert numbers(received, 0) == list(range(1, 501))
        # Sequences are the ones the simulator wrote, one after another.
        assert [e.sequence for e in dispatches] == list(range(1, 502))
        sent = [d.s for d in sim.records.dispatches if d.shard_id == 0]
        assert sent == list(range(1, 502))
        (conn,) = sim.records.connections
        assert conn.compression == ("zlib-stream" if compression else None)
        assert shard.info().sequence == 501
    finally:
        shard.down()


def test_heartbeats_are_acked_and_latency_recorded(make_sim: MakeSim) -> None:
    sim = make_sim(heartbeat_interval=0.2)
    shard = make_shard(sim)
    try:
        assert sim.wait_until(lambda: shard.info().latency.heartbeats >= 3, timeout=TIMEOUT)
        latency = shard.info().latency
        assert latency.average is not None and 0 < latency.average < 1.0
        assert len(latency.recent) >= 3
        assert latency.sent is not None and latency.received is not None
        assert len([h for h in sim.records.heartbeats if h.shard_id == 0]) >= 3
        assert shard.stage is Stage.CONNECTED
    finally:
        shard.down()


def test_filtered_out_types_never_reach_the_iterator(make_sim: MakeSim) -> None:
    sim = make_sim()
    shard = make_shard(
        sim, event_types=EventTypeFlags.MESSAGE_CREATE | EventTypeFlags.MESSAGE_DELETE
    )
    try:
        assert shard.wait_until_ready(TIMEOUT)
        sim.send_events(0, 100)  # MESSAGE_CREATE/UPDATE/DELETE, TYPING_START, PRESENCE_UPDATE
        send_marker(sim)
        received = collect(shard.events(), _through_marker)
        kinds = {event.kind for _, event in received}
        assert kinds == {EventType.MESSAGE_CREATE, EventType.MESSAGE_DELETE}
        expected = [
            d.number
            for d in sim.records.dispatches
            if d.t in ("MESSAGE_CREATE", "MESSAGE_DELETE") and d.number is not None
        ]
        assert numbers(received, 0) == expected and len(expected) == 40
        # Dropped events still count toward the sequence a RESUME would send.
        assert shard.info().sequence == sim.records.dispatches[-1].s
    finally:
        shard.down()


def test_shard_payload_carries_every_message_even_of_filtered_types(make_sim: MakeSim) -> None:
    sim = make_sim()
    shard = make_shard(
        sim, event_types=EventTypeFlags.MESSAGE_CREATE | EventTypeFlags.SHARD_PAYLOAD
    )
    try:
        assert shard.wait_until_ready(TIMEOUT)
        sim.send_events(0, 50)  # MESSAGE_CREATE/UPDATE/DELETE, TYPING_START, PRESENCE_UPDATE
        send_marker(sim)
        received = collect(shard.events(), _through_marker)
        events = [event for _, event in received]
        payloads = [
            ujson.loads(event.data) for event in events if event.kind is EventType.SHARD_PAYLOAD
        ]
        assert payloads[0]["op"] == 10  # HELLO: not a dispatch, still a payload
        sent = [(d.t, d.s) for d in sim.records.dispatches]
        assert [(p["t"], p["s"]) for p in payloads if p["op"] == 0] == sent
        # Each delivered dispatch comes right after its own raw payload.
        for index, event in enumerate(events):
            if event.kind is EventType.MESSAGE_CREATE:
                before = ujson.loads(events[index - 1].data)
                assert (before["t"], before["s"]) == ("MESSAGE_CREATE", event.sequence)
        assert {event.kind for event in events} == {
            EventType.SHARD_PAYLOAD,
            EventType.MESSAGE_CREATE,
        }
    finally:
        shard.down()


def test_unknown_dispatch_arrives_as_unknown(make_sim: MakeSim) -> None:
    sim = make_sim()
    shard = make_shard(sim)
    try:
        assert shard.wait_until_ready(TIMEOUT)
        sim.dispatch(0, "BRAND_NEW_EVENT", {"x": 1})
        received = collect(shard.events(), lambda got: got[-1][1].name == "BRAND_NEW_EVENT")
        event = received[-1][1]
        assert event.kind is EventType.UNKNOWN and event.data == {"x": 1}
    finally:
        shard.down()


def test_down_closes_with_1000_and_ends_the_stream(make_sim: MakeSim) -> None:
    sim = make_sim()
    shard = make_shard(sim)
    assert shard.wait_until_ready(TIMEOUT)
    shard.down()
    received = list(shard.events())  # ends by itself after down()
    assert received[-1][1].kind is EventType.SHARD_DISCONNECTED
    assert sim.wait_until(lambda: len(sim.records.closes) == 1, timeout=TIMEOUT)
    (close,) = sim.records.closes
    assert (close.code, close.initiator) == (1000, "client")


CHILD = textwrap.dedent(
    """
    import sys
    from gevent import monkey
    from gcluster import Shard, EventType, Intents

    assert not monkey.is_module_patched("socket"), "the child must not be monkey-patched"
    shard = Shard(0, 1, "{token}", Intents.GUILD_MESSAGES, gateway_url="{url}")
    shard.start()
    count = 0
    # The main greenlet blocks here; heartbeats must keep flowing meanwhile.
    for _, event in shard.events():
        if event.kind is EventType.MESSAGE_CREATE:
            count += 1
            if count == 5:
                break
    print("patched", monkey.is_module_patched("socket"), "messages", count, flush=True)
    shard.down()
    """
)


def test_heartbeats_flow_in_an_unpatched_process_while_main_waits_on_events(
    make_sim: MakeSim,
) -> None:
    import gevent.subprocess

    sim = make_sim(heartbeat_interval=0.2)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
    )
    child = gevent.subprocess.Popen(
        [sys.executable, "-c", CHILD.format(token=sim.token, url=sim.url)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        # Nothing is dispatched yet: the child sits in its for loop while its
        # heartbeat greenlet keeps beating.
        assert sim.wait_until(lambda: len(sim.records.heartbeats) >= 5, timeout=TIMEOUT)
        assert all(h.shard_id == 0 for h in sim.records.heartbeats)
        sim.send_events(0, 5, kinds=["MESSAGE_CREATE"])
        out, err = child.communicate(timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err.decode()
    assert out.decode().split() == ["patched", "False", "messages", "5"]
