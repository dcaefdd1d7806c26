"""The simulator honours intents: a shard gets only the dispatches its IDENTIFY's intents bring.

The rule is Discord's table, in `gcluster.testing.rules`; it is checked here
against the client's own intent-named `EventTypeFlags` groups, then end to end:
a cluster identified without GUILD_MESSAGE_TYPING and GUILD_PRESENCES never
sees TYPING_START or PRESENCE_UPDATE, and the simulator records them as
withheld.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TIMEOUT, collect

from gcluster import Cluster, EventType, EventTypeFlags, Intents
from gcluster.testing import STREAM_INTENTS, STREAM_KINDS, GatewaySimulator, event_number
from gcluster.testing.rules import _DM_INTENTS, _GUILD_INTENTS, dispatch_intents

MakeSim = Callable[..., GatewaySimulator]
GUILD = {"guild_id": "81384788765712384"}

# EventTypeFlags groups named after an intent, and the intent's events on Discord.
SAME_NAMED_GROUPS = [
    name
    for name in Intents.__members__
    if name in EventTypeFlags.__members__ and name not in ("ALL", "PRIVILEGED")
]


# --- the rule ------------------------------------------------------------------------


def test_guild_dispatches_need_their_guild_intent() -> None:
    assert dispatch_intents("TYPING_START", GUILD) == Intents.GUILD_MESSAGE_TYPING
    assert dispatch_intents("PRESENCE_UPDATE", GUILD) == Intents.GUILD_PRESENCES
    assert dispatch_intents("MESSAGE_CREATE", GUILD) == Intents.GUILD_MESSAGES
    assert dispatch_intents("GUILD_CREATE", {"id": "1"}) == Intents.GUILDS
    assert dispatch_intents("AUTO_MODERATION_RULE_CREATE", GUILD) == (
        Intents.AUTO_MODERATION_CONFIGURATION
    )


def test_without_a_guild_id_a_dispatch_is_a_dm_one() -> None:
    assert dispatch_intents("MESSAGE_CREATE", {"channel_id": "1"}) == Intents.DIRECT_MESSAGES
    assert dispatch_intents("TYPING_START", {}) == Intents.DIRECT_MESSAGE_TYPING
    assert dispatch_intents("MESSAGE_REACTION_ADD", {}) == Intents.DIRECT_MESSAGE_REACTIONS
    assert dispatch_intents("MESSAGE_POLL_VOTE_ADD", {}) == Intents.DIRECT_MESSAGE_POLLS
    assert dispatch_intents("CHANNEL_PINS_UPDATE", {}) == Intents.DIRECT_MESSAGES
    assert dispatch_intents("CHANNEL_PINS_UPDATE", GUILD) == Intents.GUILDS


def test_dispatches_no_intent_governs_go_to_everyone() -> None:
    for name in ("READY", "RESUMED", "INTERACTION_CREATE", "GUILD_MEMBERS_CHUNK", "USER_UPDATE"):
        assert dispatch_intents(name, GUILD) == 0, name


def test_thread_members_update_comes_with_either_intent() -> None:
    assert dispatch_intents("THREAD_MEMBERS_UPDATE", GUILD) == (
        Intents.GUILDS | Intents.GUILD_MEMBERS
    )


def test_the_bots_own_member_update_needs_no_intent() -> None:
    mine = {**GUILD, "user": {"id": "42"}}
    other = {**GUILD, "user": {"id": "43"}}
    assert dispatch_intents("GUILD_MEMBER_UPDATE", mine, bot_user_id=42) == 0
    assert dispatch_intents("GUILD_MEMBER_UPDATE", other, bot_user_id=42) == Intents.GUILD_MEMBERS


def test_every_governed_name_is_a_dispatch_the_client_knows() -> None:
    for name in {*_GUILD_INTENTS, *_DM_INTENTS}:
        assert name in EventType.__members__ and not name.startswith(("SHARD_", "GATEWAY_"))


@pytest.mark.parametrize("name", SAME_NAMED_GROUPS)
def test_the_rule_matches_the_clients_intent_named_group(name: str) -> None:
    """The simulator's table and `EventTypeFlags`' groups, written apart, agree."""
    group = EventTypeFlags[name]
    in_group = {flag.name for flag in EventTypeFlags if flag in group and flag.bit_count() == 1}
    brought = {event for event, intents in _GUILD_INTENTS.items() if intents & Intents[name]}
    assert brought == in_group


def test_stream_intents_bring_every_stream_kind() -> None:
    for name in STREAM_KINDS:
        assert dispatch_intents(name, GUILD) & STREAM_INTENTS, name


# --- end to end ---------------------------------------------------------------------------


def kind_of(number: int) -> str:
    """The dispatch name `send_events` (default kinds) gives event `number`."""
    return STREAM_KINDS[(number - 1) % len(STREAM_KINDS)]


def test_a_shard_gets_only_what_its_intents_bring(make_sim: MakeSim) -> None:
    sim = make_sim()
    # Sent before the shard identifies: the intents are checked at READY.
    early = sim.send_events(0, 5)
    cluster = Cluster(sim.token, Intents.GUILDS | Intents.GUILD_MESSAGES, api_base=sim.api_base)
    cluster.up(timeout=TIMEOUT)
    try:
        assert cluster.wait_until_ready(TIMEOUT)
        late = sim.send_events(0, 5)
        sim.dispatch(0, "MESSAGE_CREATE", {"id": "7", "channel_id": "8", "content": "a DM"})
        sim.dispatch(0, "INTERACTION_CREATE", {"id": "9", **GUILD})
        marker = sim.send_events(0, 1, kinds=["MESSAGE_CREATE"])[0]
        received = collect(
            cluster.events(), lambda got: event_number(got[-1][1].data or {}) == marker
        )
    finally:
        cluster.down()
    dispatches = [event for _, event in received if event.sequence is not None]
    names = [event.name for event in dispatches]
    assert "TYPING_START" not in names and "PRESENCE_UPDATE" not in names
    assert names.count("INTERACTION_CREATE") == 1
    numbers = [event_number(event.data) for event in dispatches]
    sent = [*early, *late]
    assert [n for n in numbers if n is not None] == [
        n for n in sent if kind_of(n).startswith("MESSAGE_")
    ] + [marker]
    assert [(r.t, r.number) for r in sim.records.withheld] == [
        (kind_of(n), n) for n in sent if not kind_of(n).startswith("MESSAGE_")
    ] + [("MESSAGE_CREATE", None)]  # the DM: no DIRECT_MESSAGES
    assert {r.intents for r in sim.records.withheld} == {
        Intents.GUILD_MESSAGE_TYPING,
        Intents.GUILD_PRESENCES,
        Intents.DIRECT_MESSAGES,
    }
    # Withheld dispatches took no sequence number: s counts only what was sent.
    assert [event.sequence for event in dispatches] == list(range(1, len(dispatches) + 1))


def test_with_the_intents_every_kind_arrives(make_sim: MakeSim) -> None:
    sim = make_sim()
    cluster = Cluster(sim.token, STREAM_INTENTS, api_base=sim.api_base)
    cluster.up(timeout=TIMEOUT)
    try:
        sent = sim.send_events(0, 10)
        received = collect(
            cluster.events(), lambda got: event_number(got[-1][1].data or {}) == sent[-1]
        )
    finally:
        cluster.down()
    numbers = [event_number(e.data) for _, e in received if e.sequence is not None]
    assert [n for n in numbers if n is not None] == sent
    assert sim.records.withheld == []


def test_blasting_a_kind_the_session_has_no_intent_for_is_refused(make_sim: MakeSim) -> None:
    sim = make_sim()
    cluster = Cluster(sim.token, Intents.GUILD_MESSAGES, api_base=sim.api_base)
    cluster.up(timeout=TIMEOUT)
    try:
        assert cluster.wait_until_ready(TIMEOUT)
        assert sim.wait_until(lambda: sim.live_connections(0) == 1, TIMEOUT)
        with pytest.raises(ValueError, match="without an intent that brings TYPING_START"):
            sim.blast(0, 10, kinds=["TYPING_START"])
    finally:
        cluster.down()
