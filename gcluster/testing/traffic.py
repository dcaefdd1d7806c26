"""Varied dispatches for benchmarks: Discord-like bodies that compress like Discord's.

`payloads` builds correct, readable bodies from a handful of fixtures, which
is what tests want; but a stream of them repeats itself so much that zlib
shrinks it twentyfold, and a benchmark over it would flatter decompression
and understate bytes on the wire. A big bot's shard sees thousands of
guilds, tens of thousands of authors and free text, so here every message
draws its guild, channel, author, mentions and words from large per-shard
pools: the stream keeps Discord's shape and key order, and zlib-stream gets
about the 4-5x ratio it gets on the real gateway.

A `VariedStream` is deterministic: two built with the same shard, shard
count and seed give the same bodies in the same order, so a benchmark can
rebuild, in its own process, exactly what the simulator sent.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import ujson

from gcluster.errors import ConfigError

from .payloads import DISCORD_EPOCH_MS, NUMBER_KEY, _iso, snowflake

__all__ = ["BLAST_KINDS", "BodyPool", "VariedStream", "encode_open"]

BLAST_KINDS: Final = ("MESSAGE_CREATE",)
"""What `GatewaySimulator.blast` sends unless told otherwise."""

# Pools per shard; sized so that a 32 KB deflate window rarely sees a value twice.
_GUILDS = 400
_CHANNELS_PER_GUILD = 12
_ROLES_PER_GUILD = 16
_USERS = 20_000
_VOCABULARY = 4_000
# "Now" for every timestamp, so streams do not depend on the clock (2025-06-01).
_NOW_MS: Final = 1_748_736_000_000
_CDN = "https://cdn.discordapp.com"
_MEDIA = "https://media.discordapp.net"
_SYLLABLES = (
    "ka", "lo", "mi", "ren", "to", "sa", "vel", "quo", "dra", "ni", "fe", "zu", "pa", "ri",
    "gon", "be", "sha", "ty", "mor", "al", "in", "ex", "or", "um", "ly", "ish", "ber", "cat",
)  # fmt: skip
_COMMON = (
    "the", "a", "to", "and", "i", "you", "it", "is", "that", "of", "in", "for", "on", "this",
    "lol", "ok", "yeah", "no", "just", "but", "so", "what", "we", "can", "do", "be", "not",
    "have", "with", "my", "at", "are", "if", "was", "like", "get", "me", "now", "good",
)  # fmt: skip
_EMOJI = ("😂", "👍", "🔥", "😭", "❤️", "🙏", "👀", "✨", ":pepega:", ":kekw:")
_HEX = "0123456789abcdef"


@dataclass(frozen=True, slots=True)
class _User:
    id: str
    username: str
    global_name: str | None
    avatar: str | None
    public_flags: int


@dataclass(frozen=True, slots=True)
class _Guild:
    id: str
    channel_ids: tuple[str, ...]
    role_ids: tuple[str, ...]


class VariedStream:
    """Dispatch bodies (``d``) for one shard, drawn from large seeded pools.

    Args:
        shard_id, total: whose stream; every guild id maps to ``shard_id``
            (``(guild_id >> 22) % total``).
        seed: the stream's seed; the same arguments give the same stream.
    """

    def __init__(self, shard_id: int, total: int, *, seed: int = 0) -> None:
        self._rng = rng = random.Random(f"gcluster-traffic/{seed}/{shard_id}/{total}")
        self._guilds = [self._guild(rng, shard_id, total) for _ in range(_GUILDS)]
        self._users = [self._user(rng) for _ in range(_USERS)]
        self._words = [self._word(rng) for _ in range(_VOCABULARY)]
        # Zipf-like word use: a few words are common, most are rare.
        self._weights = [1.0 / (rank + 1) for rank in range(_VOCABULARY)]
        self._cum_weights = list(_accumulate(self._weights))
        self._clock_ms = _NOW_MS
        self._increment = 0
        self._last_message: dict[str, str] | None = None
        self._builders: dict[str, Callable[[int], dict[str, Any]]] = {
            "MESSAGE_CREATE": self.message_create,
            "MESSAGE_UPDATE": self.message_update,
            "MESSAGE_DELETE": self.message_delete,
            "TYPING_START": self.typing_start,
            "PRESENCE_UPDATE": self.presence_update,
        }

    @property
    def kinds(self) -> tuple[str, ...]:
        """The dispatch names this stream can build."""
        return tuple(self._builders)

    def take(
        self, numbers: Iterable[int], kinds: Iterable[str] = BLAST_KINDS
    ) -> Iterator[tuple[str, dict[str, Any], int]]:
        """Build one event per number, cycling through ``kinds``, as ``(name, d, number)``.

        The number is written into ``d`` (read it with `payloads.event_number`).

        Raises:
            ConfigError: for a kind this stream cannot build.
        """
        names = tuple(kinds)
        unknown = [name for name in names if name not in self._builders]
        if unknown or not names:
            raise ConfigError(f"kinds must be a non-empty subset of {self.kinds}, got {names}")
        builders = [self._builders[name] for name in names]
        return self._build(numbers, names, builders)

    def build(self, name: str) -> dict[str, Any]:
        """The next body of dispatch ``name``, without an event number.

        Raises:
            KeyError: for a name this stream cannot build.
        """
        return self._builders[name](0)

    def _build(
        self,
        numbers: Iterable[int],
        names: tuple[str, ...],
        builders: list[Callable[[int], dict[str, Any]]],
    ) -> Iterator[tuple[str, dict[str, Any], int]]:
        for index, number in enumerate(numbers):
            which = index % len(names)
            data = builders[which](number)
            data[NUMBER_KEY] = number
            yield names[which], data, number

    # -- bodies ------------------------------------------------------------

    def message_create(self, n: int) -> dict[str, Any]:
        """A MESSAGE_CREATE ``d`` of about 1.2 KB on average."""
        rng = self._rng
        guild = rng.choice(self._guilds)
        channel_id = rng.choice(guild.channel_ids)
        author = self._pick_user()
        message_id = self._snowflake()
        content = self._sentence()
        mentions: list[dict[str, Any]] = []
        if rng.random() < 0.3:
            mentioned = self._pick_user()
            mentions.append({**self._user_json(mentioned), "member": self._member(guild)})
            content = f"<@{mentioned.id}> {content}"
        reply = rng.random() < 0.1
        data: dict[str, Any] = {
            "type": 19 if reply else 0,
            "tts": False,
            "timestamp": _iso(_created_ms(message_id)),
            "pinned": False,
            "nonce": str(int(message_id) - rng.randrange(1 << 20)),
            "mentions": mentions,
            "mention_roles": [],
            "mention_everyone": False,
            "member": self._member(guild),
            "id": message_id,
            "flags": 0,
            "embeds": [],
            "edited_timestamp": None,
            "content": content,
            "components": [],
            "channel_type": 0,
            "channel_id": channel_id,
            "author": self._user_json(author),
            "attachments": [],
            "guild_id": guild.id,
        }
        if reply:
            data["message_reference"] = {
                "type": 0,
                "message_id": str(int(message_id) - rng.randrange(1 << 32, 1 << 40)),
                "channel_id": channel_id,
                "guild_id": guild.id,
            }
        roll = rng.random()
        if roll < 0.15:
            data["embeds"] = [self._embed()]
        elif roll < 0.27:
            data["attachments"] = [self._attachment(channel_id)]
        self._last_message = {"id": message_id, "channel_id": channel_id, "guild_id": guild.id}
        return data

    def message_update(self, n: int) -> dict[str, Any]:
        """A MESSAGE_UPDATE ``d``: a full edited message, as v10 sends it."""
        data = self.message_create(n)
        data["content"] += " (edited)"
        data["edited_timestamp"] = _iso(self._clock_ms)
        return data

    def message_delete(self, n: int) -> dict[str, Any]:
        """A MESSAGE_DELETE ``d`` for the last message created (or a fresh id)."""
        last = self._last_message
        if last is None:
            guild = self._rng.choice(self._guilds)
            last = {
                "id": self._snowflake(),
                "channel_id": self._rng.choice(guild.channel_ids),
                "guild_id": guild.id,
            }
        return dict(last)

    def typing_start(self, n: int) -> dict[str, Any]:
        """A TYPING_START ``d`` with the member, as guild typing events carry it."""
        rng = self._rng
        guild = rng.choice(self._guilds)
        user = self._pick_user()
        return {
            "user_id": user.id,
            "timestamp": self._clock_ms // 1000,
            "member": {**self._member(guild), "user": self._user_json(user)},
            "channel_id": rng.choice(guild.channel_ids),
            "guild_id": guild.id,
        }

    def presence_update(self, n: int) -> dict[str, Any]:
        """A PRESENCE_UPDATE ``d``."""
        rng = self._rng
        guild = rng.choice(self._guilds)
        status = rng.choice(("online", "idle", "dnd", "online", "offline"))
        activities = []
        if rng.random() < 0.6:
            activities.append(
                {
                    "type": rng.choice((0, 2, 4)),
                    "name": " ".join(rng.choices(self._words[:400], k=rng.randint(1, 3))),
                    "id": "".join(rng.choices(_HEX, k=16)),
                    "created_at": self._clock_ms,
                    "timestamps": {"start": self._clock_ms - rng.randrange(10_800_000)},
                }
            )
        return {
            "user": {"id": self._pick_user().id},
            "status": status,
            "guild_id": guild.id,
            "client_status": {rng.choice(("desktop", "mobile", "web")): status},
            "broadcast": None,
            "activities": activities,
        }

    # -- pieces ------------------------------------------------------------

    def _snowflake(self) -> str:
        # Time moves on by a few ms per event, like a busy shard's clock.
        self._clock_ms += self._rng.randrange(1, 8)
        self._increment = (self._increment + 1) & 0xFFF
        worker = self._rng.randrange(32)
        return str(snowflake(self._clock_ms, worker=worker, increment=self._increment))

    def _pick_user(self) -> _User:
        # Chatty users post more, but most authors in a window are distinct.
        rng = self._rng
        if rng.random() < 0.2:
            return self._users[rng.randrange(200)]
        return self._users[rng.randrange(_USERS)]

    @staticmethod
    def _user_json(user: _User) -> dict[str, Any]:
        return {
            "username": user.username,
            "public_flags": user.public_flags,
            "primary_guild": None,
            "id": user.id,
            "global_name": user.global_name,
            "discriminator": "0",
            "clan": None,
            "avatar_decoration_data": None,
            "avatar": user.avatar,
        }

    def _member(self, guild: _Guild) -> dict[str, Any]:
        rng = self._rng
        roles = rng.sample(guild.role_ids[1:], rng.randrange(4))
        joined_ms = _NOW_MS - rng.randrange(1, 5 * 365 * 86_400_000)
        return {
            "roles": roles,
            "premium_since": None,
            "pending": False,
            "nick": self._word_from(rng).capitalize() if rng.random() < 0.2 else None,
            "mute": False,
            "joined_at": _iso(joined_ms),
            "flags": 0,
            "deaf": False,
            "communication_disabled_until": None,
            "banner": None,
            "avatar": None,
        }

    def _sentence(self) -> str:
        rng = self._rng
        length = min(80, int(rng.expovariate(1 / 14)) + 1)
        words = rng.choices(self._words, cum_weights=self._cum_weights, k=length)
        if rng.random() < 0.4:
            words.insert(rng.randrange(len(words) + 1), rng.choice(_COMMON))
        if rng.random() < 0.15:
            words.append(rng.choice(_EMOJI))
        if rng.random() < 0.05:
            words.append(f"https://{self._word_from(rng)}.com/{''.join(rng.choices(_HEX, k=10))}")
        text = " ".join(words)
        return text[0].upper() + text[1:] if rng.random() < 0.5 else text

    def _embed(self) -> dict[str, Any]:
        rng = self._rng
        return {
            "type": "rich",
            "title": self._sentence()[:60],
            "description": self._sentence(),
            "color": rng.randrange(1 << 24),
            "fields": [
                {"name": self._word_from(rng), "value": str(rng.randrange(10_000)), "inline": True}
                for _ in range(rng.randrange(3))
            ],
            "content_scan_version": 0,
        }

    def _attachment(self, channel_id: str) -> dict[str, Any]:
        rng = self._rng
        attachment_id = self._snowflake()
        name = f"{self._word_from(rng)}_{rng.randrange(10_000)}.png"
        path = f"attachments/{channel_id}/{attachment_id}/{name}"
        token = "".join(rng.choices(_HEX, k=24))
        return {
            "id": attachment_id,
            "filename": name,
            "size": rng.randrange(10_000, 8_000_000),
            "url": f"{_CDN}/{path}?ex={token[:8]}&is={token[8:16]}&hm={token}",
            "proxy_url": f"{_MEDIA}/{path}?ex={token[:8]}&is={token[8:16]}&hm={token}",
            "width": rng.choice((640, 1280, 1920)),
            "height": rng.choice((360, 720, 1080)),
            "content_type": "image/png",
            "placeholder": "".join(rng.choices(string.ascii_letters + string.digits, k=28)),
            "placeholder_version": 1,
        }

    def _word_from(self, rng: random.Random) -> str:
        return self._words[rng.randrange(_VOCABULARY)]

    # -- pools -------------------------------------------------------------

    @staticmethod
    def _word(rng: random.Random) -> str:
        return "".join(rng.choices(_SYLLABLES, k=rng.choice((1, 2, 2, 3, 3, 4))))

    @staticmethod
    def _user(rng: random.Random) -> _User:
        name = "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 4)))
        if rng.random() < 0.5:
            name += str(rng.randrange(10_000))
        created_ms = rng.randrange(DISCORD_EPOCH_MS + 86_400_000, _NOW_MS)
        user_id = snowflake(created_ms, worker=rng.randrange(32), increment=rng.randrange(4096))
        return _User(
            id=str(user_id),
            username=name,
            global_name=name.capitalize() if rng.random() < 0.7 else None,
            avatar="".join(rng.choices(_HEX, k=32)) if rng.random() < 0.8 else None,
            public_flags=rng.choice((0, 0, 0, 64, 128, 256)),
        )

    @staticmethod
    def _guild(rng: random.Random, shard_id: int, total: int) -> _Guild:
        # A creation time whose shard residue is `shard_id`: (ms - epoch) % total.
        offset = rng.randrange(86_400_000, _NOW_MS - DISCORD_EPOCH_MS - 86_400_000)
        offset -= offset % total
        offset += shard_id
        guild_ms = DISCORD_EPOCH_MS + offset
        guild_id = snowflake(guild_ms, worker=rng.randrange(32), increment=rng.randrange(4096))

        def later_id() -> str:
            ms = rng.randrange(guild_ms, _NOW_MS)
            return str(snowflake(ms, worker=rng.randrange(32), increment=rng.randrange(4096)))

        channels = tuple(later_id() for _ in range(_CHANNELS_PER_GUILD))
        roles = (str(guild_id),) + tuple(later_id() for _ in range(_ROLES_PER_GUILD - 1))
        return _Guild(id=str(guild_id), channel_ids=channels, role_ids=roles)


def encode_open(data: dict[str, Any]) -> str:
    """``data`` as the simulator writes JSON, without its closing brace.

    More keys can then be appended as text (``body + ',"k":1}'``) without
    encoding the body again.
    """
    text: str = ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False)
    return text[:-1]


class BodyPool:
    """A shard's varied bodies, encoded once and handed out in turn, over and over.

    Building and encoding a body costs far more than sending it; a pool of a
    few thousand per kind is still far bigger than any compression window
    (zlib's 32 KB, zstd's default 2 MB at level 3 hold at most about 1,700
    of them), so reuse changes neither the bytes per event nor the cost of
    decoding them.

    Args:
        stream: where bodies come from.
        size: bodies kept per dispatch name.
    """

    def __init__(self, stream: VariedStream, size: int = 4096) -> None:
        if size < 1:
            raise ConfigError("size must be >= 1")
        self._stream = stream
        self._size = size
        self._bodies: dict[str, list[str]] = {}
        self._next: dict[str, int] = {}

    def take(self, kinds: Iterable[str], count: int) -> list[tuple[str, str]]:
        """The next ``count`` bodies as ``(name, body)``, cycling through ``kinds``.

        Each body is JSON without its closing brace (see `encode_open`).

        Raises:
            ConfigError: for a kind the stream cannot build.
        """
        names = tuple(kinds)
        unknown = [name for name in names if name not in self._stream.kinds]
        if unknown or not names:
            raise ConfigError(f"kinds must be a non-empty subset of {self._stream.kinds}")
        out = []
        for index in range(count):
            name = names[index % len(names)]
            out.append((name, self._one(name)))
        return out

    def _one(self, name: str) -> str:
        bodies = self._bodies.setdefault(name, [])
        position = self._next.get(name, 0)
        if position == len(bodies) and len(bodies) < self._size:
            bodies.append(encode_open(self._stream.build(name)))
        self._next[name] = (position + 1) % self._size
        return bodies[position]


def _created_ms(id_: str) -> int:
    return (int(id_) >> 22) + DISCORD_EPOCH_MS


def _accumulate(values: list[float]) -> Iterator[float]:
    total = 0.0
    for value in values:
        total += value
        yield total
