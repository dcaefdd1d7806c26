"""Discord gateway v10 rules the simulator enforces, as pure functions and constants.

Everything here decides, from a client's message and the simulator's
configuration, whether Discord would accept it or close the connection with
which code. Nothing here does I/O, so the rules read in one place and the
connection code only acts on the verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from gcluster.intents import Intents
from gcluster.protocol import Opcode

__all__ = [
    "CLIENT_COMMAND_OPS",
    "COMMAND_LIMIT",
    "COMMAND_WINDOW",
    "MAX_PAYLOAD_BYTES",
    "MEMBERS_WINDOW",
    "PRIVILEGED_INTENTS",
    "Close",
    "Op",
    "Rejection",
    "check_identify",
    "check_query",
    "check_resume",
    "client_close_ends_session",
    "dispatch_intents",
    "identify_too_soon",
    "is_full_member_request",
    "members_retry_after",
    "server_close_ends_session",
    "strip_bot_prefix",
]


# The simulator speaks the same opcodes as the client; one table for both.
Op = Opcode


class Close:
    """Gateway close codes the simulator sends."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014


CLIENT_COMMAND_OPS = frozenset(
    {
        Op.PRESENCE_UPDATE,
        Op.VOICE_STATE_UPDATE,
        Op.REQUEST_GUILD_MEMBERS,
        Op.REQUEST_SOUNDBOARD_SOUNDS,
        Op.REQUEST_CHANNEL_INFO,
    }
)
"""Ops that are commands: recorded, and only allowed after IDENTIFY or RESUME."""

PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)
"""GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT."""

# Discord's highest intent is 1 << 25; any bit above it is invalid.
_INTENT_LIMIT = 1 << 26
MAX_PAYLOAD_BYTES = 4096
"""Discord rejects bigger client payloads."""
MEMBERS_WINDOW = 30.0
"""Seconds between two requests for all of a guild's members (Discord: 1 per 30 s per guild)."""
COMMAND_LIMIT = 120
COMMAND_WINDOW = 60.0
"""At most COMMAND_LIMIT payloads (heartbeats included) per COMMAND_WINDOW seconds."""

