"""The rest of `ShardProtocol`'s rules, value by value: what each path returns and counts.

`test_protocol.py` says what the gateway rules are; these pin down the exact
values a driver, an operator or an application sees: every lifecycle event's
data, every reconnect's code and reason, the counters on each path, and the
limits on what the gateway may hand back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import ujson
from test_protocol import TOKEN, connected, dispatch, encode, hello, make, ready

from gcluster.delivery import RawDispatch
from gcluster.errors import AuthenticationFailed, ConfigError, GClusterError, InvalidState
from gcluster.events import Event, EventType, EventTypeFlags
from gcluster.protocol import (
    Deliver,
    DeliverRaw,
    Fail,
    Heartbeat,
    Identify,
    Latency,
    LocalProtocolError,
    Opcode,
    ReconnectAction,
    ResumeSession,
    Send,
    ShardProtocol,
    Skip,
    Stage,
    default_properties,
)
from gcluster.stages import StageMachine, Trigger
from gcluster.stats import ShardStats

SESSION = ResumeSession("sess", 41, "wss://resume.example")


def life(kind: EventType, data: dict[str, Any] | None = None) -> Deliver:
    """The lifecycle event shard 3 delivers."""
    return Deliver(Event(kind, kind.value, 3, None, data))


def beat(sequence: int | None) -> Send:
    return Send(encode({"op": 1, "d": sequence}), Opcode.HEARTBEAT, heartbeat=True)


def counters(proto: ShardProtocol) -> tuple[dict[str, int], int, int, int]:
    stats = proto.stats
    return dict(stats.events), stats.filtered, stats.duplicates, stats.skipped


def other_layout(name: Any, seq: Any, data: Any = None) -> bytes:
    """A dispatch not laid out as Discord sends it: decoded, not peeked."""
    return encode({"op": 0, "d": data if data is not None else {}, "s": seq, "t": name})


def identifying(**kwargs: Any) -> Any:
    proto = make(**kwargs)
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)
    proto.identify()
    return proto


# --- resume sessions ------------------------------------------------------------


def test_a_session_as_a_dict() -> None:
    assert SESSION.to_dict() == {
        "session_id": "sess",
        "sequence": 41,
        "resume_url": "wss://resume.example",
    }


def test_a_session_dict_without_a_resume_url_resumes_on_the_main_gateway() -> None:
    assert ResumeSession.from_dict({"session_id": "s", "sequence": 0}) == ResumeSession("s", 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "a resume session needs 'session_id'"),
        ({"sequence": 1}, "a resume session needs 'session_id'"),
        ({"session_id": "s"}, "a resume session needs 'sequence'"),
        ({"session_id": "", "sequence": 1}, "session_id must be a non-empty string"),
        ({"session_id": 5, "sequence": 1}, "session_id must be a non-empty string"),
        ({"session_id": "s", "sequence": -1}, "sequence must be a non-negative integer"),
        ({"session_id": "s", "sequence": "1"}, "sequence must be a non-negative integer"),
        ({"session_id": "s", "sequence": True}, "sequence must be a non-negative integer"),
        ({"session_id": "s", "sequence": 1.0}, "sequence must be a non-negative integer"),
        (
            {"session_id": "s", "sequence": 1, "resume_url": 5},
            "resume_url must be a string or None",
        ),
    ],
)
def test_a_bad_session_dict_says_what_is_wrong(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ResumeSession.from_dict(data)
    assert str(caught.value) == message


def test_a_missing_session_field_keeps_the_key_error_as_the_cause() -> None:
    with pytest.raises(ConfigError) as caught:
        ResumeSession.from_dict({"session_id": "s"})
    assert isinstance(caught.value.__cause__, KeyError)


# --- construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "os"), [("Linux", "linux"), ("Darwin", "darwin"), ("", "unknown")]
)
def test_default_properties_name_the_os_and_the_library(
    monkeypatch: pytest.MonkeyPatch, system: str, os: str
) -> None:
    monkeypatch.setattr("gcluster.protocol.platform.system", lambda: system)
    assert default_properties() == {"os": os, "browser": "gcluster", "device": "gcluster"}


def test_identify_with_every_default() -> None:
    proto = make()
    assert proto.properties == default_properties()
    assert (proto.large_threshold, proto.presence, proto.compression) == (50, None, "zlib-stream")
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)
    (action,) = proto.identify()
    assert action == Send(action.payload, Opcode.IDENTIFY)
    assert not action.heartbeat
    assert ujson.loads(action.payload) == {
        "op": 2,
        "d": {
            "token": "secret-token-value",
            "intents": 513,
            "properties": default_properties(),
            "shard": [3, 8],
            "large_threshold": 50,
            "compress": False,
        },
    }


def test_identify_takes_copies_of_the_properties_and_presence() -> None:
    properties = {"os": "plan9", "browser": "b", "device": "d"}
    presence = {"status": "dnd", "activities": [], "afk": False, "since": None}
    proto = make(properties=properties, presence=presence, large_threshold=250)
    properties["os"] = "changed"
    presence["status"] = "changed"
    assert proto.properties == {"os": "plan9", "browser": "b", "device": "d"}
    assert proto.presence == {"status": "dnd", "activities": [], "afk": False, "since": None}
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)
    d = ujson.loads(proto.identify()[0].payload)["d"]
    assert d["properties"] == {"os": "plan9", "browser": "b", "device": "d"}
    assert d["presence"] == {"status": "dnd", "activities": [], "afk": False, "since": None}
    assert d["large_threshold"] == 250


def test_identify_sends_text_as_utf8_not_escapes() -> None:
    proto = make(presence={"status": "online", "activities": [{"name": "café", "type": 0}]})
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)
    assert "café".encode() in proto.identify()[0].payload


def test_the_intents_are_a_plain_integer() -> None:
    from gcluster.intents import Intents

    proto = ShardProtocol(0, 1, TOKEN, Intents(513))
    assert type(proto.intents) is int and proto.intents == 513


def test_a_new_protocol_before_any_connection() -> None:
    stats = ShardStats()
    proto = make(stats=stats, event_types=EventTypeFlags.MESSAGE_CREATE)
    assert proto.stats is stats
    assert proto.event_types is EventTypeFlags.MESSAGE_CREATE
    assert (proto.shard_id, proto.total) == (3, 8)
    assert proto.stage is Stage.DISCONNECTED
    assert proto.session is None and proto.error is None
    assert (proto.session_id, proto.sequence, proto.resume_url) == (None, None, None)
    assert not proto.identified and not proto.awaiting_ack
    assert proto.latency == Latency()
    first, second = make(), make()
    assert isinstance(first.stats, ShardStats) and first.stats is not second.stats


def test_a_saved_session_is_taken_field_by_field() -> None:
    proto = make(session=SESSION)
    assert (proto.session_id, proto.sequence, proto.resume_url) == (
        "sess",
        41,
        "wss://resume.example",
    )
    assert proto.session == SESSION


def test_wants_follows_the_filter() -> None:
    proto = make(event_types=EventTypeFlags.MESSAGE_CREATE | EventTypeFlags.SHARD_CONNECTED)
    assert proto.wants(EventType.MESSAGE_CREATE)
    assert proto.wants(EventType.SHARD_CONNECTED)
    assert not proto.wants(EventType.MESSAGE_DELETE)
    assert not make().wants(EventType.SHARD_PAYLOAD)


# --- url --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "query"),
    [
        ("zlib-stream", "v=10&encoding=json&compress=zlib-stream"),
        ("zstd-stream", "v=10&encoding=json&compress=zstd-stream"),
        (None, "v=10&encoding=json"),
    ],
)
def test_the_url_query(compression: str | None, query: str) -> None:
    proto = make(compression=compression)
    assert proto.url("wss://gateway.discord.gg") == f"wss://gateway.discord.gg/?{query}"
    assert proto.url("wss://gateway.discord.gg/") == f"wss://gateway.discord.gg/?{query}"


def test_only_trailing_slashes_are_dropped_from_the_url() -> None:
    proto = make(compression=None)
    assert proto.url("wss://host/pathX//") == "wss://host/pathX/?v=10&encoding=json"


@pytest.mark.parametrize(
    ("resume_url", "gateway", "used"),
    [
        ("wss://resume.example", "wss://gateway", "wss://resume.example"),
        ("wss://resume.example", "ws://gateway", "wss://resume.example"),
        ("ws://resume.example", "ws://gateway", "ws://resume.example"),
        ("ws://resume.example", "wss://gateway", "wss://gateway"),
        ("wss://user@resume.example", "wss://gateway", "wss://gateway"),
        ("wss://user:pw@resume.example", "wss://gateway", "wss://gateway"),
        ("wss:///path", "wss://gateway", "wss://gateway"),
        ("https://resume.example", "wss://gateway", "wss://gateway"),
        ("http://resume.example", "ws://gateway", "ws://gateway"),
        ("wss://[::1", "wss://gateway", "wss://gateway"),
        ("", "wss://gateway", "wss://gateway"),
    ],
)
def test_a_saved_resume_url_is_used_only_when_as_strong(
    resume_url: str, gateway: str, used: str
) -> None:
    proto = make(session=ResumeSession("s", 1, resume_url), compression=None)
    assert proto.url(gateway) == f"{used}/?v=10&encoding=json"


def test_the_resume_url_is_not_used_without_a_session() -> None:
    proto = make(compression=None)
    proto.resume_url = "wss://resume.example"
    assert proto.url("wss://gateway") == "wss://gateway/?v=10&encoding=json"


# --- lifecycle events ---------------------------------------------------------------


def test_identify_path_events_in_order() -> None:
    proto = make()
    assert proto.connecting("wss://gateway") == [
        life(EventType.SHARD_CONNECTING, {"url": "wss://gateway"})
    ]
    assert proto.stage is Stage.CONNECTING
    assert proto.feed(hello(30000), 0.0) == [
        life(EventType.GATEWAY_HELLO, {"heartbeat_interval": 30.0}),
        Heartbeat(interval=30.0, first_delay=15.0),
        life(EventType.SHARD_IDENTIFYING),
        Identify(),
    ]
    assert not proto.identified
    proto.identify()
    actions = proto.feed(ready(), 0.1)
    assert actions == [
        Deliver(
            Event(
                EventType.READY,
                "READY",
                3,
                1,
                {"session_id": "abc", "resume_gateway_url": "wss://resume.example"},
            )
        ),
        life(EventType.SHARD_CONNECTED, {"resumed": False}),
    ]
    assert counters(proto) == ({"READY": 1}, 0, 0, 0)


def test_resume_path_events_in_order() -> None:
    proto = make(session=SESSION, rng=lambda: 0.25)
    proto.connecting("wss://resume.example")
    actions = proto.feed(hello(40000), 0.0)
    resume = encode(
        {"op": 6, "d": {"token": "secret-token-value", "session_id": "sess", "seq": 41}}
    )
    assert actions == [
        life(EventType.GATEWAY_HELLO, {"heartbeat_interval": 40.0}),
        Heartbeat(interval=40.0, first_delay=10.0),
        life(EventType.SHARD_RESUMING, {"session_id": "sess", "sequence": 41}),
        Send(resume, Opcode.RESUME),
    ]
    assert proto.identified and proto.stage is Stage.RESUMING
    # The heartbeat runs while resuming: the interval counts for the zombie check.
    assert proto.heartbeat(1.0) == [beat(41)]
    assert proto.heartbeat(21.0)[0].cause == "zombie"
    actions = proto.feed(other_layout("RESUMED", 42), 0.0)
    assert actions == [
        Deliver(Event(EventType.RESUMED, "RESUMED", 3, 42, {})),
        life(EventType.SHARD_CONNECTED, {"resumed": True}),
    ]
    assert proto.stage is Stage.CONNECTED
    assert counters(proto) == ({"RESUMED": 1}, 0, 0, 0)


def test_a_filtered_resumed_still_connects() -> None:
    proto = make(session=SESSION, event_types=EventTypeFlags.SHARD_CONNECTED)
    proto.connecting("wss://resume.example")
    proto.feed(hello(), 0.0)
    assert proto.feed(dispatch("RESUMED", 42), 0.0) == [
        life(EventType.SHARD_CONNECTED, {"resumed": True})
    ]
    assert proto.stage is Stage.CONNECTED
    assert counters(proto) == ({}, 1, 0, 0)


def test_lifecycle_events_are_filtered_like_dispatches() -> None:
    proto = make(event_types=EventTypeFlags.MESSAGE_CREATE)
    assert proto.connecting("wss://gateway") == []
    assert proto.feed(hello(), 0.0) == [Heartbeat(interval=40.0, first_delay=20.0), Identify()]


def test_reconnecting_is_an_event() -> None:
    proto = connected(make())
    assert proto.reconnecting() == [life(EventType.SHARD_RECONNECTING)]


def test_an_unknown_opcode_is_delivered_with_its_number() -> None:
    proto = connected(make())
    assert proto.feed({"op": 99, "d": None}, 0.0) == [life(EventType.UNKNOWN, {"op": 99})]


# --- heartbeats ------------------------------------------------------------------


def test_a_heartbeat_before_any_dispatch_carries_null() -> None:
    proto = make()
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)
    assert proto.heartbeat(1.0) == [beat(None)]
    assert proto.awaiting_ack
    assert proto.latency == Latency(sent=1.0)


def test_the_gateway_asking_for_a_beat() -> None:
    proto = connected(make())
    assert proto.feed({"op": 1, "d": None}, 5.0) == [beat(1), life(EventType.GATEWAY_HEARTBEAT)]
    assert proto.awaiting_ack
    assert proto.feed({"op": 11}, 5.5) == [life(EventType.GATEWAY_HEARTBEAT_ACK)]
    assert not proto.awaiting_ack


def test_latency_over_several_beats() -> None:
    proto = connected(make())
    for sent_at, rtt in [(10.0, 0.5), (50.0, 0.25), (90.0, 1.5)]:
        proto.heartbeat(sent_at)
        proto.feed({"op": 11}, sent_at + rtt)
    assert proto.latency == Latency(
        average=0.75, heartbeats=3, recent=(0.5, 0.25, 1.5), sent=90.0, received=91.5
    )
    stats = proto.stats
    assert (stats.latency_count, stats.latency_sum) == (3, 2.25)


def test_an_ack_nobody_waited_for_is_not_a_round_trip() -> None:
    proto = connected(make())
    proto.heartbeat(10.0)
    proto.feed({"op": 11}, 10.5)
    assert proto.feed({"op": 11}, 12.0) == [life(EventType.GATEWAY_HEARTBEAT_ACK)]
    assert proto.latency == Latency(
        average=0.5, heartbeats=1, recent=(0.5,), sent=10.0, received=12.0
    )
    assert proto.stats.latency_count == 1


def test_an_ack_before_any_beat_is_recorded_but_not_timed() -> None:
    proto = connected(make())
    proto.feed({"op": 11}, 3.0)
    assert proto.latency == Latency(received=3.0)
    assert proto.stats.latency_count == 0


def test_a_new_connection_starts_its_heartbeats_afresh() -> None:
    proto = connected(make())
    proto.heartbeat(10.0)
    proto.feed({"op": 11}, 10.5)
    proto.heartbeat(50.0)
    proto.closed(4000)
    proto.connecting("wss://gateway")
    assert proto.latency == Latency() and not proto.awaiting_ack and not proto.identified


@pytest.mark.parametrize(("now", "zombie"), [(29.9, False), (30.0, True), (30.1, True)])
def test_the_zombie_threshold_is_half_an_interval(now: float, zombie: bool) -> None:
    proto = connected(make())  # an interval of 40 s
    proto.heartbeat(10.0)
    actions = proto.heartbeat(now)
    if zombie:
        assert actions == [
            ReconnectAction(
                resume=True,
                code=4000,
                reason=f"zombie connection: no heartbeat ACK in {now - 10.0:.1f} s",
                cause="zombie",
                delay=0.0,
            )
        ]
        assert proto.session is not None
    else:
        assert actions == [beat(1)]


def test_a_zombie_message_has_one_decimal() -> None:
    proto = connected(make())
    proto.heartbeat(10.0)
    (action,) = proto.heartbeat(52.345)
    assert action.reason == "zombie connection: no heartbeat ACK in 42.3 s"


def test_an_acked_beat_long_ago_is_not_a_zombie() -> None:
    proto = connected(make())
    proto.heartbeat(10.0)
    proto.feed({"op": 11}, 10.1)
    assert proto.heartbeat(1000.0) == [beat(1)]


# --- hello ----------------------------------------------------------------------


@pytest.mark.parametrize(("millis", "seconds"), [(1000, 1.0), (300000, 300.0), (300001, 300.0)])
def test_the_interval_bounds_themselves(millis: int, seconds: float) -> None:
    proto = make()
    proto.connecting("wss://gateway")
    assert Heartbeat(interval=seconds, first_delay=seconds / 2) in proto.feed(hello(millis), 0.0)


@pytest.mark.parametrize(
    ("d", "shown"),
    [
        ({"heartbeat_interval": 0}, "0"),
        ({"heartbeat_interval": -5}, "-5"),
        ({"heartbeat_interval": True}, "True"),
        ({"heartbeat_interval": "40000"}, "'40000'"),
        ({"heartbeat_interval": float("inf")}, "inf"),
        ({"heartbeat_interval": float("nan")}, "nan"),
        ({}, "None"),
        (None, "None"),
        ([40000], "None"),
    ],
)
def test_a_bad_hello_is_a_protocol_error(d: Any, shown: str) -> None:
    proto = make(loads=json.loads)  # takes NaN and Infinity
    proto.connecting("wss://gateway")
    assert proto.receive(encode({"op": 10, "d": d}), 0.0) == [
        ReconnectAction(
            resume=False,
            code=4000,
            reason=f"HELLO with the heartbeat_interval {shown}",
            cause="protocol_error",
        )
    ]
    assert proto.stage is Stage.CONNECTING
    assert proto.latency == Latency()


def test_a_second_hello() -> None:
    proto = connected(make())
    assert proto.feed(hello(), 0.0) == [
        ReconnectAction(
            resume=True,
            code=4000,
            reason="a second HELLO on one connection",
            cause="protocol_error",
        )
    ]


# --- op 7 and op 9 ------------------------------------------------------------------


def test_op_7_closes_with_4000_and_resumes() -> None:
    proto = connected(make())
    assert proto.feed({"op": 7, "d": None}, 0.0) == [
        life(EventType.GATEWAY_RECONNECT),
        ReconnectAction(
            resume=True, code=4000, reason="op 7 RECONNECT", cause="reconnect_requested"
        ),
    ]


def test_op_9_resumable_closes_with_4000() -> None:
    proto = connected(make())
    assert proto.feed({"op": 9, "d": True}, 0.0) == [
        life(EventType.GATEWAY_INVALIDATE_SESSION, {"resumable": True}),
        ReconnectAction(resume=True, code=4000, reason="op 9 resumable", cause="invalid_session"),
    ]
    assert proto.session is not None


def test_op_9_not_resumable_closes_with_1000_after_a_wait() -> None:
    proto = connected(make(rng=lambda: 0.5))
    assert proto.feed({"op": 9, "d": False}, 0.0) == [
        life(EventType.GATEWAY_INVALIDATE_SESSION, {"resumable": False}),
        ReconnectAction(
            resume=False,
            code=1000,
            reason="op 9 INVALID_SESSION",
            cause="invalid_session",
            delay=3.0,
        ),
    ]
    assert proto.session is None and proto.resume_url is None


@pytest.mark.parametrize(("draw", "delay"), [(0.0, 1.0), (0.999, 4.996)])
def test_the_op_9_wait_spans_one_to_five_seconds(draw: float, delay: float) -> None:
    proto = connected(make(rng=lambda: draw))
    (_, action) = proto.feed({"op": 9, "d": False}, 0.0)
    assert action.delay == pytest.approx(delay)


def test_op_9_resumable_without_a_session_identifies_again() -> None:
    proto = identifying()
    (_, action) = proto.feed({"op": 9, "d": True}, 0.0)
    assert action == ReconnectAction(
        resume=False, code=1000, reason="op 9 INVALID_SESSION", cause="invalid_session", delay=3.0
    )


def test_a_violation_without_a_session_cannot_resume() -> None:
    proto = make()
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)
    (action,) = proto.feed(ready(), 0.0)
    assert action == ReconnectAction(
        resume=False, code=4000, reason="READY without an IDENTIFY", cause="protocol_error"
    )


# --- dispatches and the counters -------------------------------------------------------


def test_peeked_dispatches_count_delivered_filtered_and_duplicates() -> None:
    proto = connected(make(event_types=EventTypeFlags.MESSAGE_CREATE | EventTypeFlags.READY))
    assert counters(proto) == ({"READY": 1}, 0, 0, 0)
    payload = encode(dispatch("MESSAGE_CREATE", 2))
    assert proto.receive(payload, 0.0) == RawDispatch(
        3, EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 2, payload
    )
    assert counters(proto) == ({"READY": 1, "MESSAGE_CREATE": 1}, 0, 0, 0)
    assert proto.receive(encode(dispatch("MESSAGE_DELETE", 3)), 0.0) is None
    assert counters(proto) == ({"READY": 1, "MESSAGE_CREATE": 1}, 1, 0, 0)
    assert proto.receive(encode(dispatch("MESSAGE_CREATE", 3)), 0.0) is None
    assert counters(proto) == ({"READY": 1, "MESSAGE_CREATE": 1}, 1, 1, 0)
    assert proto.sequence == 3


def test_the_first_peeked_dispatch_of_a_fresh_protocol_is_delivered() -> None:
    proto = make()
    payload = encode(dispatch("MESSAGE_CREATE", 0))
    assert proto.receive(payload, 0.0) == RawDispatch(
        3, EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 0, payload
    )
    assert proto.sequence == 0
    assert proto.receive(encode(dispatch("MESSAGE_CREATE", 0)), 0.0) is None
    assert counters(proto) == ({"MESSAGE_CREATE": 1}, 0, 1, 0)


def test_decoded_dispatches_count_delivered_filtered_and_duplicates() -> None:
    proto = connected(make(event_types=EventTypeFlags.MESSAGE_CREATE | EventTypeFlags.READY))
    assert proto.receive(other_layout("MESSAGE_CREATE", 2, {"a": 1}), 0.0) == [
        Deliver(Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 3, 2, {"a": 1}))
    ]
    assert proto.receive(other_layout("MESSAGE_DELETE", 3), 0.0) == []
    assert proto.receive(other_layout("MESSAGE_CREATE", 3), 0.0) == [
        Skip("dispatch MESSAGE_CREATE s=3 again (a replay)", "duplicate")
    ]
    assert counters(proto) == ({"READY": 1, "MESSAGE_CREATE": 1}, 1, 1, 0)


def test_a_dispatch_without_a_sequence_is_delivered_and_keeps_the_resume_point() -> None:
    proto = connected(make())
    proto.feed(dispatch("MESSAGE_CREATE", 5), 0.0)
    assert proto.receive(other_layout("MESSAGE_CREATE", None), 0.0) == [
        Deliver(Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 3, None, {}))
    ]
    assert proto.sequence == 5


@pytest.mark.parametrize("seq", [0, 2**63 - 1])
def test_the_sequence_limits_are_accepted(seq: int) -> None:
    proto = make()
    (action,) = proto.receive(other_layout("MESSAGE_CREATE", seq), 0.0)
    assert action == Deliver(Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 3, seq, {}))
    assert proto.sequence == seq


@pytest.mark.parametrize(
    ("seq", "shown"), [(-1, "-1"), (2**63, str(2**63)), ("4", "'4'"), (True, "True")]
)
def test_a_bad_sequence_is_skipped_and_counted(seq: Any, shown: str) -> None:
    proto = connected(make())
    assert proto.receive(other_layout("MESSAGE_CREATE", seq), 0.0) == [
        Skip(f"dispatch MESSAGE_CREATE with the sequence {shown}")
    ]
    assert counters(proto) == ({"READY": 1}, 0, 0, 1)
    assert proto.sequence == 1


@pytest.mark.parametrize(("name", "shown"), [("", "''"), (None, "None"), (5, "5")])
def test_a_bad_dispatch_name_is_skipped_and_counted(name: Any, shown: str) -> None:
    proto = connected(make())
    assert proto.receive(other_layout(name, 2), 0.0) == [Skip(f"a dispatch with the name {shown}")]
    assert counters(proto) == ({"READY": 1}, 0, 0, 1)
    assert proto.sequence == 1


def test_a_message_that_is_not_json_is_skipped_and_counted() -> None:
    proto = connected(make())
    (skip,) = proto.receive(b"{not json", 0.0)
    assert skip.what == "skipped"
    assert skip.reason.startswith("a message that is not valid JSON (")
    assert counters(proto) == ({"READY": 1}, 0, 0, 1)


def test_a_message_that_is_not_a_payload_is_skipped_and_counted() -> None:
    proto = connected(make())
    assert proto.receive(b"[1]", 0.0) == [
        Skip("a message that is not a gateway payload (no integer op)")
    ]
    assert counters(proto) == ({"READY": 1}, 0, 0, 1)


@pytest.mark.parametrize("loads_error", [ValueError, TypeError, OverflowError, RecursionError])
def test_every_decoder_error_is_a_skip(loads_error: type[Exception]) -> None:
    def loads(payload: bytes) -> Any:
        raise loads_error("boom")

    proto = make(loads=loads)
    assert proto.receive(b'{"op":11}', 0.0) == [Skip("a message that is not valid JSON (boom)")]


def test_the_decoder_given_is_the_one_used() -> None:
    proto = make(loads=lambda payload: {"op": 99})
    assert proto.receive(b"anything", 0.0) == [life(EventType.UNKNOWN, {"op": 99})]


# --- ready --------------------------------------------------------------------------


def test_ready_without_a_sequence_leaves_no_resume_point() -> None:
    proto = identifying()
    proto.feed(dispatch("READY", None, {"session_id": "abc"}), 0.0)
    assert proto.session_id == "abc" and proto.sequence is None
    assert proto.session is None


def test_ready_starts_the_count_afresh_even_below_the_last_sequence() -> None:
    proto = identifying(session=None)
    proto.sequence = 90
    proto.feed(other_layout("READY", 2, {"session_id": "abc"}), 0.0)
    assert proto.sequence == 2


def test_ready_without_a_resume_url_is_not_a_note() -> None:
    proto = identifying()
    actions = proto.feed(dispatch("READY", 1, {"session_id": "abc"}), 0.0)
    assert not [a for a in actions if isinstance(a, Skip)]
    assert proto.session == ResumeSession("abc", 1, None)


def test_an_unusable_resume_url_is_a_note() -> None:
    proto = identifying()
    data = {"session_id": "abc", "resume_gateway_url": "ws://resume.example"}
    actions = proto.feed(dispatch("READY", 1, data), 0.0)
    assert actions[0] == Skip(
        "READY's resume_gateway_url 'ws://resume.example' is unusable", "ignored"
    )
    assert counters(proto) == ({"READY": 1}, 0, 0, 0)


def test_a_plain_resume_url_on_a_plain_connection_is_adopted() -> None:
    proto = make()
    proto.connecting("ws://gateway")
    proto.feed(hello(), 0.0)
    proto.identify()
    proto.feed(dispatch("READY", 1, {"session_id": "s", "resume_gateway_url": "ws://r"}), 0.0)
    assert proto.resume_url == "ws://r"


SECRET = "secret-token-value"


@pytest.mark.parametrize(
    ("session_id", "valid"),
    [
        ("a", True),
        ("a" * 256, True),
        ("a" * 257, False),
        ("", False),
        (None, False),
        (17, False),
        ("ab\ncd", False),
        ("ab\x00", False),
        (f"x{SECRET}y", False),
        (SECRET[:-1], True),
    ],
)
def test_the_session_id_limits(session_id: Any, valid: bool) -> None:
    proto = identifying()
    actions = proto.feed(dispatch("READY", 1, {"session_id": session_id}), 0.0)
    if valid:
        assert proto.session == ResumeSession(session_id, 1, None)
        assert actions[0].event.kind is EventType.READY
    else:
        assert proto.session is None and proto.sequence is None
        assert actions[0] == Skip(f"READY's session_id {session_id!r} is unusable", "ignored")
    assert proto.stage is Stage.CONNECTED
    assert counters(proto)[3] == 0


def test_ready_whose_data_is_not_an_object_leaves_no_session() -> None:
    proto = identifying()
    actions = proto.feed(other_layout("READY", 1, [1]), 0.0)
    assert actions[0] == Skip("READY's session_id None is unusable", "ignored")
    assert proto.stage is Stage.CONNECTED


# --- shard payload mode -------------------------------------------------------------


def payload_event(payload: bytes) -> Deliver:
    return Deliver(Event(EventType.SHARD_PAYLOAD, "SHARD_PAYLOAD", 3, None, payload))


def test_shard_payload_mode_delivers_every_message_first() -> None:
    proto = connected(make(event_types=EventTypeFlags.ALL | EventTypeFlags.SHARD_PAYLOAD))
    payload = encode(dispatch("MESSAGE_CREATE", 2))
    assert proto.receive(payload, 0.0) == [
        payload_event(payload),
        DeliverRaw(RawDispatch(3, EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 2, payload)),
    ]
    # A replay: only the payload.
    assert proto.receive(payload, 0.0) == [payload_event(payload)]
    ack = encode({"op": 11})
    assert proto.receive(ack, 1.0) == [
        payload_event(ack),
        life(EventType.GATEWAY_HEARTBEAT_ACK),
    ]
    assert counters(proto) == ({"READY": 1, "MESSAGE_CREATE": 1}, 0, 1, 0)


def test_shard_payload_alone_delivers_only_payloads() -> None:
    proto = make(event_types=EventTypeFlags.SHARD_PAYLOAD)
    payload = encode(dispatch("MESSAGE_CREATE", 2))
    assert proto.receive(payload, 0.0) == [payload_event(payload)]
    assert counters(proto) == ({}, 1, 0, 0)


def test_without_shard_payload_receive_returns_the_dispatch_itself() -> None:
    proto = connected(make())
    payload = encode(dispatch("MESSAGE_CREATE", 2))
    assert type(proto.receive(payload, 0.0)) is RawDispatch


# --- closing ---------------------------------------------------------------------------


def test_a_fatal_close_events_and_error() -> None:
    proto = connected(make())
    actions = proto.closed(4004, "bad token")
    error = proto.error
    assert isinstance(error, AuthenticationFailed)
    assert actions == [
        life(EventType.SHARD_DISCONNECTED, {"code": 4004, "reason": "bad token", "fatal": True}),
        Fail(error),
    ]
    assert error.reason == "bad token" and error.shard_id == 3
    assert proto.stage is Stage.FATALLY_CLOSED and proto.session is None


def test_a_dropped_connection_has_no_code() -> None:
    proto = connected(make())
    assert proto.closed(None) == [
        life(EventType.SHARD_DISCONNECTED, {"code": None, "reason": "", "fatal": False})
    ]
    assert proto.stage is Stage.DISCONNECTED and not proto.identified
    assert proto.session is not None and proto.error is None


def test_a_new_session_code_forgets_the_resume_url_too() -> None:
    proto = connected(make())
    assert proto.closed(4007, "bad seq") == [
        life(EventType.SHARD_DISCONNECTED, {"code": 4007, "reason": "bad seq", "fatal": False})
    ]
    assert (proto.session_id, proto.sequence, proto.resume_url) == (None, None, None)


@pytest.mark.parametrize(
    ("code", "kept"), [(1000, False), (1001, False), (4000, True), (4004, True)]
)
def test_a_client_close_is_never_fatal(code: int, kept: bool) -> None:
    proto = connected(make())
    assert proto.closed(code, "bye", by_client=True) == [
        life(EventType.SHARD_DISCONNECTED, {"code": code, "reason": "bye", "fatal": False})
    ]
    assert proto.stage is Stage.DISCONNECTED and proto.error is None
    assert (proto.session is not None) is kept


def test_the_socket_closing_after_giving_up() -> None:
    proto = connected(make())
    error = GClusterError("no session starts left")
    assert proto.give_up(error) == [
        life(
            EventType.SHARD_DISCONNECTED,
            {"code": None, "reason": "no session starts left", "fatal": True},
        ),
        Fail(error),
    ]
    assert proto.stage is Stage.FATALLY_CLOSED and proto.error is error
    assert proto.session is None and proto.resume_url is None
    assert proto.closed(4000, "late") == []
    assert proto.stage is Stage.FATALLY_CLOSED and proto.error is error


def test_shutting_down_leaves_the_shard_disconnected() -> None:
    proto = connected(make())
    assert proto.shutting_down(resumable=True) == 4000
    assert proto.stage is Stage.DISCONNECTED
    assert proto.session == ResumeSession("abc", 1, "wss://resume.example")
    proto = connected(make())
    assert proto.shutting_down(resumable=False) == 1000
    assert type(proto.shutting_down(resumable=False)) is int
    assert (proto.session_id, proto.sequence, proto.resume_url) == (None, None, None)


def test_revive_only_leaves_fatally_closed() -> None:
    proto = connected(make())
    proto.closed(4004, "no")
    proto.revive()
    assert proto.stage is Stage.DISCONNECTED and proto.error is None
    proto.revive()  # nothing to leave
    assert proto.stage is Stage.DISCONNECTED
    proto.connecting("wss://gateway")
    proto.revive()
    assert proto.stage is Stage.CONNECTING


def test_abandon_resume_url_clears_only_the_url() -> None:
    proto = connected(make())
    assert proto.abandon_resume_url() is True
    assert proto.resume_url is None
    assert proto.abandon_resume_url() is False
    assert proto.session == ResumeSession("abc", 1, None)


# --- local protocol errors -------------------------------------------------------------


def test_identify_out_of_turn_says_the_stage() -> None:
    proto = make()
    with pytest.raises(LocalProtocolError) as caught:
        proto.identify()
    assert str(caught.value) == "IDENTIFY is not due in stage disconnected"
    proto = identifying()
    with pytest.raises(LocalProtocolError) as caught:
        proto.identify()
    assert str(caught.value) == "IDENTIFY is not due in stage identifying"


def test_a_move_out_of_turn_says_which_and_where() -> None:
    machine = StageMachine()
    assert machine.stage is Stage.DISCONNECTED
    with pytest.raises(LocalProtocolError) as caught:
        machine.move(Trigger.READY)
    assert str(caught.value) == "ready is not allowed in stage disconnected"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert isinstance(caught.value, InvalidState)
    assert machine.move(Trigger.CONNECT) is Stage.CONNECTING
    assert machine.stage is Stage.CONNECTING
    assert machine.allows(Trigger.HELLO_IDENTIFY) and not machine.allows(Trigger.READY)


def test_connecting_twice_is_refused() -> None:
    proto = connected(make())
    with pytest.raises(LocalProtocolError) as caught:
        proto.connecting("wss://gateway")
    assert str(caught.value) == "connect is not allowed in stage connected"


# --- counters add up, flags are booleans ---------------------------------------------


def test_the_counters_add_up_on_every_path() -> None:
    proto = connected(make(event_types=EventTypeFlags.MESSAGE_CREATE | EventTypeFlags.READY))
    for seq in (2, 4):  # peeked
        proto.receive(encode(dispatch("MESSAGE_CREATE", seq)), 0.0)
        proto.receive(encode(dispatch("MESSAGE_DELETE", seq + 1)), 0.0)
    for seq in (6, 8):  # decoded
        proto.receive(other_layout("MESSAGE_CREATE", seq), 0.0)
        proto.receive(other_layout("MESSAGE_DELETE", seq + 1), 0.0)
    for _ in range(2):
        proto.receive(b"{not json", 0.0)
        proto.receive(encode(dispatch("MESSAGE_CREATE", 1)), 0.0)
    assert counters(proto) == ({"READY": 1, "MESSAGE_CREATE": 4}, 4, 2, 2)


def test_identified_and_awaiting_ack_are_booleans() -> None:
    proto = make()
    assert proto.identified is False and proto.awaiting_ack is False
    proto.connecting("wss://gateway")
    assert proto.identified is False
    proto.feed(hello(), 0.0)
    proto.identify()
    assert proto.identified is True
    proto.heartbeat(1.0)
    assert proto.awaiting_ack is True
    proto.feed({"op": 11}, 1.5)
    assert proto.awaiting_ack is False
    proto.closed(4000)
    assert proto.identified is False


def test_a_beat_the_gateway_asked_for_is_timed() -> None:
    proto = connected(make())
    proto.feed({"op": 1, "d": None}, 5.0)
    assert proto.latency == Latency(sent=5.0)
    proto.feed({"op": 11}, 5.25)
    assert proto.latency == Latency(
        average=0.25, heartbeats=1, recent=(0.25,), sent=5.0, received=5.25
    )


def test_shard_payload_mode_passes_the_time_on() -> None:
    proto = connected(make(event_types=EventTypeFlags.ALL | EventTypeFlags.SHARD_PAYLOAD))
    proto.receive(encode({"op": 1, "d": None}), 5.0)
    proto.receive(encode({"op": 11}), 5.5)
    assert proto.latency == Latency(
        average=0.5, heartbeats=1, recent=(0.5,), sent=5.0, received=5.5
    )


def test_resumed_without_a_resume() -> None:
    proto = connected(make())
    assert proto.feed(dispatch("RESUMED", 2), 0.0) == [
        ReconnectAction(
            resume=True, code=4000, reason="RESUMED without a RESUME", cause="protocol_error"
        )
    ]
    assert proto.stage is Stage.CONNECTED
