"""Which shard a session is of, and what a cluster saves of a shard that left it: no I/O.

A session carries the `[shard_id, total]` it was identified with, so a
cluster can refuse to resume it as another shard or under another total;
`ConsumedSessions` stops saving a removed shard's progress from the moment
it leaves until its `ShardRemoved` mark is read.
"""

from __future__ import annotations

import json

import pytest
from test_protocol import TOKEN, connected, make

from gcluster import Cluster, ConfigError, Intents, ShardScheme
from gcluster.protocol import ResumeSession
from gcluster.sessions import ConsumedSessions, SessionMark, ShardRemoved

OF_1 = ResumeSession("abc", 7, "wss://resume.example", shard_id=1, total=4)


# --- ResumeSession -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"shard_id": "1"}, "shard_id must be an int"),
        ({"shard_id": 4, "total": 4}, r"shard_id must be an int in 0\.\.total-1 or None, not 4"),
        ({"shard_id": -1}, "shard_id must be an int"),
        ({"total": "4"}, "total must be an int of at least 1"),
        ({"total": 0}, "total must be an int of at least 1"),
        ({"total": True}, "total must be an int of at least 1"),
    ],
)
def test_a_session_built_by_hand_with_a_bad_shard_or_total_is_refused_at_once(
    fields: dict[str, object], what: str
) -> None:
    # Not later, as "the session is of shard 1, not of shard 1".
    with pytest.raises(ConfigError, match=what):
        ResumeSession("abc", 7, **fields)  # type: ignore[arg-type]


def test_a_shards_session_names_the_shard_and_total_it_was_identified_with() -> None:
    proto = make()  # shard 3 of 8
    connected(proto)
    session = proto.session
    assert session is not None
    assert (session.shard_id, session.total) == (3, 8)


def test_shard_and_total_round_trip_through_json_and_are_left_out_when_unknown() -> None:
    data = json.loads(json.dumps(OF_1.to_dict()))
    assert data == {
        "session_id": "abc",
        "sequence": 7,
        "resume_url": "wss://resume.example",
        "shard_id": 1,
        "total": 4,
    }
    back = ResumeSession.from_dict(data)
    assert (back.shard_id, back.total) == (1, 4)
    # A session saved before sessions said their shard reads back as one of any shard.
    plain = ResumeSession.from_dict({"session_id": "abc", "sequence": 7})
    assert (plain.shard_id, plain.total) == (None, None)
    assert "shard_id" not in plain.to_dict() and "total" not in plain.to_dict()


