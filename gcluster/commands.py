"""Gateway commands a shard sends, as validated values that turn into Discord's payloads.

The gateway gives no useful answer to a malformed command: it ignores it, drops
a field silently, or closes the connection (4002 for an undecodable or
oversized payload), and the shard then has to reconnect. Checking every field
where the command is built puts the error at the caller's line, naming the
field, instead of in a shard's reconnect log later. The values are frozen so a
command can be built once, shared between greenlets and sent to many shards.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, TypeAlias, runtime_checkable

import ujson

from gcluster.errors import InvalidCommand, PayloadTooLarge

__all__ = [
    "MAX_PAYLOAD_SIZE",
    "Activity",
    "ActivityType",
    "CHANNEL_INFO_FIELDS",
    "Command",
    "GatewayCommand",
    "RequestChannelInfo",
    "RequestGuildMembers",
    "RequestSoundboardSounds",
    "Snowflake",
    "Status",
    "StatusName",
    "UpdatePresence",
    "UpdateVoiceState",
    "encode",
    "shard_for_guild",
]

#: The largest payload, in bytes, the gateway accepts from a client; a larger
#: one gets the connection closed with 4002.
MAX_PAYLOAD_SIZE = 4096

_MAX_SNOWFLAKE = (1 << 64) - 1
_MAX_MEMBERS_LIMIT = 100
_MAX_USER_IDS = 100
_MAX_NONCE_BYTES = 32

#: The fields Request Channel Info (op 43) may ask for, as Discord documents them.
CHANNEL_INFO_FIELDS: tuple[str, ...] = ("status", "voice_start_time")

#: What a snowflake may be given as: an int, or its decimal string as Discord
#: sends it. Commands store it as an int and serialize it as a string.
Snowflake: TypeAlias = int | str


class ActivityType(enum.IntEnum):
    """What an activity shows as: "Playing {name}", "Streaming {name}", and so on."""

    PLAYING = 0
    STREAMING = 1
    LISTENING = 2
    WATCHING = 3
    CUSTOM = 4
    COMPETING = 5


class Status(str, enum.Enum):
    """The status a presence update sets; the value is Discord's string.

    A `str` subclass (``enum.StrEnum`` is 3.11+), so a member compares equal
    to Discord's string and `str` gives the string, not ``Status.IDLE``.
    """

    def __str__(self) -> str:
        return str(self.value)

    ONLINE = "online"
    DND = "dnd"
    IDLE = "idle"
    INVISIBLE = "invisible"
    OFFLINE = "offline"


#: A `Status` given as Discord's string, e.g. ``UpdatePresence(status="idle")``.
StatusName: TypeAlias = Literal["online", "dnd", "idle", "invisible", "offline"]


@runtime_checkable
class Command(Protocol):
    """Anything a shard can send as a gateway command.

    `op` is the gateway opcode; `payload()` returns the whole message,
    ``{"op": op, "d": {...}}``, ready for `encode`. The classes in this module
    implement it, and so can an application's own classes for opcodes this
    module does not cover.
    """

    @property
    def op(self) -> int: ...

    def payload(self) -> dict[str, Any]: ...


def _snowflake(value: object, where: str) -> int:
    # bool is an int subclass; True as a guild id is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidCommand(
            f"{where} must be a snowflake (an int or a decimal string), got {value!r}"
        )
    if isinstance(value, str):
        # isdigit alone would let through non-ASCII digits such as "١٢".
        if not (value.isascii() and value.isdigit()):
            raise InvalidCommand(f"{where} must be a decimal string of digits, got {value!r}")
        # Past 20 digits it cannot fit in 64 bits, and int() of a huge string is slow
        # (and refused outright past Python's digit limit).
        if len(value) > 20:
            raise InvalidCommand(f"{where} must be a snowflake of at most 20 digits, got {value!r}")
        number = int(value)
    else:
        number = value
    if not 0 < number <= _MAX_SNOWFLAKE:
        raise InvalidCommand(f"{where} must be a snowflake between 1 and 2**64 - 1, got {value!r}")
    return number


def _snowflakes(values: object, where: str) -> tuple[int, ...]:
    # A lone id (or its string, which is iterable) is refused rather than guessed at.
    if isinstance(values, int | str | bytes) or not isinstance(values, Iterable):
        raise InvalidCommand(f"{where} must be a list or tuple of snowflakes, got {values!r}")
    return tuple(_snowflake(value, f"{where}[{index}]") for index, value in enumerate(values))


def _flag(value: object, where: str) -> None:
    if not isinstance(value, bool):
        raise InvalidCommand(f"{where} must be True or False, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Activity:
    """One activity in a presence: the "Playing ..." line under the bot's name.

    Bots may set only these four fields; Discord ignores the rest of the
    activity object for them.

    Attributes:
        name: the activity's name, e.g. the game. Required by Discord even for
            CUSTOM, where it is not shown.
        type: how it is shown (an `ActivityType`, or its int); stored as an `ActivityType`.
        url: the stream's URL; only for STREAMING, where Discord accepts Twitch
            and YouTube links.
        state: the text of a CUSTOM status, or a second line for the others.
    """

    name: str
    type: ActivityType | int = ActivityType.PLAYING
    url: str | None = None
    state: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidCommand(f"Activity.name must be a non-empty str, got {self.name!r}")
        # Callers that are not type-checked may pass anything; check what arrived.
        given: object = self.type
        if isinstance(given, bool) or not isinstance(given, int):
            raise InvalidCommand(f"Activity.type must be an ActivityType, got {given!r}")
        try:
            kind = ActivityType(given)
        except ValueError as err:
            known = ", ".join(f"{member.name} ({member.value})" for member in ActivityType)
            raise InvalidCommand(
                f"Activity.type must be one of {known}; got {self.type!r}"
            ) from err
        object.__setattr__(self, "type", kind)
        if self.url is not None:
            # Discord drops the URL of any other type without a word; say so here.
            if kind is not ActivityType.STREAMING:
                raise InvalidCommand(
                    f"Activity.url is only used with ActivityType.STREAMING, not {kind.name}"
                )
            if not isinstance(self.url, str) or not self.url:
                raise InvalidCommand(f"Activity.url must be a non-empty str, got {self.url!r}")
        if self.state is not None and not isinstance(self.state, str):
            raise InvalidCommand(f"Activity.state must be a str or None, got {self.state!r}")

    def to_dict(self) -> dict[str, Any]:
        """The activity object as Discord expects it; unset fields are left out."""
        data: dict[str, Any] = {"name": self.name, "type": int(self.type)}
        if self.url is not None:
            data["url"] = self.url
        if self.state is not None:
            data["state"] = self.state
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdatePresence:
    """Op 3: set the bot's status and activities as shown on this shard's guilds.

    The same object, without the op, is IDENTIFY's ``presence``: pass `data()`.

    Attributes:
        activities: what the bot is doing; a list is stored as a tuple.
        status: a `Status` or its string (`StatusName`); stored as a `Status`.
        afk: whether the bot is away.
        since: unix time in milliseconds the bot went idle, or None if it is not idle.
    """

    op: ClassVar[int] = 3

    activities: Iterable[Activity] = ()
    status: Status | StatusName = Status.ONLINE
    afk: bool = False
    since: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.activities, Activity | str) or not isinstance(self.activities, Iterable):
            raise InvalidCommand(
                f"UpdatePresence.activities must be a list or tuple of Activity, "
                f"got {self.activities!r}"
            )
        activities = tuple(self.activities)
        for index, activity in enumerate(activities):
            if not isinstance(activity, Activity):
                raise InvalidCommand(
                    f"UpdatePresence.activities[{index}] must be an Activity, got {activity!r}"
                )
        object.__setattr__(self, "activities", activities)
        try:
            status = Status(self.status)
        except ValueError as err:
            known = ", ".join(repr(member.value) for member in Status)
            raise InvalidCommand(
                f"UpdatePresence.status must be one of {known}; got {self.status!r}"
            ) from err
        object.__setattr__(self, "status", status)
        _flag(self.afk, "UpdatePresence.afk")
        if self.since is not None and (
            isinstance(self.since, bool) or not isinstance(self.since, int) or self.since < 0
        ):
            raise InvalidCommand(
                f"UpdatePresence.since must be unix time in milliseconds (an int >= 0) or None, "
                f"got {self.since!r}"
            )

    def data(self) -> dict[str, Any]:
        """The ``d`` of the payload: Discord requires all four fields, since as null if unset."""
        return {
            "since": self.since,
            "activities": [activity.to_dict() for activity in self.activities],
            "status": Status(self.status).value,
            "afk": self.afk,
        }

    def payload(self) -> dict[str, Any]:
        """The whole gateway message."""
        return {"op": self.op, "d": self.data()}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestGuildMembers:
    """Op 8: ask for members of a guild; they arrive as GUILD_MEMBERS_CHUNK dispatches.

    Give exactly one of `query` (members whose username starts with it) or
    `user_ids` (those members). An empty query with limit 0 asks for every
    member and needs the GUILD_MEMBERS intent; presences needs
    GUILD_PRESENCES. Discord rate-limits this opcode and answers an excess
    request with a RATE_LIMITED dispatch instead of chunks.

    Attributes:
        guild_id: the guild (stored as an int).
        query: username prefix, or "" for everyone.
        limit: at most this many members, 0..100; only with a query.
        user_ids: up to 100 user ids (stored as a tuple of ints).
        presences: also send the members' presences.
        nonce: echoed back in every chunk of the answer; at most 32 bytes of UTF-8.
    """

    op: ClassVar[int] = 8

    guild_id: Snowflake
    query: str | None = None
    limit: int = 0
    user_ids: Iterable[Snowflake] | None = None
    presences: bool = False
    nonce: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "guild_id", _snowflake(self.guild_id, "RequestGuildMembers.guild_id")
        )
        if (self.query is None) == (self.user_ids is None):
            raise InvalidCommand(
                "RequestGuildMembers needs exactly one of query or user_ids, "
                + ("got neither" if self.query is None else "got both")
            )
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise InvalidCommand(f"RequestGuildMembers.limit must be an int, got {self.limit!r}")
        if self.query is not None:
            if not isinstance(self.query, str):
                raise InvalidCommand(f"RequestGuildMembers.query must be a str, got {self.query!r}")
            if not 0 <= self.limit <= _MAX_MEMBERS_LIMIT:
                raise InvalidCommand(
                    f"RequestGuildMembers.limit must be between 0 and {_MAX_MEMBERS_LIMIT}, "
                    f"got {self.limit}"
                )
        else:
            # Discord reads limit only with a query; a limit here would be silently ignored.
            if self.limit != 0:
                raise InvalidCommand(
                    f"RequestGuildMembers.limit applies only to a query; with user_ids it "
                    f"must stay 0, got {self.limit}"
                )
            user_ids = _snowflakes(self.user_ids, "RequestGuildMembers.user_ids")
            if not user_ids:
                raise InvalidCommand("RequestGuildMembers.user_ids must name at least one user")
            if len(user_ids) > _MAX_USER_IDS:
                raise InvalidCommand(
                    f"RequestGuildMembers.user_ids may hold at most {_MAX_USER_IDS} ids, "
                    f"got {len(user_ids)}"
                )
            object.__setattr__(self, "user_ids", user_ids)
        _flag(self.presences, "RequestGuildMembers.presences")
        if self.nonce is not None:
            if not isinstance(self.nonce, str):
                raise InvalidCommand(
                    f"RequestGuildMembers.nonce must be a str or None, got {self.nonce!r}"
                )
            try:
                size = len(self.nonce.encode("utf-8"))
            except UnicodeEncodeError as err:
                raise InvalidCommand(
                    f"RequestGuildMembers.nonce must be valid text, got {self.nonce!r}"
                ) from err
            # Discord drops a longer nonce silently, and the chunks come back without one.
            if size > _MAX_NONCE_BYTES:
                raise InvalidCommand(
                    f"RequestGuildMembers.nonce may be at most {_MAX_NONCE_BYTES} bytes "
                    f"of UTF-8, got {size}"
                )

    def data(self) -> dict[str, Any]:
        """The ``d`` of the payload: query and limit, or user_ids; nonce only when set."""
        data: dict[str, Any] = {"guild_id": str(self.guild_id)}
        if self.user_ids is None:
            data["query"] = self.query
            data["limit"] = self.limit
        else:
            data["user_ids"] = [str(user_id) for user_id in self.user_ids]
        data["presences"] = self.presences
        if self.nonce is not None:
            data["nonce"] = self.nonce
        return data

    def payload(self) -> dict[str, Any]:
        """The whole gateway message."""
        return {"op": self.op, "d": self.data()}


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateVoiceState:
    """Op 4: join, move between or leave (channel_id None) a guild's voice channels.

    Attributes:
        guild_id: the guild (stored as an int).
        channel_id: the voice channel to join, or None to disconnect.
        self_mute: join muted.
        self_deaf: join deafened.
    """

    op: ClassVar[int] = 4

    guild_id: Snowflake
    channel_id: Snowflake | None = None
    self_mute: bool = False
    self_deaf: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "guild_id", _snowflake(self.guild_id, "UpdateVoiceState.guild_id"))
        if self.channel_id is not None:
            object.__setattr__(
                self, "channel_id", _snowflake(self.channel_id, "UpdateVoiceState.channel_id")
            )
        _flag(self.self_mute, "UpdateVoiceState.self_mute")
        _flag(self.self_deaf, "UpdateVoiceState.self_deaf")

    def data(self) -> dict[str, Any]:
        """The ``d`` of the payload; channel_id is null to disconnect."""
        return {
            "guild_id": str(self.guild_id),
            "channel_id": None if self.channel_id is None else str(self.channel_id),
            "self_mute": self.self_mute,
            "self_deaf": self.self_deaf,
        }

    def payload(self) -> dict[str, Any]:
        """The whole gateway message."""
        return {"op": self.op, "d": self.data()}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSoundboardSounds:
    """Op 31: ask for guilds' soundboard sounds; each answers with a SOUNDBOARD_SOUNDS dispatch.

    Attributes:
        guild_ids: at least one guild (stored as a tuple of ints).
    """

    op: ClassVar[int] = 31

    guild_ids: Iterable[Snowflake]

    def __post_init__(self) -> None:
        guild_ids = _snowflakes(self.guild_ids, "RequestSoundboardSounds.guild_ids")
        if not guild_ids:
            raise InvalidCommand("RequestSoundboardSounds.guild_ids must name at least one guild")
        object.__setattr__(self, "guild_ids", guild_ids)

    def data(self) -> dict[str, Any]:
        """The ``d`` of the payload."""
        return {"guild_ids": [str(guild_id) for guild_id in self.guild_ids]}

    def payload(self) -> dict[str, Any]:
        """The whole gateway message."""
        return {"op": self.op, "d": self.data()}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestChannelInfo:
    """Op 43: ask for a guild's ephemeral channel data; the answer is a CHANNEL_INFO dispatch.

    The data is what the channel object does not carry: a voice channel's
    status text and when its voice session started. Changes arrive
    unasked as VOICE_CHANNEL_STATUS_UPDATE and VOICE_CHANNEL_START_TIME_UPDATE.

    Attributes:
        guild_id: the guild (stored as an int).
        fields: which fields to ask for, from `CHANNEL_INFO_FIELDS` (both by
            default); stored as a tuple of str.
    """

    op: ClassVar[int] = 43

    guild_id: Snowflake
    fields: Iterable[str] = CHANNEL_INFO_FIELDS

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "guild_id", _snowflake(self.guild_id, "RequestChannelInfo.guild_id")
        )
        given: object = self.fields
        if isinstance(given, str | bytes) or not isinstance(given, Iterable):
            raise InvalidCommand(
                f"RequestChannelInfo.fields must be a list or tuple of field names, got {given!r}"
            )
        fields = tuple(given)
        if not fields:
            raise InvalidCommand("RequestChannelInfo.fields must name at least one field")
        known = ", ".join(repr(name) for name in CHANNEL_INFO_FIELDS)
        for name in fields:
            # Discord documents no answer to an unknown field; refuse it here.
            if name not in CHANNEL_INFO_FIELDS:
                raise InvalidCommand(
                    f"RequestChannelInfo.fields may hold only {known}; got {name!r}"
                )
        if len(set(fields)) != len(fields):
            raise InvalidCommand(f"RequestChannelInfo.fields names a field twice: {fields!r}")
        object.__setattr__(self, "fields", fields)

    def data(self) -> dict[str, Any]:
        """The ``d`` of the payload."""
        return {"guild_id": str(self.guild_id), "fields": list(self.fields)}

    def payload(self) -> dict[str, Any]:
        """The whole gateway message."""
        return {"op": self.op, "d": self.data()}


#: The commands this module defines, for signatures that take any of them.
GatewayCommand: TypeAlias = (
    UpdatePresence
    | RequestGuildMembers
    | UpdateVoiceState
    | RequestSoundboardSounds
    | RequestChannelInfo
)


def encode(command: Command | Mapping[str, Any]) -> bytes:
    """Serialize a command, or a raw ``{"op": ..., "d": ...}`` payload, for the gateway.

    The result is compact UTF-8 JSON, to be sent as a text frame. Non-ASCII
    text is kept as UTF-8 rather than escaped, which keeps payloads small.

    Args:
        command: a `Command` (its `payload()` is encoded), or a mapping with an
            int ``op`` and a ``d``, for opcodes this module does not model.

    Returns:
        The encoded payload, at most `MAX_PAYLOAD_SIZE` bytes.

    Raises:
        PayloadTooLarge: the payload is over 4096 bytes; the gateway would
            close the connection with 4002.
        InvalidCommand: the payload has no int ``op`` or no ``d``, or holds a
            value JSON cannot represent.
    """
    payload = command if isinstance(command, Mapping) else command.payload()
    if not isinstance(payload, Mapping):
        raise InvalidCommand(f"a payload must be a mapping with op and d, got {payload!r}")
    op = payload.get("op")
    if isinstance(op, bool) or not isinstance(op, int):
        raise InvalidCommand(f"a payload's op must be an int, got {op!r}")
    if "d" not in payload:
        raise InvalidCommand(f"a payload needs a d (null if the opcode takes none), op {op}")
    try:
        # Escaping "/" as "\/" is legal JSON but only costs bytes against the limit.
        text: str = ujson.dumps(dict(payload), ensure_ascii=False, escape_forward_slashes=False)
        data = text.encode("utf-8")
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidCommand(f"payload for op {op} cannot be encoded as JSON: {exc}") from exc
    if len(data) > MAX_PAYLOAD_SIZE:
        raise PayloadTooLarge(len(data), MAX_PAYLOAD_SIZE)
    return data


def shard_for_guild(guild_id: Snowflake, total: int) -> int:
    """The id of the shard that carries a guild's events and takes its commands.

    Discord assigns guild to shard by ``(guild_id >> 22) % total``: the
    snowflake's timestamp bits, so guilds spread evenly over shards. A command
    about a guild (voice state, member requests) must go to that shard.

    Args:
        guild_id: the guild, as an int or decimal string.
        total: the total number of shards the bot runs, across all processes.

    Raises:
        InvalidCommand: (a `ValueError`) guild_id is not a snowflake, or total
            is not an int of at least 1.
    """
    number = _snowflake(guild_id, "guild_id")
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise InvalidCommand(f"total must be an int of at least 1, got {total!r}")
    return (number >> 22) % total
