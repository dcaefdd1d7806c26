"""Event kinds and filter bits against Discord's list; offered dispatches in the protocol."""

from __future__ import annotations

import pytest
from test_protocol import connected, dispatch, encode, make

from gcluster.delivery import RawDispatch
from gcluster.events import Event, EventType, EventTypeFlags, dispatch_kind, event_type, flag_for
from gcluster.protocol import Offer
from gcluster.stats import ShardStats

# Discord's receive events (developers/events/gateway-events, "Receive Events")
# that are dispatches, as of the docs of August 2026; HELLO, RECONNECT and
# INVALID_SESSION are opcodes of their own.
NEW_DISPATCHES = ("CHANNEL_INFO", "VOICE_CHANNEL_STATUS_UPDATE", "VOICE_CHANNEL_START_TIME_UPDATE")


@pytest.mark.parametrize("name", [*NEW_DISPATCHES, "RATE_LIMITED"])
def test_the_newer_dispatches_have_kinds_and_filter_bits(name: str) -> None:
    kind = event_type(name)
    assert kind is not EventType.UNKNOWN and kind.value == name
    assert dispatch_kind(name) == (kind, int(flag_for(kind)))
    assert flag_for(kind) & EventTypeFlags.ALL


def test_every_kind_has_a_bit_of_its_own_and_all_holds_all_but_payloads() -> None:
    bits = [int(flag_for(kind)) for kind in EventType]
    assert all(bin(bit).count("1") == 1 for bit in bits)
    assert len(set(bits)) == len(bits)
    everything = sum(bits)
    assert int(EventTypeFlags.ALL) == everything - int(EventTypeFlags.SHARD_PAYLOAD)


def test_bits_kept_their_values_and_the_guilds_group_has_the_voice_channel_updates() -> None:
    # An application may keep a filter as an int: old bits never move.
    assert EventTypeFlags.RATE_LIMITED == 1 << 63
    assert EventTypeFlags.UNKNOWN == 1 << 88
    voice = (
        EventTypeFlags.VOICE_CHANNEL_STATUS_UPDATE | EventTypeFlags.VOICE_CHANNEL_START_TIME_UPDATE
    )
    assert EventTypeFlags.GUILDS & voice == voice
    assert not EventTypeFlags.GUILDS & EventTypeFlags.CHANNEL_INFO


# --- offered dispatches -------------------------------------------------------------------

OFFERED = EventTypeFlags.GUILD_MEMBERS_CHUNK | EventTypeFlags.RATE_LIMITED


@pytest.mark.parametrize("wanted", [True, False], ids=["wanted", "filtered out"])
def test_an_offered_kind_comes_back_as_an_offer_whatever_the_filter(wanted: bool) -> None:
    types = EventTypeFlags.MESSAGE_CREATE | (EventTypeFlags.GUILD_MEMBERS_CHUNK if wanted else 0)
    stats = ShardStats()
    proto = connected(make(event_types=types, offered=OFFERED, stats=stats))
    filtered_before = stats.filtered
    [offer] = proto.feed(dispatch("GUILD_MEMBERS_CHUNK", 2, {"nonce": "n"}), 1.0)
    assert isinstance(offer, Offer) and offer.wanted is wanted
    assert isinstance(offer.dispatch, RawDispatch) and offer.dispatch.sequence == 2
    # Counted by whoever takes it, not here.
    assert stats.filtered == filtered_before and stats.events["GUILD_MEMBERS_CHUNK"] == 0
    # A replay of it is still a replay.
    assert proto.feed(dispatch("GUILD_MEMBERS_CHUNK", 2, {"nonce": "n"}), 1.0) == []
    # Other kinds go the usual way.
    assert proto.feed(dispatch("TYPING_START", 3), 1.0) == []


def test_an_offered_kind_laid_out_otherwise_is_offered_decoded() -> None:
    proto = connected(make(event_types=EventTypeFlags.MESSAGE_CREATE, offered=OFFERED))
    message = {"op": 0, "d": {"opcode": 8}, "s": 2, "t": "RATE_LIMITED"}  # not peekable
    [offer] = proto.feed(encode(message), 1.0)
    assert isinstance(offer, Offer) and not offer.wanted
    assert offer.dispatch == Event(EventType.RATE_LIMITED, "RATE_LIMITED", 3, 2, {"opcode": 8})


def test_nothing_is_offered_unless_asked() -> None:
    proto = connected(make(event_types=EventTypeFlags.MESSAGE_CREATE))
    assert proto.feed(dispatch("GUILD_MEMBERS_CHUNK", 2), 1.0) == []
