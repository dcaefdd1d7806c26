"""Gateway commands: every field rule accepted and refused, exact payloads, the size limit."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args

import pytest
import ujson

from gcluster.commands import (
    MAX_PAYLOAD_SIZE,
    Activity,
    ActivityType,
    Command,
    RequestChannelInfo,
    RequestGuildMembers,
    RequestSoundboardSounds,
    Status,
    StatusName,
    UpdatePresence,
    UpdateVoiceState,
    encode,
    shard_for_guild,
)
from gcluster.errors import GClusterError, InvalidCommand, PayloadTooLarge

GUILD = 81384788765712384
CHANNEL = 613425648685547541
USER = 80351110224678912

# Values passed where a snowflake belongs that must be refused.
BAD_SNOWFLAKES: list[Any] = [
    0,
    -1,
    1 << 64,
    True,
    1.0,
    None,
    "",
    "abc",
    "-5",
    " 5",
    "1e3",
    "18446744073709551616",  # 2**64
    pytest.param("1" * 5000, id="5000-digits"),  # more digits than int() converts by default
    "١٢",  # Arabic-Indic digits: str.isdigit() alone would accept them
    b"5",
]


def refused(match: str) -> Any:
    """Expect InvalidCommand with `match` in its message (the field's name)."""
    return pytest.raises(InvalidCommand, match=match)


# Activity


def test_activity_defaults_to_playing_and_leaves_unset_fields_out() -> None:
    activity = Activity(name="chess")
    assert activity.type is ActivityType.PLAYING
    assert activity.to_dict() == {"name": "chess", "type": 0}


def test_activity_type_values_are_discords() -> None:
    assert [(kind.name, kind.value) for kind in ActivityType] == [
        ("PLAYING", 0),
        ("STREAMING", 1),
        ("LISTENING", 2),
        ("WATCHING", 3),
        ("CUSTOM", 4),
        ("COMPETING", 5),
    ]


def test_activity_streaming_with_url() -> None:
    activity = Activity(
        name="speedrun", type=ActivityType.STREAMING, url="https://twitch.tv/someone"
    )
    assert activity.to_dict() == {
        "name": "speedrun",
        "type": 1,
        "url": "https://twitch.tv/someone",
    }


def test_activity_streaming_without_url_is_allowed() -> None:
    assert Activity(name="x", type=ActivityType.STREAMING).to_dict() == {"name": "x", "type": 1}


def test_activity_custom_status_uses_state() -> None:
    activity = Activity(name="Custom Status", type=ActivityType.CUSTOM, state="on call")
    assert activity.to_dict() == {"name": "Custom Status", "type": 4, "state": "on call"}


def test_activity_type_accepts_the_int_and_stores_the_enum() -> None:
    activity = Activity(name="x", type=3)  # type: ignore[arg-type]
    assert activity.type is ActivityType.WATCHING
    assert activity == Activity(name="x", type=ActivityType.WATCHING)


@pytest.mark.parametrize("name", ["", None, 5, b"chess"])
def test_activity_name_refused(name: Any) -> None:
    with refused("Activity.name"):
        Activity(name=name)


@pytest.mark.parametrize("kind", [6, -1, True, "0", None, 1.0])
def test_activity_type_refused(kind: Any) -> None:
    with refused("Activity.type"):
        Activity(name="x", type=kind)


@pytest.mark.parametrize(
    "kind",
    [
        ActivityType.PLAYING,
        ActivityType.LISTENING,
        ActivityType.WATCHING,
        ActivityType.CUSTOM,
        ActivityType.COMPETING,
    ],
)
def test_activity_url_refused_unless_streaming(kind: ActivityType) -> None:
    with refused("Activity.url is only used with ActivityType.STREAMING"):
        Activity(name="x", type=kind, url="https://twitch.tv/someone")


@pytest.mark.parametrize("url", ["", 5])
def test_activity_url_must_be_a_non_empty_str(url: Any) -> None:
    with refused("Activity.url"):
        Activity(name="x", type=ActivityType.STREAMING, url=url)


def test_activity_state_must_be_a_str() -> None:
    with refused("Activity.state"):
        Activity(name="x", state=5)  # type: ignore[arg-type]


# UpdatePresence


def test_status_values_are_discords() -> None:
    assert [status.value for status in Status] == ["online", "dnd", "idle", "invisible", "offline"]
    # The strings UpdatePresence's type accepts are the same ones.
    assert list(get_args(StatusName)) == [status.value for status in Status]


def test_a_status_given_as_its_string_is_stored_as_a_status() -> None:
    presence = UpdatePresence(status="idle")
    assert presence.status is Status.IDLE
    assert presence.data()["status"] == "idle"


def test_update_presence_defaults() -> None:
    assert UpdatePresence().payload() == {
        "op": 3,
        "d": {"since": None, "activities": [], "status": "online", "afk": False},
    }


def test_update_presence_full_payload() -> None:
    command = UpdatePresence(
        activities=[
            Activity(name="the logs", type=ActivityType.WATCHING),
            Activity(name="Custom Status", type=ActivityType.CUSTOM, state="busy"),
        ],
        status=Status.IDLE,
        afk=True,
        since=1_700_000_000_000,
    )
    assert UpdatePresence.op == 3
    assert command.payload() == {
        "op": 3,
        "d": {
            "since": 1_700_000_000_000,
            "activities": [
                {"name": "the logs", "type": 3},
                {"name": "Custom Status", "type": 4, "state": "busy"},
            ],
            "status": "idle",
            "afk": True,
        },
    }
    assert command.data() == command.payload()["d"]


def test_update_presence_stores_activities_as_a_tuple() -> None:
    activity = Activity(name="x")
    command = UpdatePresence(activities=[activity])
    assert command.activities == (activity,)
    assert command == UpdatePresence(activities=(activity,))
    assert hash(command) == hash(UpdatePresence(activities=(activity,)))


@pytest.mark.parametrize("status", list(Status))
def test_update_presence_accepts_every_status(status: Status) -> None:
    assert UpdatePresence(status=status).payload()["d"]["status"] == status.value


def test_update_presence_accepts_the_status_string() -> None:
    command = UpdatePresence(status="dnd")  # type: ignore[arg-type]
    assert command.status is Status.DND


@pytest.mark.parametrize("status", ["ONLINE", "away", "", None, 1])
def test_update_presence_status_refused(status: Any) -> None:
    with refused("UpdatePresence.status"):
        UpdatePresence(status=status)


def test_a_refused_status_keeps_the_enum_error_as_its_cause() -> None:
    with pytest.raises(InvalidCommand) as caught:
        UpdatePresence(status="away")  # type: ignore[arg-type]
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "activities", [Activity(name="x"), "playing", None, 5, [Activity(name="x"), "x"], [{}]]
)
def test_update_presence_activities_refused(activities: Any) -> None:
    with refused(r"UpdatePresence\.activities"):
        UpdatePresence(activities=activities)