# Closes that end the session: the client must IDENTIFY again. Discord's
# table only says whether to reconnect; the project's rule (DESIGN.md, "Gateway
# rules") is that 4007 and 4009 need a new session, the fatal codes end
# everything, and every other code - 1000/1001 from the server included -
# keeps the session resumable.
_SESSION_ENDING_SERVER_CODES = frozenset(
    {
        Close.AUTHENTICATION_FAILED,
        Close.INVALID_SEQ,
        Close.SESSION_TIMED_OUT,
        Close.INVALID_SHARD,
        Close.SHARDING_REQUIRED,
        Close.INVALID_API_VERSION,
        Close.INVALID_INTENTS,
        Close.DISALLOWED_INTENTS,
    }
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Discord's verdict on a message it will not accept: close with this code."""

    code: int
    reason: str


def strip_bot_prefix(token: str) -> str:
    """The raw token, whether or not it came as ``"Bot <token>"``."""
    return token[4:] if token.startswith("Bot ") else token


def check_query(
    query: Mapping[str, str], *, compressions: AbstractSet[str] = frozenset({"zlib-stream"})
) -> Rejection | None:
    """Check the connect URL's ``v``, ``encoding`` and ``compress`` parameters.

    Args:
        query: the parameters, first value of each.
        compressions: the ``compress`` values served (absent means none).
    """
    if query.get("v") != "10":
        return Rejection(Close.INVALID_API_VERSION, "Invalid API version.")
    if query.get("encoding", "json") != "json":
        # ETF is real but not simulated; anything else Discord cannot decode.
        return Rejection(Close.DECODE_ERROR, "Error while decoding payload.")
    compress = query.get("compress")
    if compress is not None and compress not in compressions:
        return Rejection(Close.DECODE_ERROR, "Unsupported compression.")
    return None


def _token_ok(data: Mapping[str, Any], token: str) -> bool:
    sent = data.get("token")
    return isinstance(sent, str) and strip_bot_prefix(sent) == token


def check_identify(
    data: Any, *, token: str, shards: int, privileged_intents: int
) -> Rejection | None:
    """Check an IDENTIFY's ``d`` the way Discord does, in Discord's order."""
    if not isinstance(data, dict):
        return Rejection(Close.DECODE_ERROR, "Error while decoding payload.")
    if not _token_ok(data, token):
        return Rejection(Close.AUTHENTICATION_FAILED, "Authentication failed.")
    shard = data.get("shard")
    if shard is None:
        if shards > 1:
            return Rejection(Close.SHARDING_REQUIRED, "Sharding required.")
    elif not (
        isinstance(shard, list)
        and len(shard) == 2
        and all(type(x) is int for x in shard)
        and shard[1] == shards
        and 0 <= shard[0] < shard[1]
    ):
        return Rejection(Close.INVALID_SHARD, "Invalid shard.")
    intents = data.get("intents")
    if type(intents) is not int or intents < 0 or intents >= _INTENT_LIMIT:
        return Rejection(Close.INVALID_INTENTS, "Invalid intent(s).")
    if intents & PRIVILEGED_INTENTS & ~privileged_intents:
        return Rejection(Close.DISALLOWED_INTENTS, "Disallowed intent(s).")
    return None


def check_resume(data: Any, *, token: str) -> Rejection | None:
    """Check a RESUME's ``d`` before looking its session up."""
    if not isinstance(data, dict) or not isinstance(data.get("session_id"), str):
        return Rejection(Close.DECODE_ERROR, "Error while decoding payload.")
    if not _token_ok(data, token):
        return Rejection(Close.AUTHENTICATION_FAILED, "Authentication failed.")
    seq = data.get("seq")
    if seq is not None and type(seq) is not int:
        return Rejection(Close.DECODE_ERROR, "Error while decoding payload.")
    return None


def client_close_ends_session(code: int | None) -> bool:
    """A client closing with 1000/1001 ends its session; any other code (or a drop) keeps it."""
    return code in (1000, 1001)


def server_close_ends_session(code: int | None) -> bool:
    """Whether Discord closing with ``code`` ends the session.

    4007, 4009 and the fatal codes (4004, 4010-4014) end it. Discord documents
    1000/1001 only for a client's close (which ends the session); when the
    server sends them (a gateway node going away), clients resume, so the
    session is kept.
    """
    return code in _SESSION_ENDING_SERVER_CODES


def identify_too_soon(previous: float | None, now: float, interval: float) -> float | None:
    """The seconds since the bucket's previous IDENTIFY, if this one comes too soon.

    Discord lets each identify bucket (``shard_id % max_concurrency``) start
    one session per ``interval`` seconds (5 s) and answers a faster IDENTIFY
    with op 9 INVALID_SESSION. An ``interval`` of 0 disables the rule.

    Returns:
        None when the IDENTIFY is allowed, else the seconds since the previous one.
    """
    if interval <= 0 or previous is None:
        return None
    since = now - previous
    return since if since < interval else None


def is_full_member_request(data: Mapping[str, Any]) -> bool:
    """Whether op 8's ``d`` asks for every member: an empty query and limit 0, no user_ids.

    Only those are rate-limited (Discord's change log of August 2025).
    """
    return data.get("user_ids") is None and data.get("query") == "" and data.get("limit") == 0


def members_retry_after(previous: float | None, now: float, window: float) -> float | None:
    """Seconds the client must still wait, if a full member request comes too soon.

    Discord allows one request for all of a guild's members per guild per
    ``window`` seconds (30) and answers a faster one with a RATE_LIMITED
    dispatch carrying ``retry_after``. A ``window`` of 0 disables the rule.

    Returns:
        None when the request is allowed, else the seconds left of the window.
    """
    if window <= 0 or previous is None or now - previous >= window:
        return None
    return window - (now - previous)


# Which intents bring which dispatch (Discord's "List of Intents"). Dispatches
# sent for a guild and for DMs alike are in both tables, told apart by the
# ``guild_id`` in their ``d``; one in neither (READY, RESUMED,
# INTERACTION_CREATE, GUILD_MEMBERS_CHUNK, CHANNEL_INFO, RATE_LIMITED,
# USER_UPDATE, ...) is sent to every session.
_GUILD_DISPATCHES: dict[Intents, tuple[str, ...]] = {
    Intents.GUILDS: (
        "GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE",
        "GUILD_ROLE_CREATE", "GUILD_ROLE_UPDATE", "GUILD_ROLE_DELETE",
        "CHANNEL_CREATE", "CHANNEL_UPDATE", "CHANNEL_DELETE", "CHANNEL_PINS_UPDATE",
        "THREAD_CREATE", "THREAD_UPDATE", "THREAD_DELETE", "THREAD_LIST_SYNC",
        "THREAD_MEMBER_UPDATE", "THREAD_MEMBERS_UPDATE",
        "STAGE_INSTANCE_CREATE", "STAGE_INSTANCE_UPDATE", "STAGE_INSTANCE_DELETE",
        "VOICE_CHANNEL_STATUS_UPDATE", "VOICE_CHANNEL_START_TIME_UPDATE",
    ),
    Intents.GUILD_MEMBERS: (
        "GUILD_MEMBER_ADD", "GUILD_MEMBER_UPDATE", "GUILD_MEMBER_REMOVE", "THREAD_MEMBERS_UPDATE",
    ),
    Intents.GUILD_MODERATION: ("GUILD_AUDIT_LOG_ENTRY_CREATE", "GUILD_BAN_ADD", "GUILD_BAN_REMOVE"),
    Intents.GUILD_EXPRESSIONS: (
        "GUILD_EMOJIS_UPDATE", "GUILD_STICKERS_UPDATE", "GUILD_SOUNDBOARD_SOUND_CREATE",
        "GUILD_SOUNDBOARD_SOUND_UPDATE", "GUILD_SOUNDBOARD_SOUND_DELETE",
        "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
    ),
    Intents.GUILD_INTEGRATIONS: (
        "GUILD_INTEGRATIONS_UPDATE", "INTEGRATION_CREATE", "INTEGRATION_UPDATE",
        "INTEGRATION_DELETE",
    ),
    Intents.GUILD_WEBHOOKS: ("WEBHOOKS_UPDATE",),
    Intents.GUILD_INVITES: ("INVITE_CREATE", "INVITE_DELETE"),
    Intents.GUILD_VOICE_STATES: ("VOICE_CHANNEL_EFFECT_SEND", "VOICE_STATE_UPDATE"),
    Intents.GUILD_PRESENCES: ("PRESENCE_UPDATE",),
    Intents.GUILD_MESSAGES: (
        "MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK",
    ),
    Intents.GUILD_MESSAGE_REACTIONS: (
        "MESSAGE_REACTION_ADD", "MESSAGE_REACTION_REMOVE", "MESSAGE_REACTION_REMOVE_ALL",
        "MESSAGE_REACTION_REMOVE_EMOJI",
    ),
    Intents.GUILD_MESSAGE_TYPING: ("TYPING_START",),
    Intents.GUILD_SCHEDULED_EVENTS: (
        "GUILD_SCHEDULED_EVENT_CREATE", "GUILD_SCHEDULED_EVENT_UPDATE",
        "GUILD_SCHEDULED_EVENT_DELETE", "GUILD_SCHEDULED_EVENT_USER_ADD",
        "GUILD_SCHEDULED_EVENT_USER_REMOVE",
    ),
    Intents.AUTO_MODERATION_CONFIGURATION: (
        "AUTO_MODERATION_RULE_CREATE", "AUTO_MODERATION_RULE_UPDATE", "AUTO_MODERATION_RULE_DELETE",
    ),
    Intents.AUTO_MODERATION_EXECUTION: ("AUTO_MODERATION_ACTION_EXECUTION",),
    Intents.GUILD_MESSAGE_POLLS: ("MESSAGE_POLL_VOTE_ADD", "MESSAGE_POLL_VOTE_REMOVE"),
}  # fmt: skip


def _by_name(dispatches: Mapping[Intents, tuple[str, ...]]) -> dict[str, int]:
    table: dict[str, int] = {}
    for intent, names in dispatches.items():
        for name in names:
            # THREAD_MEMBERS_UPDATE comes with either of its two intents.
            table[name] = table.get(name, 0) | intent
    return table


_GUILD_INTENTS = _by_name(_GUILD_DISPATCHES)
_DM_INTENTS = _by_name(
    {
        Intents.DIRECT_MESSAGES: (
            "MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "CHANNEL_PINS_UPDATE",
        ),
        Intents.DIRECT_MESSAGE_REACTIONS: (
            "MESSAGE_REACTION_ADD", "MESSAGE_REACTION_REMOVE", "MESSAGE_REACTION_REMOVE_ALL",
            "MESSAGE_REACTION_REMOVE_EMOJI",
        ),
        Intents.DIRECT_MESSAGE_TYPING: ("TYPING_START",),
        Intents.DIRECT_MESSAGE_POLLS: ("MESSAGE_POLL_VOTE_ADD", "MESSAGE_POLL_VOTE_REMOVE"),
    }
)  # fmt: skip


def dispatch_intents(name: str, data: Any, *, bot_user_id: int | None = None) -> int:
    """The intents that bring dispatch ``name`` with ``d = data``; 0 when none governs it.

    Discord sends a dispatch to a session that identified with any one of
    these intents, and one that no intent governs to every session. Where a
    dispatch exists both for guilds and for DMs (messages, reactions, typing,
    pins, poll votes), a ``guild_id`` in ``d`` makes it a guild one. A
    GUILD_MEMBER_UPDATE about the bot itself (``d.user.id == bot_user_id``)
    is sent whatever the intents.
    """
    guild_id = data.get("guild_id") if isinstance(data, dict) else None
    if guild_id is None and name in _DM_INTENTS:
        return _DM_INTENTS[name]
    if name == "GUILD_MEMBER_UPDATE" and bot_user_id is not None and isinstance(data, dict):
        user = data.get("user")
        if isinstance(user, dict) and str(user.get("id")) == str(bot_user_id):
            return 0
    return _GUILD_INTENTS.get(name, 0)
