"""Intents carry Discord's own bit values and the privileged split."""

from __future__ import annotations

import pytest

from gcluster.intents import Intents

# Discord's gateway intents, as listed in its v10 documentation.
DOCUMENTED_BITS = {
    "GUILDS": 0,
    "GUILD_MEMBERS": 1,
    "GUILD_MODERATION": 2,
    "GUILD_EXPRESSIONS": 3,
    "GUILD_INTEGRATIONS": 4,
    "GUILD_WEBHOOKS": 5,
    "GUILD_INVITES": 6,
    "GUILD_VOICE_STATES": 7,
    "GUILD_PRESENCES": 8,
    "GUILD_MESSAGES": 9,
    "GUILD_MESSAGE_REACTIONS": 10,
    "GUILD_MESSAGE_TYPING": 11,
    "DIRECT_MESSAGES": 12,
    "DIRECT_MESSAGE_REACTIONS": 13,
    "DIRECT_MESSAGE_TYPING": 14,
    "MESSAGE_CONTENT": 15,
    "GUILD_SCHEDULED_EVENTS": 16,
    "AUTO_MODERATION_CONFIGURATION": 20,
    "AUTO_MODERATION_EXECUTION": 21,
    "GUILD_MESSAGE_POLLS": 24,
    "DIRECT_MESSAGE_POLLS": 25,
}


@pytest.mark.parametrize(("name", "bit"), sorted(DOCUMENTED_BITS.items()))
def test_each_intent_has_discords_bit(name: str, bit: int) -> None:
    assert Intents[name] == 1 << bit


def _single_intents() -> list[Intents]:
    # The one-bit members. Iterating the class yields PRIVILEGED, ALL, ... too
    # on Python 3.10 (3.11+ leaves the groups out), so pick them explicitly.
    return [member for member in Intents if member.value & (member.value - 1) == 0]


def test_single_intents_are_exactly_the_documented_ones() -> None:
    assert {member.name for member in _single_intents()} == set(DOCUMENTED_BITS)


def test_privileged_is_members_presences_and_message_content() -> None:
    assert Intents.PRIVILEGED == (
        Intents.GUILD_MEMBERS | Intents.GUILD_PRESENCES | Intents.MESSAGE_CONTENT
    )
    assert int(Intents.PRIVILEGED) == 2 + 256 + 32768


def test_non_privileged_is_everything_else() -> None:
    assert Intents.NON_PRIVILEGED & Intents.PRIVILEGED == 0
    for member in _single_intents():
        in_privileged = member in Intents.PRIVILEGED
        assert (member in Intents.NON_PRIVILEGED) is not in_privileged, member


def test_all_is_every_documented_bit() -> None:
    assert Intents.ALL == Intents.PRIVILEGED | Intents.NON_PRIVILEGED
    # Bits 0-16, 20, 21, 24 and 25.
    assert int(Intents.ALL) == 53608447


def test_combinations_are_plain_ints_for_identify() -> None:
    intents = Intents.GUILDS | Intents.GUILD_MESSAGES
    assert intents == 513
    assert isinstance(intents, int)
    assert Intents.GUILD_MESSAGES in intents
    assert Intents.MESSAGE_CONTENT not in intents
    assert not Intents(0)