@pytest.mark.parametrize("afk", [0, 1, None, "yes"])
def test_update_presence_afk_must_be_a_bool(afk: Any) -> None:
    with refused("UpdatePresence.afk"):
        UpdatePresence(afk=afk)


@pytest.mark.parametrize("since", [0, 1_700_000_000_000])
def test_update_presence_since_accepted(since: int) -> None:
    assert UpdatePresence(since=since).payload()["d"]["since"] == since


@pytest.mark.parametrize("since", [-1, 1.5, True, "1700000000000"])
def test_update_presence_since_refused(since: Any) -> None:
    with refused("UpdatePresence.since"):
        UpdatePresence(since=since)


# RequestGuildMembers


def test_request_guild_members_everyone() -> None:
    command = RequestGuildMembers(guild_id=GUILD, query="")
    assert RequestGuildMembers.op == 8
    assert command.payload() == {
        "op": 8,
        "d": {"guild_id": str(GUILD), "query": "", "limit": 0, "presences": False},
    }


def test_request_guild_members_query_with_everything() -> None:
    command = RequestGuildMembers(
        guild_id=str(GUILD), query="ab", limit=100, presences=True, nonce="n" * 32
    )
    assert command.guild_id == GUILD
    assert command.payload() == {
        "op": 8,
        "d": {
            "guild_id": str(GUILD),
            "query": "ab",
            "limit": 100,
            "presences": True,
            "nonce": "n" * 32,
        },
    }


