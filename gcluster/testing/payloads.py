"""Realistic Discord v10 payloads: snowflakes, guild fixtures and dispatch bodies.

A client's performance and parsing are only tested honestly against payloads
shaped and sized like Discord's: a MESSAGE_CREATE carries its author, member,
mentions, embeds and attachments (about 1.2 KB), a GUILD_CREATE can reach
megabytes. Ids are real-looking snowflakes, and every guild id belongs to the
shard that receives it (``(guild_id >> 22) % total == shard_id``), so a client
routing by guild sees consistent data.

Builders return plain dicts (the ``d`` of a dispatch); they never do I/O.
"""

from __future__ import annotations

import functools
import itertools
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "DISCORD_EPOCH_MS",
    "DUE_KEY",
    "NUMBER_KEY",
    "GuildFixture",
    "Snowflakes",
    "due_offset",
    "event_number",
    "guild_create",
    "guild_fixtures",
    "channel_info",
    "guild_members_chunk",
    "guild_members_chunks",
    "message_create",
    "message_delete",
    "message_update",
    "presence_update",
    "ready",
    "resumed",
    "shard_for_guild",
    "snowflake",
    "typing_start",
    "user",
]

DISCORD_EPOCH_MS = 1_420_070_400_000
"""Milliseconds since the Unix epoch of Discord's epoch (2015-01-01)."""

NUMBER_KEY = "gcluster_n"
"""The key in a dispatch's ``d`` that holds the simulator's per-shard event number.

Read it with `event_number`, so tests never depend on the key itself.
"""

DUE_KEY = "gcluster_due"
"""The key in a paced dispatch's ``d`` that holds when the simulator was to send it.

Seconds after the start of the paced run (`GatewaySimulator.send_paced`);
read it with `due_offset`.
"""

# Guilds in the fixtures were "created" from about mid-2018 on.
_GUILD_EPOCH_MS = 1_530_000_000_000
_USERS_PER_GUILD = 24
_CHANNELS_PER_GUILD = 6
_ROLES_PER_GUILD = 5
_CDN = "https://cdn.discordapp.com"
_MEDIA = "https://media.discordapp.net"
_NAMES = (
    "ada", "brook", "cyra", "dmitri", "elio", "fenna", "gus", "hallie", "ivo", "juno",
    "kasper", "lune", "milo", "noor", "otto", "pia", "quill", "rhea", "soren", "tova",
    "ulla", "vik", "wren", "xia",
)  # fmt: skip
_STATUSES = ("online", "idle", "dnd", "online")
_TRACE = ['["gateway-prd-us-east1-c-7x2k",{"micros":412,"calls":["discord-sessions-prd-2-41"]}]']


def snowflake(unix_ms: int, *, worker: int = 1, process: int = 0, increment: int = 0) -> int:
    """The snowflake Discord would mint at ``unix_ms``: ``(ms - epoch) << 22 | ...``."""
    return (
        ((unix_ms - DISCORD_EPOCH_MS) << 22)
        | ((worker & 0x1F) << 17)
        | ((process & 0x1F) << 12)
        | (increment & 0xFFF)
    )


def shard_for_guild(guild_id: int, total: int) -> int:
    """The shard that receives a guild's events: ``(guild_id >> 22) % total``."""
    return (guild_id >> 22) % total


class Snowflakes:
    """Fresh ids minted "now", increasing the way Discord's do."""

    def __init__(self, *, worker: int = 1) -> None:
        self._worker = worker
        self._increment = itertools.count()

    def next(self) -> int:
        """A new snowflake for the current time."""
        return snowflake(
            int(time.time() * 1000), worker=self._worker, increment=next(self._increment)
        )


def _iso(unix_ms: int) -> str:
    return datetime.fromtimestamp(unix_ms / 1000, timezone.utc).isoformat(timespec="microseconds")


def _created_ms(id_: int) -> int:
    return (id_ >> 22) + DISCORD_EPOCH_MS


@dataclass(frozen=True, slots=True)
class GuildFixture:
    """The ids of one simulated guild: enough to make its events consistent."""

    id: int
    name: str
    owner_id: int
    channel_ids: tuple[int, ...]
    role_ids: tuple[int, ...]
    """The first role is @everyone, whose id equals the guild's."""
    member_ids: tuple[int, ...]


