"""Gateway intents: the bits a shard sends in IDENTIFY to choose which events Discord sends it.

Discord sends a shard only the events of the intents it identified with, so
intents are the first and cheapest filter; `EventTypeFlags` filters further on
this side. The values are Discord's own bits (API v10), so an `Intents` value
goes into IDENTIFY as a plain integer.
"""

from __future__ import annotations

import enum

__all__ = ["Intents"]


class Intents(enum.IntFlag):
    """Discord's gateway intents, combinable with ``|``.

    Three intents are *privileged*: GUILD_MEMBERS, GUILD_PRESENCES and
    MESSAGE_CONTENT (together: ``Intents.PRIVILEGED``). Each must be switched on
    for the application in the Developer Portal, and a bot in 100 or more
    guilds must also be verified and approved for it; identifying with one that
    is not allowed gets the shard closed with 4014 (`DisallowedIntents`).
    Setting a bit Discord does not know gets 4013 (`InvalidIntents`).

    MESSAGE_CONTENT brings no events of its own: it fills in the content,
    embeds, attachments and components of messages the other intents deliver.

    ``NON_PRIVILEGED`` is every other intent, what most bots can identify with
    without asking anyone; ``ALL`` is both together.
    """

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_MODERATION = 1 << 2
    GUILD_EXPRESSIONS = 1 << 3
    GUILD_INTEGRATIONS = 1 << 4
    GUILD_WEBHOOKS = 1 << 5
    GUILD_INVITES = 1 << 6
    GUILD_VOICE_STATES = 1 << 7
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    DIRECT_MESSAGE_TYPING = 1 << 14
    MESSAGE_CONTENT = 1 << 15
    GUILD_SCHEDULED_EVENTS = 1 << 16
    # Bits 17-19 and 22-23 are not assigned by Discord.
    AUTO_MODERATION_CONFIGURATION = 1 << 20
    AUTO_MODERATION_EXECUTION = 1 << 21
    GUILD_MESSAGE_POLLS = 1 << 24
    DIRECT_MESSAGE_POLLS = 1 << 25

    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
    NON_PRIVILEGED = (
        GUILDS
        | GUILD_MODERATION
        | GUILD_EXPRESSIONS
        | GUILD_INTEGRATIONS
        | GUILD_WEBHOOKS
        | GUILD_INVITES
        | GUILD_VOICE_STATES
        | GUILD_MESSAGES
        | GUILD_MESSAGE_REACTIONS
        | GUILD_MESSAGE_TYPING
        | DIRECT_MESSAGES
        | DIRECT_MESSAGE_REACTIONS
        | DIRECT_MESSAGE_TYPING
        | GUILD_SCHEDULED_EVENTS
        | AUTO_MODERATION_CONFIGURATION
        | AUTO_MODERATION_EXECUTION
        | GUILD_MESSAGE_POLLS
        | DIRECT_MESSAGE_POLLS
    )
    ALL = PRIVILEGED | NON_PRIVILEGED
