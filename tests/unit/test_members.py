"""Member requests without sockets: nonces, the per-guild window, gathering an answer, routing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gcluster.errors import (
    MembersRateLimited,
    MembersRequestError,
    MembersRequestLost,
    MembersTimeout,
)
from gcluster.members import (
    MAX_FULL_CHUNKS,
    FullRequestWindow,
    MemberRequests,
    MembersAnswer,
    NonceSource,
    is_full_request,
)

GUILD = 81384788765712384


def chunk(index: int, count: int, members: Any = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "guild_id": str(GUILD),
        "chunk_index": index,
        "chunk_count": count,
        "members": members if members is not None else [{"user": {"id": f"10{index}"}}],
    }
    data.update(extra)
    return data


# --- nonces ----------------------------------------------------------------------------


def test_nonces_are_unique_and_fit_discords_32_bytes() -> None:
    first, second = NonceSource(), NonceSource()
    made = [first.next() for _ in range(10_000)] + [second.next() for _ in range(100)]
    assert len(set(made)) == len(made)
    assert max(len(nonce.encode()) for nonce in made) <= 32


def test_full_requests_are_an_empty_query_with_limit_zero() -> None:
    assert is_full_request("", 0)
    assert not is_full_request("", 5)
    assert not is_full_request("a", 0)
    assert not is_full_request(None, 0)


# --- the window --------------------------------------------------------------------------


def test_the_window_refuses_a_guild_for_30_s_after_a_full_request() -> None:
    window = FullRequestWindow()
    assert window.wait(GUILD, 100.0) == 0.0
    window.sent(GUILD, 100.0)
    assert window.wait(GUILD, 110.0) == pytest.approx(20.0)
    assert window.wait(GUILD + 1, 110.0) == 0.0  # per guild
    assert window.wait(GUILD, 130.0) == 0.0


def test_rate_limited_extends_the_window_and_expired_guilds_are_forgotten() -> None:
    window = FullRequestWindow()
    window.limited(GUILD, 0.0, 45.0)
    assert window.wait(GUILD, 40.0) == pytest.approx(5.0)
    for guild in range(1, 100):
        window.sent(guild, 50.0)
    window.sent(GUILD + 1, 200.0)  # every earlier window has closed by now
    assert len(window._open_until) == 1


def test_a_request_sent_after_discords_longer_wait_arrived_keeps_that_wait() -> None:
    window = FullRequestWindow()
    window.limited(GUILD, 100.0, 45.0)  # RATE_LIMITED read before the send was noted
    window.sent(GUILD, 100.0)
    assert window.wait(GUILD, 100.0) == pytest.approx(45.0)


def test_a_reserved_window_refuses_at_once_and_a_release_restores_it() -> None:
    window = FullRequestWindow()
    previous = window.reserve(GUILD, 100.0)
    assert previous is None and window.wait(GUILD, 100.0) == pytest.approx(30.0)
    window.release(GUILD, previous)  # not sent after all
    assert window.wait(GUILD, 100.0) == 0.0
    window.limited(GUILD, 100.0, 45.0)
    window.release(GUILD, window.reserve(GUILD, 120.0))
    assert window.wait(GUILD, 120.0) == pytest.approx(25.0)  # Discord's word stands


# --- gathering -------------------------------------------------------------------------------


def test_chunks_in_any_order_make_one_answer_in_chunk_order() -> None:
    answer = MembersAnswer(GUILD, "n", full=True)
    assert not answer.add(chunk(2, 3, presences=[{"user": {"id": "2"}}]))
    assert not answer.add(chunk(0, 3, not_found=["5", 6]))
    assert answer.progress() == "2 of 3 chunks arrived (indexes 0, 2; 2 members)"
    assert answer.add(chunk(1, 3))
    result = answer.result()
    assert [m["user"]["id"] for m in result.members] == ["100", "101", "102"]
    assert result.presences == [{"user": {"id": "2"}}]
    assert result.not_found == [5, 6]
    assert (result.guild_id, result.nonce, result.chunk_count) == (GUILD, "n", 3)
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["not_found"] == [5, 6] and len(as_json["members"]) == 3


def test_a_repeated_chunk_index_is_ignored_and_the_first_one_kept() -> None:
    answer = MembersAnswer(GUILD, "n", full=True)
    answer.add(chunk(0, 2, members=[{"first": True}]))
    assert not answer.add(chunk(0, 2, members=[{"first": False}]))
    assert answer.add(chunk(1, 2))
    assert answer.result().members[0] == {"first": True}
    assert answer.duplicates == 1


HOSTILE = {
    "d not an object": (["not", "a", "dict"], "not an object"),
    "another guild": (chunk(0, 1) | {"guild_id": "1"}, "a chunk for guild '1'"),
    "chunk_count missing": (chunk(0, 1) | {"chunk_count": None}, "chunk_count None"),
    "chunk_count zero": (chunk(0, 0), "chunk_count 0"),
    "chunk_count a bool": (chunk(0, True), "chunk_count True"),
    "chunk_count past the cap": (chunk(0, MAX_FULL_CHUNKS + 1), f"1..{MAX_FULL_CHUNKS}"),
    "index out of range": (chunk(3, 3), "chunk_index 3 of chunk_count 3"),
    "index negative": (chunk(-1, 3), "chunk_index -1"),
    "index a string": (chunk("0", 3), "chunk_index '0'"),
    "members missing": (chunk(0, 1) | {"members": None}, "members is NoneType"),
    "members not objects": (chunk(0, 1, members=[1, 2]), "members holds a int"),
    "too many members": (chunk(0, 1, members=[{}] * 1001), "1001 members in one chunk"),
    "presences not objects": (chunk(0, 1, presences=["x"]), "presences holds a str"),
    "not_found not ids": (chunk(0, 1, not_found=["abc"]), "not_found holds 'abc'"),
    "not_found id zero": (chunk(0, 1, not_found=["0"]), "not_found holds '0'"),
    "not_found past 64 bits": (
        chunk(0, 1, not_found=["99999999999999999999"]),
        "not_found holds '99999999999999999999'",
    ),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_chunk_that_breaks_the_rules_is_refused_naming_what(name: str) -> None:
    data, what = HOSTILE[name]
    answer = MembersAnswer(GUILD, "n", full=True)
    with pytest.raises(MembersRequestError, match="broke the rules") as caught:
        answer.add(data)
    assert what in str(caught.value)
    assert (caught.value.guild_id, caught.value.nonce) == (GUILD, "n")


def test_a_chunk_count_that_changes_is_refused() -> None:
    answer = MembersAnswer(GUILD, "n", full=True)
    answer.add(chunk(0, 3))
    with pytest.raises(MembersRequestError, match="chunk_count 4 after 3"):
        answer.add(chunk(1, 4))


def test_a_query_answer_is_held_to_100_members() -> None:
    answer = MembersAnswer(GUILD, "n", full=False)
    answer.add(chunk(0, 2, members=[{}] * 60))
    with pytest.raises(MembersRequestError, match="120 members for a request that gets at most"):
        answer.add(chunk(1, 2, members=[{}] * 60))
    with pytest.raises(MembersRequestError, match=r"chunk_count 101 \(must be 1..100\)"):
        MembersAnswer(GUILD, "m", full=False).add(chunk(0, 101))


# --- routing ----------------------------------------------------------------------------------


def waiting(requests: MemberRequests, nonce: str, *, shard_id: int = 0, full: bool = True) -> Any:
    pending = requests.begin(MembersAnswer(GUILD, nonce, full=full), shard_id)
    requests.sent(pending, "session-1")
    return pending


def test_only_chunks_with_a_waiting_nonce_on_its_shard_are_taken() -> None:
    requests = MemberRequests()
    pending = waiting(requests, "mine", shard_id=2)
    assert requests.waiting(2) and not requests.waiting(0)
    assert not requests.offer(2, "GUILD_MEMBERS_CHUNK", chunk(0, 1, nonce="yours"), 0.0)
    assert not requests.offer(0, "GUILD_MEMBERS_CHUNK", chunk(0, 1, nonce="mine"), 0.0)
    assert not requests.offer(2, "GUILD_MEMBERS_CHUNK", chunk(0, 1), 0.0)  # no nonce
    assert not requests.offer(2, "GUILD_MEMBERS_CHUNK", "garbage", 0.0)
    assert not pending.done.is_set()
    assert requests.offer(2, "GUILD_MEMBERS_CHUNK", chunk(0, 1, nonce="mine"), 0.0)
    assert pending.done.is_set() and pending.error is None
    requests.end(pending)
    assert not requests.waiting(2)
    # Once ended, its chunks are someone else's again.
    assert not requests.offer(2, "GUILD_MEMBERS_CHUNK", chunk(0, 1, nonce="mine"), 0.0)


def test_a_broken_chunk_fails_its_request_and_is_still_taken() -> None:
    requests = MemberRequests()
    pending = waiting(requests, "mine")
    assert requests.offer(0, "GUILD_MEMBERS_CHUNK", chunk(5, 2, nonce="mine"), 0.0)
    assert isinstance(pending.error, MembersRequestError) and pending.done.is_set()
    # Later chunks of that answer are taken too, and change nothing.
    assert requests.offer(0, "GUILD_MEMBERS_CHUNK", chunk(0, 2, nonce="mine"), 0.0)
    assert "chunk_index 5" in str(pending.error)


def rate_limited(nonce: Any, retry_after: Any = 12.5, guild: Any = GUILD) -> dict[str, Any]:
    meta: dict[str, Any] = {"guild_id": str(guild)}
    if nonce is not None:
        meta["nonce"] = nonce
    return {"opcode": 8, "retry_after": retry_after, "meta": meta}


def test_rate_limited_fails_its_request_and_closes_the_guilds_window() -> None:
    requests = MemberRequests()
    pending = waiting(requests, "mine")
    assert not requests.offer(0, "RATE_LIMITED", rate_limited("other"), 100.0)
    assert not requests.offer(0, "RATE_LIMITED", {**rate_limited("mine"), "opcode": 3}, 100.0)
    assert not requests.offer(0, "RATE_LIMITED", rate_limited("mine", guild=1), 100.0)
    assert requests.offer(0, "RATE_LIMITED", rate_limited("mine"), 100.0)
    error = pending.error
    assert isinstance(error, MembersRateLimited)
    assert (error.retry_after, error.sent, error.nonce) == (12.5, True, "mine")
    assert requests.window.wait(GUILD, 110.0) == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("given", "believed"),
    [(-1, 30.0), ("5", 30.0), (float("nan"), 30.0), (True, 30.0), (10**9, 3600.0), (0, 0.0)],
)
def test_an_unusable_retry_after_becomes_the_documented_window(given: Any, believed: float) -> None:
    requests = MemberRequests()
    pending = waiting(requests, "mine")
    assert requests.offer(0, "RATE_LIMITED", rate_limited("mine", given), 0.0)
    assert isinstance(pending.error, MembersRateLimited)
    assert pending.error.retry_after == believed


def test_rate_limited_without_a_nonce_goes_to_the_one_full_request_for_the_guild() -> None:
    requests = MemberRequests()
    query = waiting(requests, "query", full=False)
    full = waiting(requests, "full")
    assert requests.offer(0, "RATE_LIMITED", rate_limited(None), 0.0)
    assert isinstance(full.error, MembersRateLimited) and query.error is None
    # Two full requests for the guild: which one it answers is unknown, so neither.
    requests.end(full)
    waiting(requests, "a")
    waiting(requests, "b")
    assert not requests.offer(0, "RATE_LIMITED", rate_limited(None), 0.0)


def test_a_new_session_or_a_stopped_shard_loses_the_answers_owed() -> None:
    requests = MemberRequests()
    on_zero = waiting(requests, "zero")
    on_one = waiting(requests, "one", shard_id=1)
    requests.session_changed(0, "session-1")  # the same session: a resume
    assert not on_zero.done.is_set()
    requests.offer(0, "GUILD_MEMBERS_CHUNK", chunk(0, 2, nonce="zero"), 0.0)
    requests.session_changed(0, "session-2")
    assert isinstance(on_zero.error, MembersRequestLost)
    assert "new one began (1 of 2 chunks arrived" in str(on_zero.error)
    assert not on_one.done.is_set()
    requests.shard_stopped(1, "the shard was shut down")
    assert isinstance(on_one.error, MembersRequestLost)
    assert "the shard was shut down (no chunk arrived)" in str(on_one.error)


def test_a_request_not_sent_yet_is_owed_by_no_session() -> None:
    requests = MemberRequests()
    unsent = requests.begin(MembersAnswer(GUILD, "n", full=True), 0)
    requests.session_changed(0, "session-2")  # while it waited for a rate-limit slot
    assert not unsent.done.is_set()
    requests.sent(unsent, "session-2")
    requests.session_changed(0, None)
    assert isinstance(unsent.error, MembersRequestLost)
    assert "the shard's session ended (no chunk arrived)" in str(unsent.error)


def test_the_timeout_error_says_what_arrived() -> None:
    requests = MemberRequests()
    pending = waiting(requests, "n")
    requests.offer(0, "GUILD_MEMBERS_CHUNK", chunk(1, 3, nonce="n"), 0.0)
    error = MemberRequests.timed_out(pending, 2.0)
    assert isinstance(error, MembersTimeout) and isinstance(error, TimeoutError)
    assert (error.received, error.expected) == ((1,), 3)
    assert "within 2.0 s: 1 of 3 chunks arrived (indexes 1; 1 members)" in str(error)


# --- the simulator's reading of the rule --------------------------------------------------------


def test_the_simulator_limits_full_requests_only_and_per_window() -> None:
    from gcluster.testing import rules

    assert rules.is_full_member_request({"guild_id": "1", "query": "", "limit": 0})
    assert not rules.is_full_member_request({"guild_id": "1", "query": "", "limit": 1})
    assert not rules.is_full_member_request({"guild_id": "1", "user_ids": ["2"]})
    assert rules.members_retry_after(None, 5.0, 30.0) is None
    assert rules.members_retry_after(100.0, 110.0, 30.0) == pytest.approx(20.0)
    assert rules.members_retry_after(100.0, 130.0, 30.0) is None
    assert rules.members_retry_after(100.0, 100.0, 0.0) is None  # the rule turned off
