"""The gateway rules of `ShardProtocol`, driven with plain dicts: no sockets, no clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
import ujson

from gcluster._token import Token
from gcluster.delivery import RawDispatch
from gcluster.errors import AuthenticationFailed, DisallowedIntents, GatewayClosedError
from gcluster.events import Event, EventType, EventTypeFlags
from gcluster.protocol import (
    CloseVerdict,
    Deliver,
    DeliverRaw,
    Fail,
    Heartbeat,
    Identify,
    Latency,
    ReconnectAction,
    ResumeSession,
    Send,
    ShardProtocol,
    Skip,
    Stage,
    classify_close,
)

TOKEN = Token("Bot secret-token-value")


class Driven(ShardProtocol):
    """The protocol fed the way the shard feeds it, its answer as one list of actions.

    Messages go in as JSON bytes; a dispatch it hands back undecoded is
    decoded here into the Deliver that `events()` would make of it.
    """

    def feed(self, message: Any, now: float) -> list[Any]:
        payload = message if isinstance(message, bytes) else encode(message)
        result = self.receive(payload, now)
        if result is None:
            return []
        if isinstance(result, RawDispatch):
            result = [DeliverRaw(result)]
        return [Deliver(raw_event(a.dispatch)) if isinstance(a, DeliverRaw) else a for a in result]


def raw_event(raw: RawDispatch) -> Event:
    data = ujson.loads(raw.payload)["d"]
    return Event(raw.kind, raw.name, raw.shard_id, raw.sequence, data)


def encode(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def make(**kwargs: Any) -> Driven:
    kwargs.setdefault("rng", lambda: 0.5)
    return Driven(3, 8, TOKEN, 513, **kwargs)


def hello(interval_ms: float = 40000) -> dict[str, Any]:
    return {"op": 10, "d": {"heartbeat_interval": interval_ms}, "s": None, "t": None}


def dispatch(name: str, seq: Any, data: Any = None) -> dict[str, Any]:
    # Discord's layout (t, s, op, d): the one the protocol peeks at.
    return {"t": name, "s": seq, "op": 0, "d": data if data is not None else {}}


def ready(seq: int = 1, session_id: str = "abc") -> dict[str, Any]:
    return dispatch(
        "READY", seq, {"session_id": session_id, "resume_gateway_url": "wss://resume.example"}
    )


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [ujson.loads(a.payload) for a in actions if isinstance(a, Send)]


def kinds(actions: list[Any]) -> list[EventType]:
    return [a.event.kind for a in actions if isinstance(a, Deliver)]


def of(actions: list[Any], cls: type) -> list[Any]:
    return [a for a in actions if isinstance(a, cls)]


def connected(proto: Driven) -> Driven:
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)
    proto.identify()
    proto.feed(ready(), 0.1)
    return proto


# --- identify or resume -----------------------------------------------------


def test_hello_without_session_asks_for_an_identify_slot() -> None:
    proto = make()
    proto.connecting("wss://gateway")
    actions = proto.feed(hello(40000), 0.0)
    assert of(actions, Identify)
    assert of(actions, Heartbeat) == [Heartbeat(interval=40.0, first_delay=20.0)]
    assert sent(actions) == []  # nothing until the queue grants the slot
    assert proto.stage is Stage.IDENTIFYING
    assert EventType.GATEWAY_HELLO in kinds(actions)


def test_identify_payload_carries_shard_intents_and_bare_token() -> None:
    proto = make(
        large_threshold=120,
        presence={"status": "idle", "activities": [], "afk": False, "since": None},
    )
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)
    (payload,) = sent(proto.identify())
    assert payload["op"] == 2
    d = payload["d"]
    assert d["token"] == "secret-token-value"
    assert d["shard"] == [3, 8]
    assert d["intents"] == 513
    assert d["large_threshold"] == 120
    assert d["presence"]["status"] == "idle"
    assert set(d["properties"]) == {"os", "browser", "device"}
    assert proto.identified


def test_hello_with_session_resumes_at_once() -> None:
    proto = make(session=ResumeSession("sess", 41, "wss://resume.example"))
    assert (
        proto.url("wss://gateway")
        == "wss://resume.example/?v=10&encoding=json&compress=zlib-stream"
    )
    proto.connecting(proto.url("wss://gateway"))
    actions = proto.feed(hello(), 0.0)
    assert not of(actions, Identify)
    (payload,) = sent(actions)
    assert payload == {
        "op": 6,
        "d": {"token": "secret-token-value", "session_id": "sess", "seq": 41},
    }
    assert proto.stage is Stage.RESUMING
    actions = proto.feed(dispatch("MESSAGE_CREATE", 42), 0.0)
    actions += proto.feed(dispatch("RESUMED", 43), 0.0)
    assert kinds(actions) == [
        EventType.MESSAGE_CREATE,
        EventType.RESUMED,
        EventType.SHARD_CONNECTED,
    ]
    assert proto.stage is Stage.CONNECTED
    assert proto.sequence == 43


def test_url_without_session_or_compression() -> None:
    assert make(compression=False).url("ws://host:1/") == "ws://host:1/?v=10&encoding=json"


def test_ready_records_the_session() -> None:
    proto = connected(make())
    assert proto.stage is Stage.CONNECTED
    assert proto.session == ResumeSession("abc", 1, "wss://resume.example")


# --- dispatches ---------------------------------------------------------------


def test_dispatch_becomes_an_event_with_its_sequence() -> None:
    proto = connected(make())
    (deliver,) = of(proto.feed(dispatch("MESSAGE_CREATE", 2, {"id": "1"}), 0.0), Deliver)
    event = deliver.event
    assert (event.kind, event.name, event.shard_id, event.sequence, event.data) == (
        EventType.MESSAGE_CREATE,
        "MESSAGE_CREATE",
        3,
        2,
        {"id": "1"},
    )


def test_unknown_dispatch_arrives_as_unknown_with_its_name() -> None:
    proto = connected(make())
    (deliver,) = of(proto.feed(dispatch("SOMETHING_NEW", 2), 0.0), Deliver)
    assert deliver.event.kind is EventType.UNKNOWN
    assert deliver.event.name == "SOMETHING_NEW"


def test_filtered_dispatch_still_advances_the_sequence() -> None:
    proto = connected(make(event_types=EventTypeFlags.MESSAGE_DELETE))
    assert of(proto.feed(dispatch("MESSAGE_CREATE", 2), 0.0), Deliver) == []
    assert proto.receive(encode(dispatch("MESSAGE_CREATE", 3)), 0.0) is None
    assert proto.sequence == 3
    raw = proto.receive(encode(dispatch("MESSAGE_DELETE", 4)), 0.0)
    assert isinstance(raw, RawDispatch) and raw.kind is EventType.MESSAGE_DELETE
    assert proto.sequence == 4
    # READY, filtered out too, counts with the two MESSAGE_CREATEs.
    assert (proto.stats.filtered, proto.stats.events["MESSAGE_DELETE"]) == (3, 1)


def test_filtered_ready_still_sets_up_the_session() -> None:
    proto = connected(make(event_types=EventTypeFlags.MESSAGE_CREATE))
    assert proto.session_id == "abc"


def test_unknown_opcode_is_not_an_error() -> None:
    proto = connected(make())
    actions = proto.feed({"op": 99, "d": None}, 0.0)
    assert kinds(actions) == [EventType.UNKNOWN]
    assert proto.stage is Stage.CONNECTED


def test_message_without_an_integer_opcode_is_skipped() -> None:
    for message in ({"t": "X"}, {"x": 1}, {"op": "10"}, {"op": True}, [1, 2], "op", None):
        (action,) = make().feed(message, 0.0)
        assert isinstance(action, Skip) and action.what == "skipped"


def test_hello_and_ready_out_of_turn_make_the_shard_reconnect() -> None:
    proto = connected(make())
    for message in (hello(), dispatch("READY", 5), dispatch("RESUMED", 6)):
        (action,) = proto.feed(message, 0.0)
        assert isinstance(action, ReconnectAction) and action.cause == "protocol_error"
        proto = connected(make())


# --- heartbeats ---------------------------------------------------------------


def test_heartbeat_carries_the_last_sequence_and_ack_records_latency() -> None:
    proto = connected(make())
    proto.feed(dispatch("MESSAGE_CREATE", 7), 0.0)
    (beat,) = proto.heartbeat(10.0)
    assert isinstance(beat, Send) and beat.heartbeat
    assert ujson.loads(beat.payload) == {"op": 1, "d": 7}
    proto.feed({"op": 11}, 10.25)
    assert proto.latency == Latency(
        average=0.25, heartbeats=1, recent=(0.25,), sent=10.0, received=10.25
    )


def test_missing_ack_by_the_next_beat_is_a_zombie_that_resumes() -> None:
    proto = connected(make())
    proto.heartbeat(10.0)
    (action,) = proto.heartbeat(50.0)
    assert isinstance(action, ReconnectAction)
    assert action.resume and action.code not in (1000, 1001)
    assert "zombie" in action.reason


def test_acked_heartbeats_never_make_a_zombie() -> None:
    proto = connected(make())
    for n in range(10):
        proto.heartbeat(n * 40.0)
        proto.feed({"op": 11}, n * 40.0 + 0.05)
    assert sent(proto.heartbeat(400.0))[0]["op"] == 1
    assert proto.latency.heartbeats == 10
    assert len(proto.latency.recent) == 5


def test_server_heartbeat_request_beats_at_once_without_false_zombie() -> None:
    proto = connected(make())
    actions = proto.feed({"op": 1, "d": None}, 5.0)
    assert sent(actions) == [{"op": 1, "d": 1}]
    # The regular timer fires right after, before the ACK: not a zombie.
    assert sent(proto.heartbeat(5.01))[0]["op"] == 1


# --- op 7 / op 9 ----------------------------------------------------------------


def test_reconnect_opcode_resumes() -> None:
    proto = connected(make())
    actions = proto.feed({"op": 7, "d": None}, 0.0)
    (action,) = of(actions, ReconnectAction)
    assert action.resume and action.code == 4000
    assert EventType.GATEWAY_RECONNECT in kinds(actions)
    assert proto.session is not None


def test_invalid_session_resumable_resumes() -> None:
    proto = connected(make())
    (action,) = of(proto.feed({"op": 9, "d": True}, 0.0), ReconnectAction)
    assert action.resume and action.delay == 0


def test_invalid_session_not_resumable_waits_then_identifies() -> None:
    proto = connected(make(rng=lambda: 0.25))
    actions = proto.feed({"op": 9, "d": False}, 0.0)
    (action,) = of(actions, ReconnectAction)
    assert not action.resume
    assert action.delay == pytest.approx(2.0)  # 1 + 4 * 0.25: within Discord's 1-5 s
    assert proto.session is None
    assert EventType.GATEWAY_INVALIDATE_SESSION in kinds(actions)


# --- close codes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (None, CloseVerdict.RESUME),
        (1000, CloseVerdict.RESUME),
        (1001, CloseVerdict.RESUME),
        (4000, CloseVerdict.RESUME),
        (4001, CloseVerdict.RESUME),
        (4002, CloseVerdict.RESUME),
        (4003, CloseVerdict.RESUME),
        (4005, CloseVerdict.RESUME),
        (4008, CloseVerdict.RESUME),
        (4007, CloseVerdict.REIDENTIFY),
        (4009, CloseVerdict.REIDENTIFY),
        (4004, CloseVerdict.FATAL),
        (4010, CloseVerdict.FATAL),
        (4011, CloseVerdict.FATAL),
        (4012, CloseVerdict.FATAL),
        (4013, CloseVerdict.FATAL),
        (4014, CloseVerdict.FATAL),
    ],
)
def test_close_code_table(code: int | None, verdict: CloseVerdict) -> None:
    assert classify_close(code) is verdict


def test_resumable_close_keeps_session() -> None:
    proto = connected(make())
    actions = proto.closed(4000, "whatever")
    assert proto.session is not None and proto.stage is Stage.DISCONNECTED
    (deliver,) = of(actions, Deliver)
    assert deliver.event.data == {"code": 4000, "reason": "whatever", "fatal": False}


def test_session_codes_force_a_new_identify() -> None:
    proto = connected(make())
    proto.closed(4009, "timed out")
    assert proto.session is None


@pytest.mark.parametrize(
    ("code", "error"), [(4004, AuthenticationFailed), (4014, DisallowedIntents)]
)
def test_fatal_close_fails_the_shard(code: int, error: type[GatewayClosedError]) -> None:
    proto = connected(make())
    actions = proto.closed(code, "no")
    (fail,) = of(actions, Fail)
    assert isinstance(fail.error, error) and fail.error.code == code and fail.error.shard_id == 3
    assert proto.stage is Stage.FATALLY_CLOSED and proto.error is fail.error
    assert proto.session is None
    (deliver,) = of(actions, Deliver)
    assert deliver.event.kind is EventType.SHARD_DISCONNECTED and deliver.event.data["fatal"]


def test_client_close_1000_ends_session_other_codes_keep_it() -> None:
    proto = connected(make())
    proto.closed(4000, by_client=True)
    assert proto.session is not None
    proto.closed(1000, by_client=True)
    assert proto.session is None


def test_shutdown_codes() -> None:
    proto = connected(make())
    assert proto.shutting_down(resumable=True) == 4000
    assert proto.session is not None
    assert proto.shutting_down(resumable=False) == 1000
    assert proto.session is None


# --- resume sessions ------------------------------------------------------------


def test_resume_session_round_trips_through_json() -> None:
    session = ResumeSession("sess", 99, "wss://resume.example")
    assert ResumeSession.from_dict(ujson.loads(ujson.dumps(session.to_dict()))) == session


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"session_id": "", "sequence": 1},
        {"session_id": "a", "sequence": -1},
        {"session_id": "a", "sequence": "1"},
    ],
)
def test_resume_session_rejects_bad_dicts(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ResumeSession.from_dict(data)


def test_token_never_in_repr_of_protocol_state() -> None:
    proto = connected(make())
    assert "secret-token-value" not in repr(proto.__dict__)


# --- values the gateway controls ----------------------------------------------


@pytest.mark.parametrize(
    ("millis", "seconds"), [(1, 1.0), (999, 1.0), (41250, 41.25), (10**12, 300.0), (2.5e5, 250.0)]
)
def test_heartbeat_interval_is_held_within_bounds(millis: float, seconds: float) -> None:
    proto = make()
    proto.connecting("wss://gateway")
    (beat,) = of(proto.feed(hello(millis), 0.0), Heartbeat)
    assert beat.interval == seconds


def test_a_resume_url_weaker_than_the_connection_is_not_adopted() -> None:
    for url, adopted in [
        ("ws://resume.example", None),
        ("https://resume.example", None),
        ("wss://user:pw@resume.example", None),
        ("wss:///no-host", None),
        (42, None),
        ("wss://resume.example", "wss://resume.example"),
    ]:
        proto = make()
        proto.connecting("wss://gateway/?v=10")
        proto.feed(hello(), 0.0)
        proto.identify()
        d = {"session_id": "s", "resume_gateway_url": url}
        actions = proto.feed(dispatch("READY", 1, d), 0.0)
        assert proto.resume_url == adopted
        assert proto.session_id == "s" and proto.stage is Stage.CONNECTED
        assert bool(of(actions, Skip)) == (adopted is None)


def test_a_saved_plaintext_resume_url_is_not_used_for_a_tls_gateway() -> None:
    proto = make(session=ResumeSession("sess", 41, "ws://resume.example"))
    assert proto.url("wss://gateway").startswith("wss://gateway/")
    assert proto.url("ws://local:1").startswith("ws://resume.example/")


def test_abandoning_the_resume_url_keeps_the_session() -> None:
    proto = make(session=ResumeSession("sess", 41, "wss://resume.example"))
    assert proto.abandon_resume_url() and not proto.abandon_resume_url()
    assert proto.session == ResumeSession("sess", 41, None)
    assert proto.url("wss://gateway").startswith("wss://gateway/")


@pytest.mark.parametrize("d", [True, False, None, "yes", 1])
def test_only_a_json_true_keeps_the_session_on_op_9(d: Any) -> None:
    proto = connected(make())
    (reconnect,) = of(proto.feed({"op": 9, "d": d}, 0.0), ReconnectAction)
    assert reconnect.resume is (d is True)


@pytest.mark.parametrize("seq", ["4", -1, 1.5, True, 2**70, [4]])
def test_a_dispatch_with_a_bad_sequence_is_skipped_and_the_resume_point_kept(seq: Any) -> None:
    proto = connected(make())
    proto.feed(dispatch("MESSAGE_CREATE", 7), 0.0)
    (skip,) = proto.feed(dispatch("MESSAGE_CREATE", seq), 0.0)
    assert isinstance(skip, Skip) and skip.what == "skipped"
    assert proto.sequence == 7


def test_a_replayed_sequence_is_not_delivered_again() -> None:
    proto = connected(make())
    assert kinds(proto.feed(dispatch("MESSAGE_CREATE", 5), 0.0)) == [EventType.MESSAGE_CREATE]
    for seq in (5, 4, 1):
        # Peeked (Discord's layout) or decoded (any other), never delivered again.
        assert proto.receive(encode(dispatch("MESSAGE_CREATE", seq)), 0.0) is None
        other_layout = {"op": 0, "s": seq, "t": "MESSAGE_CREATE", "d": {}}
        (skip,) = proto.feed(other_layout, 0.0)
        assert isinstance(skip, Skip) and skip.what == "duplicate"
    assert proto.sequence == 5
    assert proto.stats.duplicates == 6


# --- stages: one table, checked moves -------------------------------------------


def test_every_move_of_the_table_and_only_those_are_allowed() -> None:
    from gcluster.stages import TRANSITIONS, LocalProtocolError, StageMachine, Trigger

    for stage in Stage:
        for trigger in Trigger:
            machine = StageMachine()
            machine.stage = stage
            target = TRANSITIONS[stage].get(trigger)
            if target is None:
                with pytest.raises(LocalProtocolError):
                    machine.move(trigger)
                assert machine.stage is stage
            else:
                assert machine.move(trigger) is target


def test_identify_is_refused_when_it_is_not_due() -> None:
    from gcluster.stages import LocalProtocolError

    proto = make()
    with pytest.raises(LocalProtocolError):
        proto.identify()  # before any connection
    proto.connecting("wss://gateway")
    with pytest.raises(LocalProtocolError):
        proto.identify()  # before HELLO
    proto.feed(hello(), 0.0)
    proto.identify()
    with pytest.raises(LocalProtocolError):
        proto.identify()  # twice on one connection
    with pytest.raises(LocalProtocolError):
        proto.connecting("wss://gateway")  # a second connection while this one lives


def test_ready_before_identify_is_sent_is_a_violation() -> None:
    proto = make()
    proto.connecting("wss://gateway")
    proto.feed(hello(), 0.0)  # IDENTIFY still waiting for the queue
    (action,) = proto.feed(ready(), 0.0)
    assert isinstance(action, ReconnectAction) and action.cause == "protocol_error"
    assert proto.stage is Stage.IDENTIFYING


def test_a_reconnect_decision_moves_the_stage_only_once_the_connection_closed() -> None:
    proto = connected(make())
    (reconnect,) = of(proto.feed({"op": 7, "d": None}, 0.0), ReconnectAction)
    assert proto.stage is Stage.CONNECTED  # the reader closes the socket next
    proto.closed(reconnect.code, by_client=True)
    assert proto.stage is Stage.DISCONNECTED and proto.session is not None