def guild_fixtures(shard_id: int, total: int, count: int) -> list[GuildFixture]:
    """``count`` guilds whose ids all map to ``shard_id`` of ``total``.

    Deterministic, so two simulators (or a test) agree on the ids.
    """
    base = ((_GUILD_EPOCH_MS - DISCORD_EPOCH_MS) // total) * total + shard_id
    guilds = []
    for index in range(count):
        # Steps of a multiple of `total` keep the shard residue of the timestamp.
        guild_ms = base + index * total * 86_413 + DISCORD_EPOCH_MS
        guild_id = snowflake(guild_ms, worker=1, increment=index)
        channels = tuple(
            snowflake(guild_ms + 1_000 * (i + 1), worker=2, increment=i)
            for i in range(_CHANNELS_PER_GUILD)
        )
        roles = (guild_id,) + tuple(
            snowflake(guild_ms + 2_000 * (i + 1), worker=3, increment=i)
            for i in range(_ROLES_PER_GUILD - 1)
        )
        members = tuple(
            snowflake(DISCORD_EPOCH_MS + 90_000_000_000 + 7_919_000 * i, worker=4, increment=i)
            for i in range(_USERS_PER_GUILD)
        )
        guilds.append(
            GuildFixture(
                id=guild_id,
                name=f"shard {shard_id} guild {index}",
                owner_id=members[index % len(members)],
                channel_ids=channels,
                role_ids=roles,
                member_ids=members,
            )
        )
    return guilds


def user(user_id: int, *, bot: bool = False) -> dict[str, Any]:
    """A v10 user object (new usernames: discriminator ``"0"``), as messages embed it."""
    return dict(_user(user_id, bot))


@functools.lru_cache(maxsize=4096)
def _user(user_id: int, bot: bool) -> dict[str, Any]:
    # Cached and shared between payloads that are serialized at once and never
    # mutated: building nested dicts is most of a MESSAGE_CREATE's cost.
    name = "gcluster-sim" if bot else _NAMES[(user_id >> 12) % len(_NAMES)]
    data: dict[str, Any] = {
        "username": f"{name}_{user_id % 10_000}",
        "public_flags": 0 if bot else 64,
        "primary_guild": None,
        "id": str(user_id),
        "global_name": name.capitalize(),
        "discriminator": "0",
        "clan": None,
        "avatar_decoration_data": None,
        "avatar": f"{user_id:x}"[:32].rjust(32, "a"),
    }
    if bot:
        data["bot"] = True
    return data


@functools.lru_cache(maxsize=4096)
def _member(guild: GuildFixture, user_id: int, *, with_user: bool) -> dict[str, Any]:
    # Cached and shared like `_user`; callers copy before changing one.
    member: dict[str, Any] = {
        "roles": [str(r) for r in guild.role_ids[1 : 1 + (user_id % 3)]],
        "premium_since": None,
        "pending": False,
        "nick": None,
        "mute": False,
        "joined_at": _iso(_created_ms(guild.id) + 3_600_000 * (user_id % 500)),
        "flags": 0,
        "deaf": False,
        "communication_disabled_until": None,
        "banner": None,
        "avatar": None,
    }
    if with_user:
        member["user"] = _user(user_id, False)
    return member


def _pick(values: tuple[int, ...], n: int) -> int:
    return values[n % len(values)]


def message_create(guild: GuildFixture, n: int, message_id: int) -> dict[str, Any]:
    """A MESSAGE_CREATE ``d``, the ``n``-th of a stream in ``guild``.

    About 1.2 KB on average, like Discord's: every message has its author and
    member; they alternate between a mention and none, and every other one
    carries an embed or an attachment.
    """
    author_id = _pick(guild.member_ids, n)
    channel_id = _pick(guild.channel_ids, n)
    data: dict[str, Any] = {
        "type": 0,
        "tts": False,
        "timestamp": _iso(_created_ms(message_id)),
        "pinned": False,
        "nonce": str(message_id - 4096),
        "mentions": [],
        "mention_roles": [],
        "mention_everyone": False,
        "member": _member(guild, author_id, with_user=False),
        "id": str(message_id),
        "flags": 0,
        "embeds": [],
        "edited_timestamp": None,
        "content": f"message {n}: the deploy is done, see the report",
        "components": [],
        "channel_type": 0,
        "channel_id": str(channel_id),
        "author": _user(author_id, False),
        "attachments": [],
        "guild_id": str(guild.id),
    }
    if n % 2 == 0:
        mention_id = _pick(guild.member_ids, n + 7)
        member = _member(guild, mention_id, with_user=False)
        data["mentions"] = [{**_user(mention_id, False), "member": member}]
        data["content"] = f"<@{mention_id}> {data['content']}"
    if n % 4 == 1:
        data["embeds"] = [
            {
                "type": "rich",
                "title": f"Report #{n}",
                "description": "All checks green.",
                "color": 5_793_266,
                "fields": [{"name": "duration", "value": f"{n % 97}s", "inline": True}],
                "content_scan_version": 0,
            }
        ]
    elif n % 4 == 3:
        attachment_id = message_id + 1
        path = f"attachments/{channel_id}/{attachment_id}/report-{n}.png"
        data["attachments"] = [
            {
                "id": str(attachment_id),
                "filename": f"report-{n}.png",
                "size": 48_213 + n % 1000,
                "url": f"{_CDN}/{path}",
                "proxy_url": f"{_MEDIA}/{path}",
                "width": 1280,
                "height": 720,
                "content_type": "image/png",
            }
        ]
    return data


def message_update(guild: GuildFixture, n: int, message_id: int) -> dict[str, Any]:
    """A MESSAGE_UPDATE ``d``: the full edited message, as v10 sends it."""
    data = message_create(guild, n, message_id)
    data["content"] += " (edited)"
    data["edited_timestamp"] = _iso(int(time.time() * 1000))
    return data


def message_delete(guild: GuildFixture, n: int, message_id: int) -> dict[str, Any]:
    """A MESSAGE_DELETE ``d``."""
    return {
        "id": str(message_id),
        "channel_id": str(_pick(guild.channel_ids, n)),
        "guild_id": str(guild.id),
    }


def typing_start(guild: GuildFixture, n: int) -> dict[str, Any]:
    """A TYPING_START ``d``, with the member as guild typing events carry it."""
    user_id = _pick(guild.member_ids, n)
    return {
        "user_id": str(user_id),
        "timestamp": int(time.time()),
        "member": _member(guild, user_id, with_user=True),
        "channel_id": str(_pick(guild.channel_ids, n)),
        "guild_id": str(guild.id),
    }


def _activities(n: int) -> list[dict[str, Any]]:
    if n % 3 == 0:
        return []
    return [
        {
            "type": 0,
            "name": "Factorio",
            "id": f"{n:016x}",
            "created_at": int(time.time() * 1000),
            "timestamps": {"start": int(time.time() * 1000) - 60_000 * (n % 90)},
        }
    ]


def presence_update(guild: GuildFixture, n: int) -> dict[str, Any]:
    """A PRESENCE_UPDATE ``d``."""
    status = _STATUSES[n % len(_STATUSES)]
    return {
        "user": {"id": str(_pick(guild.member_ids, n))},
        "status": status,
        "guild_id": str(guild.id),
        "client_status": {"desktop": status},
        "broadcast": None,
        "activities": _activities(n),
    }


def _channel(guild: GuildFixture, index: int, channel_id: int) -> dict[str, Any]:
    return {
        "id": str(channel_id),
        "type": 0,
        "name": f"channel-{index}",
        "position": index,
        "parent_id": None,
        "topic": None,
        "nsfw": False,
        "rate_limit_per_user": 0,
        "last_message_id": None,
        "permission_overwrites": [],
        "flags": 0,
        "version": _created_ms(channel_id),
    }


def _role(guild: GuildFixture, index: int, role_id: int) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": "@everyone" if role_id == guild.id else f"role-{index}",
        "color": 0 if role_id == guild.id else 3_447_003 + index,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": index,
        "permissions": "1071698660929",
        "managed": False,
        "mentionable": False,
        "flags": 0,
        "version": _created_ms(role_id),
    }