def test_request_guild_members_by_user_ids() -> None:
    command = RequestGuildMembers(guild_id=GUILD, user_ids=[USER, "2"], nonce="abc")
    assert command.user_ids == (USER, 2)
    assert command.payload() == {
        "op": 8,
        "d": {
            "guild_id": str(GUILD),
            "user_ids": [str(USER), "2"],
            "presences": False,
            "nonce": "abc",
        },
    }


def test_request_guild_members_equal_whether_built_from_int_or_str() -> None:
    from_int = RequestGuildMembers(guild_id=GUILD, user_ids=(USER,))
    from_str = RequestGuildMembers(guild_id=str(GUILD), user_ids=[str(USER)])
    assert from_int == from_str
    assert hash(from_int) == hash(from_str)


@pytest.mark.parametrize("guild_id", BAD_SNOWFLAKES)
def test_request_guild_members_guild_id_refused(guild_id: Any) -> None:
    with refused("RequestGuildMembers.guild_id"):
        RequestGuildMembers(guild_id=guild_id, query="")


def test_request_guild_members_needs_query_or_user_ids() -> None:
    with refused("exactly one of query or user_ids, got neither"):
        RequestGuildMembers(guild_id=GUILD)


def test_request_guild_members_refuses_both_query_and_user_ids() -> None:
    with refused("exactly one of query or user_ids, got both"):
        RequestGuildMembers(guild_id=GUILD, query="a", user_ids=[USER])


@pytest.mark.parametrize("query", [5, b"a"])
def test_request_guild_members_query_must_be_a_str(query: Any) -> None:
    with refused("RequestGuildMembers.query"):
        RequestGuildMembers(guild_id=GUILD, query=query)


@pytest.mark.parametrize("limit", [0, 1, 50, 100])
def test_request_guild_members_limit_accepted(limit: int) -> None:
    command = RequestGuildMembers(guild_id=GUILD, query="a", limit=limit)
    assert command.payload()["d"]["limit"] == limit


@pytest.mark.parametrize("limit", [-1, 101, 1000])
def test_request_guild_members_limit_out_of_range(limit: int) -> None:
    with refused("RequestGuildMembers.limit must be between 0 and 100"):
        RequestGuildMembers(guild_id=GUILD, query="a", limit=limit)


@pytest.mark.parametrize("limit", [True, 1.0, "10", None])
def test_request_guild_members_limit_must_be_an_int(limit: Any) -> None:
    with refused("RequestGuildMembers.limit must be an int"):
        RequestGuildMembers(guild_id=GUILD, query="a", limit=limit)


def test_request_guild_members_limit_refused_with_user_ids() -> None:
    with refused("RequestGuildMembers.limit applies only to a query"):
        RequestGuildMembers(guild_id=GUILD, user_ids=[USER], limit=1)


def test_request_guild_members_hundred_user_ids_accepted() -> None:
    command = RequestGuildMembers(guild_id=GUILD, user_ids=range(1, 101))
    assert len(command.payload()["d"]["user_ids"]) == 100


def test_request_guild_members_more_than_hundred_user_ids_refused() -> None:
    with refused("at most 100 ids, got 101"):
        RequestGuildMembers(guild_id=GUILD, user_ids=range(1, 102))


def test_request_guild_members_empty_user_ids_refused() -> None:
    with refused("RequestGuildMembers.user_ids must name at least one user"):
        RequestGuildMembers(guild_id=GUILD, user_ids=[])


@pytest.mark.parametrize("user_ids", [USER, str(USER), b"1", 5.0])
def test_request_guild_members_single_id_refused(user_ids: Any) -> None:
    with refused("RequestGuildMembers.user_ids must be a list or tuple of snowflakes"):
        RequestGuildMembers(guild_id=GUILD, user_ids=user_ids)


@pytest.mark.parametrize("bad", BAD_SNOWFLAKES)
def test_request_guild_members_bad_user_id_named_by_index(bad: Any) -> None:
    with refused(r"RequestGuildMembers\.user_ids\[1\]"):
        RequestGuildMembers(guild_id=GUILD, user_ids=[USER, bad])


@pytest.mark.parametrize("presences", [0, 1, None, "true"])
def test_request_guild_members_presences_must_be_a_bool(presences: Any) -> None:
    with refused("RequestGuildMembers.presences"):
        RequestGuildMembers(guild_id=GUILD, query="", presences=presences)


