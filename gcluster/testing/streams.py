"""A shard's stream of numbered, realistic dispatches for `send_events`.

Tests need traffic that looks like Discord's (so parsing and throughput are
honest) and that they can count (so loss, duplication and reordering show).
Each shard's stream numbers its events 1, 2, 3, ... across calls and writes
the number into the ``d`` it builds (read it back with
`gcluster.testing.event_number`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from gcluster.errors import ConfigError
from gcluster.intents import Intents

from . import payloads
from .payloads import GuildFixture, Snowflakes

__all__ = ["STREAM_INTENTS", "STREAM_KINDS", "EventStream"]

STREAM_KINDS = (
    "MESSAGE_CREATE",
    "MESSAGE_UPDATE",
    "MESSAGE_DELETE",
    "TYPING_START",
    "PRESENCE_UPDATE",
)
"""The dispatch names `send_events` cycles through unless told otherwise."""

STREAM_INTENTS = Intents.GUILD_MESSAGES | Intents.GUILD_MESSAGE_TYPING | Intents.GUILD_PRESENCES
"""The intents a shard must identify with to get every `STREAM_KINDS` dispatch
(they are all guild ones); the simulator withholds the others, as Discord does.
GUILD_PRESENCES is privileged: the simulator allows it unless told otherwise."""


class EventStream:
    """One shard's numbered event stream over that shard's guilds."""

    def __init__(self, guilds: Sequence[GuildFixture], ids: Snowflakes) -> None:
        self._guilds = guilds
        self._ids = ids
        self._next_number = 1
        # The last MESSAGE_CREATE's id, so updates and deletes refer to a
        # message that exists, as they would on Discord.
        self._last_message_id = ids.next()
        self._builders: dict[str, Callable[[GuildFixture, int], dict[str, Any]]] = {
            "MESSAGE_CREATE": self._message_create,
            "MESSAGE_UPDATE": lambda g, n: payloads.message_update(g, n, self._last_message_id),
            "MESSAGE_DELETE": lambda g, n: payloads.message_delete(g, n, self._last_message_id),
            "TYPING_START": payloads.typing_start,
            "PRESENCE_UPDATE": payloads.presence_update,
        }

    @property
    def next_number(self) -> int:
        """The number the next event will get."""
        return self._next_number

    def claim_number(self) -> int:
        """Take the next number for an event built elsewhere (e.g. a huge GUILD_CREATE)."""
        number = self._next_number
        self._next_number = number + 1
        return number

    def take(
        self, count: int, kinds: Iterable[str] | None = None
    ) -> Iterator[tuple[str, dict[str, Any], int]]:
        """Build the next ``count`` events lazily, as ``(name, d, number)``.

        Args:
            count: how many.
            kinds: dispatch names to cycle through, from `STREAM_KINDS`;
                all of them by default.

        Raises:
            ConfigError: for a name the stream cannot build.
        """
        names = tuple(kinds) if kinds is not None else STREAM_KINDS
        unknown = [name for name in names if name not in self._builders]
        if unknown or not names:
            raise ConfigError(f"kinds must be a non-empty subset of {STREAM_KINDS}, got {names}")
        return self._build(count, names)

    def _build(
        self, count: int, names: tuple[str, ...]
    ) -> Iterator[tuple[str, dict[str, Any], int]]:
        guilds = self._guilds
        for _ in range(count):
            # Numbered as each event is built, not up front: if another caller
            # sends to this shard between two of ours, numbers still follow
            # the order in which events were sent.
            number = self._next_number
            self._next_number = number + 1
            name = names[(number - 1) % len(names)]
            data = self._builders[name](guilds[number % len(guilds)], number)
            data[payloads.NUMBER_KEY] = number
            yield name, data, number

    def _message_create(self, guild: GuildFixture, n: int) -> dict[str, Any]:
        self._last_message_id = self._ids.next()
        return payloads.message_create(guild, n, self._last_message_id)