def _extra_member(guild: GuildFixture, index: int) -> dict[str, Any]:
    user_id = snowflake(_created_ms(guild.id) + 60_000 * (index + 1), worker=5, increment=index)
    # Uncached: a multi-megabyte guild would only flush the cache.
    return _member.__wrapped__(guild, user_id, with_user=True)


def guild_create(guild: GuildFixture, *, size_bytes: int | None = None) -> dict[str, Any]:
    """A GUILD_CREATE ``d`` with channels, roles, members and presences.

    Args:
        guild: whose guild.
        size_bytes: when given, members are added until the JSON is at least
            this big (within one member), so a test can send multi-megabyte
            guilds like Discord's largest.
    """
    members = [_member(guild, uid, with_user=True) for uid in guild.member_ids]
    data: dict[str, Any] = {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "description": None,
        "splash": None,
        "banner": None,
        "owner_id": str(guild.owner_id),
        "region": "deprecated",
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 1,
        "default_message_notifications": 1,
        "explicit_content_filter": 2,
        "features": ["COMMUNITY", "NEWS"],
        "mfa_level": 0,
        "system_channel_id": str(guild.channel_ids[0]),
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "vanity_url_code": None,
        "premium_tier": 1,
        "premium_subscription_count": 3,
        "preferred_locale": "en-US",
        "nsfw_level": 0,
        "max_members": 500_000,
        "max_video_channel_users": 25,
        "premium_progress_bar_enabled": False,
        "emojis": [],
        "stickers": [],
        "roles": [_role(guild, i, rid) for i, rid in enumerate(guild.role_ids)],
        "channels": [_channel(guild, i, cid) for i, cid in enumerate(guild.channel_ids)],
        "threads": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
        "voice_states": [],
        "presences": [
            {
                "user": {"id": str(uid)},
                "status": _STATUSES[i % len(_STATUSES)],
                "client_status": {"desktop": _STATUSES[i % len(_STATUSES)]},
                "activities": _activities(i),
            }
            for i, uid in enumerate(guild.member_ids[: len(guild.member_ids) // 2])
        ],
        "members": members,
        "member_count": len(members),
        "large": False,
        "unavailable": False,
        "lazy": True,
        "joined_at": _iso(_created_ms(guild.id) + 86_400_000),
        "application_id": None,
    }
    if size_bytes is not None:
        # Members are added until the guild reaches the size, each measured
        # once as the simulator sends it (UTF-8, slashes unescaped), so the
        # whole guild is never re-encoded.
        import ujson

        def size(value: Any) -> int:
            return len(
                ujson.dumps(value, ensure_ascii=False, escape_forward_slashes=False).encode()
            )

        total = size(data)
        for index in itertools.count():
            if total >= size_bytes:
                break
            member = _extra_member(guild, index)
            members.append(member)
            total += size(member) + 1  # and its comma
        data["member_count"] = len(members)
        data["large"] = len(members) > 250
    return data


def guild_members_chunk(
    guild: GuildFixture,
    member_ids: tuple[int, ...],
    *,
    nonce: str | None = None,
    query: str | None = None,
    limit: int = 0,
    presences: bool = False,
    not_found: list[str] | None = None,
) -> dict[str, Any]:
    """A GUILD_MEMBERS_CHUNK ``d`` answering a request guild members (op 8)."""
    members = [_member(guild, uid, with_user=True) for uid in member_ids]
    if query:
        members = [m for m in members if m["user"]["username"].startswith(query)]
    if limit:
        members = members[:limit]
    data: dict[str, Any] = {
        "guild_id": str(guild.id),
        "members": members,
        "chunk_index": 0,
        "chunk_count": 1,
        "not_found": not_found or [],
    }
    if presences:
        data["presences"] = [
            {"user": {"id": m["user"]["id"]}, "status": "online", "activities": []} for m in members
        ]
    if nonce is not None:
        data["nonce"] = nonce
    return data


def guild_members_chunks(
    guild: GuildFixture,
    member_ids: tuple[int, ...],
    *,
    per_chunk: int = 1000,
    nonce: str | None = None,
    query: str | None = None,
    limit: int = 0,
    presences: bool = False,
    not_found: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The GUILD_MEMBERS_CHUNK ``d``s answering one request guild members (op 8).

    ``per_chunk`` members to a chunk (Discord sends up to 1000), each chunk
    with its ``chunk_index`` and the ``chunk_count``; an answer with no
    members is one empty chunk. ``not_found`` goes in the first chunk.
    """
    whole = guild_members_chunk(
        guild,
        member_ids,
        nonce=nonce,
        query=query,
        limit=limit,
        presences=presences,
        not_found=not_found,
    )
    members = whole["members"]
    member_presences = whole.get("presences", [])
    count = max(1, -(-len(members) // per_chunk))
    chunks = []
    for index in range(count):
        part = slice(index * per_chunk, (index + 1) * per_chunk)
        chunk = {
            **whole,
            "members": members[part],
            "chunk_index": index,
            "chunk_count": count,
            "not_found": whole["not_found"] if index == 0 else [],
        }
        if presences:
            chunk["presences"] = member_presences[part]
        chunks.append(chunk)
    return chunks


def channel_info(guild: GuildFixture, fields: list[str]) -> dict[str, Any]:
    """A CHANNEL_INFO ``d`` answering request channel info (op 43) with ``fields``.

    Every other channel of the guild has a voice status and a start time;
    the rest have none (null), as channels nobody talks in.
    """
    channels = []
    for index, channel_id in enumerate(guild.channel_ids):
        active = index % 2 == 1
        channel: dict[str, Any] = {"id": str(channel_id)}
        if "status" in fields:
            channel["status"] = f"talking in {index}" if active else None
        if "voice_start_time" in fields:
            channel["voice_start_time"] = (
                _created_ms(guild.id) // 1000 + 3_600 * index if active else None
            )
        channels.append(channel)
    return {"guild_id": str(guild.id), "channels": channels}


def ready(
    *,
    bot_user_id: int,
    guild_ids: list[int],
    session_id: str,
    resume_gateway_url: str,
    shard: tuple[int, int],
    application_id: int,
    application_flags: int,
) -> dict[str, Any]:
    """A READY ``d``: the bot user, its guilds as unavailable stubs, the session."""
    return {
        "v": 10,
        "user_settings": {},
        "user": {
            **user(bot_user_id, bot=True),
            "flags": 0,
            "mfa_enabled": False,
            "verified": True,
            "email": None,
        },
        "guilds": [{"id": str(gid), "unavailable": True} for gid in guild_ids],
        "presences": [],
        "private_channels": [],
        "relationships": [],
        "guild_join_requests": [],
        "geo_ordered_rtc_regions": ["us-east", "us-central", "atlanta", "us-south", "newark"],
        "game_relationships": [],
        "session_type": "normal",
        "session_id": session_id,
        "resume_gateway_url": resume_gateway_url,
        "shard": list(shard),
        "application": {"id": str(application_id), "flags": application_flags},
        "auth": {},
        "_trace": _TRACE,
    }


def resumed() -> dict[str, Any]:
    """A RESUMED ``d``."""
    return {"_trace": _TRACE}


def event_number(data: dict[str, Any]) -> int | None:
    """The per-shard number `GatewaySimulator.send_events` gave an event, if any.

    Args:
        data: a dispatch's decoded ``d``.
    """
    number = data.get(NUMBER_KEY) if isinstance(data, dict) else None
    return number if type(number) is int else None


def due_offset(data: dict[str, Any]) -> float | None:
    """When a paced dispatch was due, in seconds after its run's start; None if not paced.

    The simulator writes it at ``start + offset`` or later (see
    ``BlastRecord.late_max``), so ``arrival - (start + offset)`` is an upper
    bound of the time from the simulator's send to the client's arrival.

    Args:
        data: a dispatch's decoded ``d``.
    """
    offset = data.get(DUE_KEY) if isinstance(data, dict) else None
    return float(offset) if type(offset) is float or type(offset) is int else None