@pytest.mark.parametrize("nonce", ["", "x" * 32, "é" * 16])
def test_request_guild_members_nonce_up_to_32_bytes(nonce: str) -> None:
    command = RequestGuildMembers(guild_id=GUILD, query="", nonce=nonce)
    assert command.payload()["d"]["nonce"] == nonce


@pytest.mark.parametrize("nonce", ["x" * 33, "é" * 17])
def test_request_guild_members_nonce_over_32_bytes(nonce: str) -> None:
    # "é" * 17 is only 17 characters but 34 bytes: the limit counts bytes.
    with refused("RequestGuildMembers.nonce may be at most 32 bytes"):
        RequestGuildMembers(guild_id=GUILD, query="", nonce=nonce)


@pytest.mark.parametrize("nonce", [5, b"abc", "\ud800"])
def test_request_guild_members_nonce_must_be_text(nonce: Any) -> None:
    with refused("RequestGuildMembers.nonce"):
        RequestGuildMembers(guild_id=GUILD, query="", nonce=nonce)


# UpdateVoiceState


def test_update_voice_state_join() -> None:
    command = UpdateVoiceState(guild_id=GUILD, channel_id=str(CHANNEL), self_deaf=True)
    assert UpdateVoiceState.op == 4
    assert command.channel_id == CHANNEL
    assert command.payload() == {
        "op": 4,
        "d": {
            "guild_id": str(GUILD),
            "channel_id": str(CHANNEL),
            "self_mute": False,
            "self_deaf": True,
        },
    }


def test_update_voice_state_leave_sends_null_channel() -> None:
    command = UpdateVoiceState(guild_id=str(GUILD), self_mute=True)
    assert command.payload() == {
        "op": 4,
        "d": {"guild_id": str(GUILD), "channel_id": None, "self_mute": True, "self_deaf": False},
    }


@pytest.mark.parametrize("guild_id", BAD_SNOWFLAKES)
def test_update_voice_state_guild_id_refused(guild_id: Any) -> None:
    with refused("UpdateVoiceState.guild_id"):
        UpdateVoiceState(guild_id=guild_id)


@pytest.mark.parametrize("channel_id", [bad for bad in BAD_SNOWFLAKES if bad is not None])
def test_update_voice_state_channel_id_refused(channel_id: Any) -> None:
    with refused("UpdateVoiceState.channel_id"):
        UpdateVoiceState(guild_id=GUILD, channel_id=channel_id)


@pytest.mark.parametrize("field", ["self_mute", "self_deaf"])
@pytest.mark.parametrize("value", [0, 1, None, "no"])
def test_update_voice_state_flags_must_be_bools(field: str, value: Any) -> None:
    with refused(f"UpdateVoiceState.{field}"):
        UpdateVoiceState(guild_id=GUILD, **{field: value})


# RequestSoundboardSounds


def test_request_soundboard_sounds_payload() -> None:
    command = RequestSoundboardSounds(guild_ids=[GUILD, "613425648685547541"])
    assert RequestSoundboardSounds.op == 31
    assert command.guild_ids == (GUILD, 613425648685547541)
    assert command.payload() == {
        "op": 31,
        "d": {"guild_ids": [str(GUILD), "613425648685547541"]},
    }


def test_request_soundboard_sounds_needs_a_guild() -> None:
    with refused("RequestSoundboardSounds.guild_ids must name at least one guild"):
        RequestSoundboardSounds(guild_ids=[])


@pytest.mark.parametrize("guild_ids", [GUILD, str(GUILD), None])
def test_request_soundboard_sounds_single_id_refused(guild_ids: Any) -> None:
    with refused("RequestSoundboardSounds.guild_ids must be a list or tuple"):
        RequestSoundboardSounds(guild_ids=guild_ids)


@pytest.mark.parametrize("bad", BAD_SNOWFLAKES)
def test_request_soundboard_sounds_bad_id_named_by_index(bad: Any) -> None:
    with refused(r"RequestSoundboardSounds\.guild_ids\[0\]"):
        RequestSoundboardSounds(guild_ids=[bad])


# RequestChannelInfo