def test_equality_is_the_session_not_where_it_came_from() -> None:
    assert OF_1 == ResumeSession("abc", 7, "wss://resume.example")
    assert hash(OF_1) == hash(ResumeSession("abc", 7, "wss://resume.example"))
    assert OF_1 != ResumeSession("abc", 8, "wss://resume.example", shard_id=1, total=4)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"total": 0}, "total must be a positive integer"),
        ({"total": True}, "total must be a positive integer"),
        ({"total": "4"}, "total must be a positive integer"),
        ({"shard_id": -1}, "shard_id must be an integer in 0..total-1"),
        ({"shard_id": False}, "shard_id must be an integer in 0..total-1"),
        ({"shard_id": 4, "total": 4}, "shard_id must be an integer in 0..total-1"),
        ({"shard_id": 1.0}, "shard_id must be an integer in 0..total-1"),
    ],
)
def test_from_dict_refuses_a_shard_or_total_that_cannot_be(
    extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ResumeSession.from_dict({"session_id": "abc", "sequence": 7, **extra})


def test_mismatch_says_why_a_session_is_not_of_this_shard() -> None:
    assert OF_1.mismatch(1, 4) is None
    assert OF_1.mismatch(1, None) is None  # the total is not known yet
    assert OF_1.mismatch(2, 4) == "the session is of shard 1, not of shard 2"
    why = OF_1.mismatch(1, 8)
    assert why is not None and "4 shards, not 8" in why and "must IDENTIFY" in why
    assert ResumeSession("abc", 7).mismatch(3, 8) is None  # built by hand: taken on trust


def test_resume_sessions_of_another_shard_or_total_are_refused_when_the_cluster_is_built() -> None:
    scheme = ShardScheme.range([1, 2], 4)
    Cluster(TOKEN, Intents.GUILDS, shard_scheme=scheme, resume_sessions={1: OF_1})
    with pytest.raises(ConfigError, match=r"resume_sessions\[2\].*of shard 1, not of shard 2"):
        Cluster(TOKEN, Intents.GUILDS, shard_scheme=scheme, resume_sessions={2: OF_1})
    with pytest.raises(ConfigError, match=r"resume_sessions\[1\].*4 shards, not 8"):
        Cluster(
            TOKEN,
            Intents.GUILDS,
            shard_scheme=ShardScheme.range([1], 8),
            resume_sessions={1: OF_1},
        )


# --- ConsumedSessions and a shard that leaves ------------------------------------------


class Dispatch:
    """Stands for an event: ConsumedSessions reads only its sequence."""

    def __init__(self, sequence: int) -> None:
        self.sequence = sequence


def read(consumed: ConsumedSessions, shard_id: int, item: object, *, manual: bool = False) -> bool:
    """What events() does with one item: True when it goes to the application."""
    given = consumed.arrived(shard_id, item, manual=manual)
    if given and not manual:
        consumed.handled(shard_id, getattr(item, "sequence", None))
    return given


def test_a_removed_shards_queued_events_are_given_but_move_no_saved_session() -> None:
    consumed = ConsumedSessions({1: OF_1})
    assert read(consumed, 1, Dispatch(8))
    assert consumed.take_dirty() == {1: ResumeSession("abc", 8, "wss://resume.example")}

    consumed.remove(1)
    # Its events still queued go to the application, and change nothing saved.
    assert read(consumed, 1, Dispatch(9))
    assert not read(consumed, 1, SessionMark(ResumeSession("new", 1)))
    assert consumed.take_dirty() == {} and consumed.all() == {}
    assert not read(consumed, 1, ShardRemoved())  # never given to the application

    # Back in the cluster with a session: its events count again.
    consumed.add(1, ResumeSession("abc", 20, shard_id=1, total=4))
    assert read(consumed, 1, Dispatch(21))
    saved = consumed.take_dirty()[1]
    assert (saved.sequence, saved.shard_id, saved.total) == (21, 1, 4)


def test_a_shard_back_before_its_mark_is_read_waits_for_the_mark() -> None:
    consumed = ConsumedSessions({1: OF_1})
    consumed.remove(1)
    consumed.add(1, ResumeSession("fresh", 1, shard_id=1, total=4))
    # Queued before the mark: the old session's events, sequences of another session.
    assert read(consumed, 1, Dispatch(50))
    assert consumed.take_dirty() == {}
    assert not read(consumed, 1, ShardRemoved())
    assert read(consumed, 1, Dispatch(2))
    assert consumed.take_dirty() == {1: ResumeSession("fresh", 2)}


def test_removed_twice_before_a_mark_is_read_waits_for_both_marks() -> None:
    consumed = ConsumedSessions({1: OF_1})
    consumed.remove(1)
    consumed.add(1, OF_1)
    consumed.remove(1)
    consumed.add(1, ResumeSession("third", 1))
    assert not read(consumed, 1, ShardRemoved())
    assert read(consumed, 1, Dispatch(99))  # still before the second mark
    assert not read(consumed, 1, ShardRemoved())
    assert read(consumed, 1, Dispatch(2))
    assert consumed.take_dirty() == {1: ResumeSession("third", 2)}


def test_manual_finish_counts_a_removed_shards_given_events_and_drops_its_marks() -> None:
    consumed = ConsumedSessions({0: ResumeSession("zero", 1), 1: OF_1})
    assert read(consumed, 1, Dispatch(8), manual=True)
    assert not read(consumed, 1, SessionMark(ResumeSession("next", 1)), manual=True)
    assert read(consumed, 0, Dispatch(2), manual=True)
    consumed.remove(1)
    # Finishing the first two given: shard 1's (moves nothing now), then shard 0's.
    consumed.finish(2)
    assert consumed.take_dirty() == {0: ResumeSession("zero", 2)}
    assert consumed.all() == {0: ResumeSession("zero", 2)}


def test_a_lone_shard_refuses_a_session_of_another_shard() -> None:
    from gcluster.shard import Shard

    Shard(1, 4, TOKEN, 513, gateway_url="wss://gateway", session=OF_1)
    with pytest.raises(ConfigError, match="shard 2 cannot resume this session: .*of shard 1"):
        Shard(2, 4, TOKEN, 513, gateway_url="wss://gateway", session=OF_1)