def test_request_channel_info_asks_for_both_fields_by_default() -> None:
    command = RequestChannelInfo(guild_id=str(GUILD))
    assert RequestChannelInfo.op == 43
    assert command.guild_id == GUILD and command.fields == ("status", "voice_start_time")
    assert ujson.loads(encode(command)) == {
        "op": 43,
        "d": {"guild_id": str(GUILD), "fields": ["status", "voice_start_time"]},
    }
    assert RequestChannelInfo(guild_id=GUILD, fields=["status"]).data()["fields"] == ["status"]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ([], "must name at least one field"),
        ("status", "must be a list or tuple of field names"),
        (None, "must be a list or tuple of field names"),
        (["status", "topic"], "may hold only 'status', 'voice_start_time'; got 'topic'"),
        (["status", "status"], "names a field twice"),
        ([1], "may hold only"),
    ],
)
def test_request_channel_info_refuses_fields_discord_does_not_document(
    fields: Any, match: str
) -> None:
    with refused(match):
        RequestChannelInfo(guild_id=GUILD, fields=fields)


@pytest.mark.parametrize("bad", BAD_SNOWFLAKES)
def test_request_channel_info_needs_a_guild_snowflake(bad: Any) -> None:
    with refused("RequestChannelInfo.guild_id"):
        RequestChannelInfo(guild_id=bad)


# Values and the Command protocol


@pytest.mark.parametrize(
    "command",
    [
        Activity(name="x"),
        UpdatePresence(),
        RequestGuildMembers(guild_id=GUILD, query=""),
        UpdateVoiceState(guild_id=GUILD),
        RequestSoundboardSounds(guild_ids=[GUILD]),
        RequestChannelInfo(guild_id=GUILD),
    ],
    ids=lambda command: type(command).__name__,
)
def test_commands_are_frozen_slotted_and_keyword_built(command: Any) -> None:
    cls = type(command)
    field = dataclasses.fields(command)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(command, field, None)
    assert not hasattr(command, "__dict__")
    with pytest.raises(TypeError):
        cls(getattr(command, field))


def test_invalid_command_is_a_value_error_and_a_library_error() -> None:
    with pytest.raises(ValueError):
        UpdatePresence(since=-1)
    with pytest.raises(GClusterError):
        UpdatePresence(since=-1)


@pytest.mark.parametrize(
    "command",
    [
        UpdatePresence(),
        RequestGuildMembers(guild_id=GUILD, query=""),
        UpdateVoiceState(guild_id=GUILD),
        RequestSoundboardSounds(guild_ids=[GUILD]),
    ],
    ids=lambda command: type(command).__name__,
)
def test_builtin_commands_satisfy_the_protocol(command: Command) -> None:
    assert isinstance(command, Command)
    payload = command.payload()
    assert payload["op"] == command.op
    assert set(payload) == {"op", "d"}


def test_a_dict_is_not_a_command() -> None:
    assert not isinstance({"op": 1, "d": None}, Command)


# encode


def test_encode_is_compact_utf8_json() -> None:
    command = UpdatePresence(
        activities=[Activity(name="café", type=ActivityType.STREAMING, url="https://x.tv/a")]
    )
    data = encode(command)
    assert data == (
        b'{"op":3,"d":{"since":null,"activities":[{"name":"caf\xc3\xa9","type":1,'
        b'"url":"https://x.tv/a"}],"status":"online","afk":false}}'
    )
    assert ujson.loads(data) == command.payload()


def test_encode_raw_payload() -> None:
    assert encode({"op": 1, "d": 251}) == b'{"op":1,"d":251}'
    assert encode({"op": 1, "d": None}) == b'{"op":1,"d":null}'


def test_encode_an_application_defined_command() -> None:
    class Heartbeat:
        op = 1

        def payload(self) -> dict[str, Any]:
            return {"op": self.op, "d": 42}

    assert encode(Heartbeat()) == b'{"op":1,"d":42}'


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"d": None}, "op must be an int"),
        ({"op": "1", "d": None}, "op must be an int"),
        ({"op": True, "d": None}, "op must be an int"),
        ({"op": 1}, "needs a d"),
        ({"op": 1, "d": object()}, "cannot be encoded as JSON"),
        ({"op": 1, "d": b"bytes"}, "cannot be encoded as JSON"),
        ({"op": 1, "d": "\ud800"}, "cannot be encoded as JSON"),
    ],
)
def test_encode_refuses_malformed_raw_payloads(payload: dict[str, Any], match: str) -> None:
    with refused(match):
        encode(payload)


def test_encode_refuses_a_command_whose_payload_is_not_a_mapping() -> None:
    class Broken:
        op = 1

        def payload(self) -> Any:
            return [1, None]

    with refused("must be a mapping"):
        encode(Broken())


def _soundboard_request_of_size(size: int) -> RequestSoundboardSounds:
    """A real RequestSoundboardSounds whose encoding is exactly `size` bytes.

    190 ids cost their quotes and commas plus their digits; the digits are
    spread so that some ids are one digit longer than the rest.
    """
    count = 190
    fixed = len(b'{"op":31,"d":{"guild_ids":[]}}') + 2 * count + (count - 1)
    digits, longer = divmod(size - fixed, count)
    ids = [10**digits] * longer + [10 ** (digits - 1)] * (count - longer)
    return RequestSoundboardSounds(guild_ids=ids)


def test_encode_accepts_exactly_4096_bytes() -> None:
    command = _soundboard_request_of_size(4096)
    data = encode(command)
    assert len(data) == MAX_PAYLOAD_SIZE == 4096
    assert ujson.loads(data) == command.payload()


def test_encode_refuses_4097_bytes() -> None:
    command = _soundboard_request_of_size(4097)
    with pytest.raises(PayloadTooLarge) as caught:
        encode(command)
    assert caught.value.size == 4097
    assert caught.value.limit == 4096
    assert isinstance(caught.value, InvalidCommand)


def test_the_limit_counts_bytes_not_characters() -> None:
    # 2000 "é" is 2000 characters but 4000 bytes of UTF-8.
    envelope = len(encode(UpdatePresence(activities=[Activity(name="x")]))) - 1
    fits = UpdatePresence(activities=[Activity(name="é" * ((4096 - envelope) // 2))])
    assert len(encode(fits)) <= 4096
    too_big = UpdatePresence(activities=[Activity(name="é" * ((4096 - envelope) // 2 + 1))])
    as_text = ujson.dumps(too_big.payload(), ensure_ascii=False, escape_forward_slashes=False)
    assert len(as_text) < 4096
    with pytest.raises(PayloadTooLarge):
        encode(too_big)


def test_encode_raw_payload_at_the_boundary() -> None:
    envelope = len(b'{"op":1,"d":""}')
    assert len(encode({"op": 1, "d": "x" * (4096 - envelope)})) == 4096
    with pytest.raises(PayloadTooLarge) as caught:
        encode({"op": 1, "d": "x" * (4097 - envelope)})
    assert caught.value.size == 4097


def test_encode_does_not_escape_slashes() -> None:
    # "\/" is legal JSON but would spend bytes of the 4096 for nothing.
    assert b"\\/" not in encode({"op": 1, "d": "https://twitch.tv/a"})


# shard_for_guild


@pytest.mark.parametrize(
    ("guild_id", "total", "shard"),
    [
        # (5 << 22) | anything -> timestamp part 5.
        ((5 << 22) | 12345, 3, 2),
        ((5 << 22) | 12345, 5, 0),
        ((5 << 22) | 12345, 1, 0),
        (1, 7, 0),  # below 1 << 22: timestamp part 0
        # 81384788765712384 >> 22 == 19403645698; 19403645698 % 16 == 2.
        (81384788765712384, 16, 2),
        ("81384788765712384", 16, 2),
        (81384788765712384, 1, 0),
        ((1 << 64) - 1, 1 << 42, (1 << 42) - 1),
    ],
)
def test_shard_for_guild(guild_id: int | str, total: int, shard: int) -> None:
    assert shard_for_guild(guild_id, total) == shard


@pytest.mark.parametrize("guild_id", BAD_SNOWFLAKES)
def test_shard_for_guild_refuses_bad_guild_ids(guild_id: Any) -> None:
    with refused("guild_id"):
        shard_for_guild(guild_id, 1)


@pytest.mark.parametrize("total", [0, -1, True, 1.0, "2", None])
def test_shard_for_guild_refuses_bad_totals(total: Any) -> None:
    with refused("total must be an int of at least 1"):
        shard_for_guild(GUILD, total)
