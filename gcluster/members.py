"""Member requests: op 8 sent with a nonce of its own, and the GUILD_MEMBERS_CHUNKs that answer it.

Discord answers Request Guild Members (op 8) with GUILD_MEMBERS_CHUNK
dispatches that echo the request's nonce and say which chunk of how many
each one is; since August 2025 it answers a request for *all* of a guild's
members made within 30 s of the previous one for that guild with a
RATE_LIMITED dispatch instead (Discord's change log, "Introducing Rate Limit
When Requesting All Guild Members": one such request per guild per bot every
30 seconds). Collecting that answer is what `Cluster.request_members` does;
this module holds its parts:

- `NonceSource`: nonces unique in the process, within Discord's 32 bytes.
- `FullRequestWindow`: the per-guild window, kept on this side so a request
  Discord would refuse is refused before it is sent (pure, clock passed in).
- `MembersAnswer`: one answer being gathered, with every check a hostile
  gateway calls for (pure: dicts in, a `GuildMembers` or an error out).
- `MemberRequests`: the requests of one cluster that wait for their answer;
  a shard offers it each chunk and RATE_LIMITED dispatch it receives, and
  tells it when its session ends.

Answers go to the request that asked, not to `events()`: a chunk or
RATE_LIMITED dispatch whose nonce belongs to a waiting `request_members` is
taken by it; every other one (a `RequestGuildMembers` sent with
`command()`, say) is delivered as usual.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gevent.event import Event as Flag

from gcluster._json import JsonReady
from gcluster.errors import (
    MembersRateLimited,
    MembersRequestError,
    MembersRequestLost,
    MembersTimeout,
)

__all__ = [
    "DEFAULT_MEMBERS_TIMEOUT",
    "FULL_REQUEST_WINDOW",
    "MAX_CHUNK_MEMBERS",
    "MAX_FULL_CHUNKS",
    "FullRequestWindow",
    "GuildMembers",
    "MemberRequests",
    "MembersAnswer",
    "NonceSource",
    "is_full_request",
]

#: Seconds `request_members` waits for the whole answer unless told otherwise.
DEFAULT_MEMBERS_TIMEOUT: Final = 30.0
#: Seconds between two requests for all of a guild's members (Discord: 1 per 30 s per guild).
FULL_REQUEST_WINDOW: Final = 30.0
#: Discord sends "up to 1000 members per chunk".
MAX_CHUNK_MEMBERS: Final = 1000
#: The most chunks a request for every member may be answered with: 25 million
#: members, past the largest guilds. A larger chunk_count is refused, so a
#: hostile gateway cannot make the answer grow without end.
MAX_FULL_CHUNKS: Final = 25_000
#: A query or user_ids request returns at most 100 members (Discord's docs).
MAX_PARTIAL_MEMBERS: Final = 100
# Longest RATE_LIMITED retry_after believed; a larger one is held to this.
_MAX_RETRY_AFTER: Final = 3600.0


def is_full_request(query: str | None, limit: int) -> bool:
    """Whether op 8 with this query and limit asks for every member (the rate-limited kind)."""
    return query == "" and limit == 0


class NonceSource:
    """Nonces for member requests: unique in this process, at most 32 bytes.

    A random prefix per source (so two processes, or two clusters, do not
    collide) and a counter (so one source never repeats): ``"gc"``, 12 hex
    digits, then the count in hex, 30 characters at most.
    """

    def __init__(self) -> None:
        self._prefix = "gc" + secrets.token_hex(6)
        self._count = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


class FullRequestWindow:
    """When each guild may next be asked for all of its members.

    Pure: the time comes in as `now` (monotonic seconds). Holds only guilds
    whose window is still open, so its size is bounded by the requests of
    the last `window` seconds.
    """

    def __init__(self, window: float = FULL_REQUEST_WINDOW) -> None:
        self.window = window
        self._open_until: dict[int, float] = {}

    def wait(self, guild_id: int, now: float) -> float:
        """Seconds until a full request for `guild_id` may be sent; 0 when it may now."""
        until = self._open_until.get(guild_id)
        return 0.0 if until is None else max(0.0, until - now)

    def sent(self, guild_id: int, now: float) -> None:
        """A full request for `guild_id` was sent at `now` (a longer RATE_LIMITED wait stays)."""
        self._prune(now)
        self._open_until[guild_id] = max(self._open_until.get(guild_id, now), now + self.window)

    def reserve(self, guild_id: int, now: float) -> float | None:
        """Close `guild_id`'s window before a full request is sent; returns what to `release`.

        Taken before the send, which may wait for a rate-limit slot: a second
        full request for the guild made meanwhile is refused, not sent too.
        """
        previous = self._open_until.get(guild_id)
        self.sent(guild_id, now)
        return previous

    def release(self, guild_id: int, previous: float | None) -> None:
        """Undo `reserve`: the request was not sent after all."""
        if previous is None:
            self._open_until.pop(guild_id, None)
        else:
            self._open_until[guild_id] = previous

    def limited(self, guild_id: int, now: float, retry_after: float) -> None:
        """Discord said RATE_LIMITED: no full request for `guild_id` for `retry_after` s."""
        self._prune(now)
        self._open_until[guild_id] = max(self._open_until.get(guild_id, now), now + retry_after)

    def _prune(self, now: float) -> None:
        expired = [guild for guild, until in self._open_until.items() if until <= now]
        for guild in expired:
            del self._open_until[guild]


@dataclass(frozen=True, slots=True)
class GuildMembers(JsonReady):
    """The whole answer to one member request; `to_dict()` gives it for `json.dumps`.

    Attributes:
        guild_id: the guild.
        members: the guild member objects, as Discord sent them (dicts), in
            chunk order.
        presences: their presence objects (dicts) when presences were asked
            for, else empty.
        not_found: the asked-for user ids that are not members.
        nonce: the nonce the request was sent with.
        chunk_count: how many GUILD_MEMBERS_CHUNK dispatches the answer took.
    """

    guild_id: int
    members: list[dict[str, Any]]
    presences: list[dict[str, Any]]
    not_found: list[int]
    nonce: str
    chunk_count: int


class MembersAnswer:
    """One request's answer while its chunks arrive; checks each chunk before keeping it.

    Pure. `add(d)` takes a GUILD_MEMBERS_CHUNK's ``d`` (its nonce already
    matched) and returns True once every chunk is in; `result()` then gives
    the `GuildMembers`. A chunk that breaks the rules raises
    `MembersRequestError` naming what was wrong: the answer can no longer be
    trusted whole. A chunk index seen before is ignored (the first one
    stays).

    Args:
        guild_id: the guild asked about.
        nonce: the request's nonce.
        full: whether every member was asked for (else at most 100 come).
    """

    def __init__(self, guild_id: int, nonce: str, *, full: bool) -> None:
        self.guild_id = guild_id
        self.nonce = nonce
        self.full = full
        self._max_chunks = MAX_FULL_CHUNKS if full else MAX_PARTIAL_MEMBERS
        self._max_members = None if full else MAX_PARTIAL_MEMBERS
        self.chunk_count: int | None = None
        self._chunks: dict[int, tuple[list[Any], list[Any], list[int]]] = {}
        self.members_received = 0
        self.duplicates = 0

    @property
    def received(self) -> tuple[int, ...]:
        """The chunk indexes kept so far, sorted."""
        return tuple(sorted(self._chunks))

    @property
    def complete(self) -> bool:
        return self.chunk_count is not None and len(self._chunks) == self.chunk_count

    def add(self, data: Any) -> bool:
        """Keep one chunk; True once the answer is whole.

        Raises:
            MembersRequestError: the chunk breaks the rules.
        """
        if not isinstance(data, Mapping):
            raise self._broken(f"a chunk whose d is {type(data).__name__}, not an object")
        if str(data.get("guild_id")) != str(self.guild_id):
            raise self._broken(f"a chunk for guild {data.get('guild_id')!r}")
        count = data.get("chunk_count")
        if (
            isinstance(count, bool)
            or not isinstance(count, int)
            or not 1 <= count <= self._max_chunks
        ):
            raise self._broken(f"chunk_count {count!r} (must be 1..{self._max_chunks})")
        if self.chunk_count is None:
            self.chunk_count = count
        elif count != self.chunk_count:
            raise self._broken(f"chunk_count {count} after {self.chunk_count}")
        index = data.get("chunk_index")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise self._broken(f"chunk_index {index!r} of chunk_count {count}")
        if index in self._chunks:
            self.duplicates += 1
            return self.complete
        members = _objects(data.get("members"), "members", MAX_CHUNK_MEMBERS, required=True)
        if isinstance(members, str):
            raise self._broken(members)
        presences = _objects(data.get("presences"), "presences", MAX_CHUNK_MEMBERS)
        if isinstance(presences, str):
            raise self._broken(presences)
        not_found = _snowflakes(data.get("not_found"))
        if isinstance(not_found, str):
            raise self._broken(not_found)
        total = self.members_received + len(members)
        if self._max_members is not None and total > self._max_members:
            raise self._broken(
                f"{total} members for a request that gets at most {self._max_members}"
            )
        self.members_received = total
        self._chunks[index] = (members, presences, not_found)
        return self.complete

    def result(self) -> GuildMembers:
        """The whole answer (only once `add` returned True)."""
        assert self.complete and self.chunk_count is not None
        members: list[dict[str, Any]] = []
        presences: list[dict[str, Any]] = []
        not_found: list[int] = []
        for index in range(self.chunk_count):
            chunk_members, chunk_presences, chunk_not_found = self._chunks[index]
            members.extend(chunk_members)
            presences.extend(chunk_presences)
            not_found.extend(chunk_not_found)
        return GuildMembers(
            guild_id=self.guild_id,
            members=members,
            presences=presences,
            not_found=not_found,
            nonce=self.nonce,
            chunk_count=self.chunk_count,
        )

    def progress(self) -> str:
        """What has arrived, for an error message."""
        if self.chunk_count is None:
            return "no chunk arrived"
        indexes = ", ".join(str(i) for i in self.received[:20])
        more = ", ..." if len(self._chunks) > 20 else ""
        return (
            f"{len(self._chunks)} of {self.chunk_count} chunks arrived "
            f"(indexes {indexes}{more}; {self.members_received} members)"
        )

    def _broken(self, what: str) -> MembersRequestError:
        return MembersRequestError(
            f"the gateway's answer to the member request for guild {self.guild_id} "
            f"(nonce {self.nonce}) broke the rules: {what}",
            guild_id=self.guild_id,
            nonce=self.nonce,
        )


def _is_int(value: object) -> bool:
    return type(value) is int


def _objects(value: Any, field: str, limit: int, *, required: bool = False) -> list[Any] | str:
    """A chunk's list of objects, or what is wrong with it."""
    if value is None and not required:
        return []
    if not isinstance(value, list):
        return f"{field} is {type(value).__name__}, not an array"
    if len(value) > limit:
        return f"{len(value)} {field} in one chunk (at most {limit})"
    for item in value:
        if not isinstance(item, dict):
            return f"{field} holds a {type(item).__name__}, not an object"
    return value


def _snowflakes(value: Any) -> list[int] | str:
    """A chunk's not_found ids as ints, or what is wrong with them."""
    if value is None:
        return []
    if not isinstance(value, list):
        return f"not_found is {type(value).__name__}, not an array"
    if len(value) > MAX_PARTIAL_MEMBERS:
        return f"{len(value)} not_found ids (at most {MAX_PARTIAL_MEMBERS})"
    ids = []
    for item in value:
        number = item if _is_int(item) else None
        if isinstance(item, str) and item.isascii() and item.isdigit() and len(item) <= 20:
            number = int(item)
        # The same range for both spellings: "0" is no more an id than 0 is.
        if number is None or not 0 < number < 1 << 64:
            return f"not_found holds {item!r}, not a snowflake"
        ids.append(number)
    return ids


class _Pending:
    """One request waiting in a `MemberRequests`."""

    __slots__ = ("answer", "done", "error", "shard_id", "session_id")

    def __init__(self, answer: MembersAnswer, shard_id: int) -> None:
        self.answer = answer
        self.shard_id = shard_id
        # The session that owes the answer; None until the request is sent
        # (waiting for a rate-limit slot, it may yet go out on a new session).
        self.session_id: str | None = None
        self.done = Flag()
        self.error: MembersRequestError | None = None

    def fail(self, error: MembersRequestError) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class MemberRequests:
    """The member requests of one cluster that wait for their answers.

    Lives in the cluster's hub: the shards' readers offer it dispatches
    (`offer`) and report their sessions (`session_changed`,
    `shard_stopped`); `Cluster.request_members` registers a request
    (`begin`), waits on it, and removes it (`end`).

    Args:
        window: the per-guild window for full requests, in seconds.
    """

    def __init__(self, window: float = FULL_REQUEST_WINDOW) -> None:
        self.nonces = NonceSource()
        self.window = FullRequestWindow(window)
        self._by_nonce: dict[str, _Pending] = {}
        self._per_shard: Counter[int] = Counter()

    def waiting(self, shard_id: int) -> bool:
        """Whether a request sent through this shard waits for its answer."""
        return self._per_shard[shard_id] > 0

    def begin(self, answer: MembersAnswer, shard_id: int) -> _Pending:
        """Register a request before it is sent: its first chunk may come while the send yields."""
        pending = _Pending(answer, shard_id)
        self._by_nonce[answer.nonce] = pending
        self._per_shard[shard_id] += 1
        return pending

    @staticmethod
    def sent(pending: _Pending, session_id: str | None) -> None:
        """The request went out in session `session_id`, which now owes the answer."""
        pending.session_id = session_id

    def end(self, pending: _Pending) -> None:
        if self._by_nonce.pop(pending.answer.nonce, None) is not None:
            self._per_shard[pending.shard_id] -= 1
            if self._per_shard[pending.shard_id] <= 0:
                del self._per_shard[pending.shard_id]

    def offer(self, shard_id: int, name: str, data: Any, now: float) -> bool:
        """A GUILD_MEMBERS_CHUNK or RATE_LIMITED dispatch's ``d``: True if a request took it."""
        if not isinstance(data, Mapping):
            return False
        if name == "GUILD_MEMBERS_CHUNK":
            pending = self._find(shard_id, data.get("nonce"))
            if pending is None:
                return False
            if not pending.done.is_set():
                try:
                    if pending.answer.add(data):
                        pending.done.set()
                except MembersRequestError as err:
                    pending.fail(err)
            return True
        if name == "RATE_LIMITED":
            return self._rate_limited(shard_id, data, now)
        return False

    def session_changed(self, shard_id: int, session_id: str | None) -> None:
        """The shard's session is now `session_id`: answers owed by another session are lost."""
        for pending in list(self._by_nonce.values()):
            if (
                pending.shard_id == shard_id
                and pending.session_id is not None
                and pending.session_id != session_id
            ):
                why = "the shard's session ended" + (
                    "" if session_id is None else " and a new one began"
                )
                pending.fail(self._lost(pending, why))

    def shard_stopped(self, shard_id: int, why: str) -> None:
        """The shard stopped (down(), a fatal close): its waiting requests get no answer."""
        for pending in list(self._by_nonce.values()):
            if pending.shard_id == shard_id:
                pending.fail(self._lost(pending, why))

    def _find(self, shard_id: int, nonce: Any) -> _Pending | None:
        if not isinstance(nonce, str):
            return None
        pending = self._by_nonce.get(nonce)
        # An answer comes on the connection the request went out on: a nonce
        # seen on another shard is someone else's.
        if pending is None or pending.shard_id != shard_id:
            return None
        return pending

    def _only_full_request(self, shard_id: int, guild_id: Any) -> _Pending | None:
        found = [
            pending
            for pending in self._by_nonce.values()
            if pending.shard_id == shard_id
            and pending.answer.full
            and str(pending.answer.guild_id) == str(guild_id)
        ]
        return found[0] if len(found) == 1 else None

    def _rate_limited(self, shard_id: int, data: Mapping[str, Any], now: float) -> bool:
        if data.get("opcode") != 8:
            return False
        meta = data.get("meta")
        if not isinstance(meta, Mapping):
            return False
        nonce = meta.get("nonce")
        if nonce is None:
            # The nonce is optional in Discord's table; without one, the
            # answer can only be for this shard's one full request for the guild.
            pending = self._only_full_request(shard_id, meta.get("guild_id"))
        else:
            pending = self._find(shard_id, nonce)
        if pending is None or str(meta.get("guild_id")) != str(pending.answer.guild_id):
            return False
        retry_after = data.get("retry_after")
        if (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int | float)
            or not math.isfinite(retry_after)
            or retry_after < 0
        ):
            # Unusable: assume Discord's documented window.
            retry_after = self.window.window
        retry_after = min(float(retry_after), _MAX_RETRY_AFTER)
        answer = pending.answer
        self.window.limited(answer.guild_id, now, retry_after)
        pending.fail(
            MembersRateLimited(
                f"Discord rate-limited the member request for guild {answer.guild_id}: "
                f"ask again in {retry_after:.1f} s",
                guild_id=answer.guild_id,
                nonce=answer.nonce,
                retry_after=retry_after,
                sent=True,
            )
        )
        return True

    @staticmethod
    def _lost(pending: _Pending, why: str) -> MembersRequestLost:
        answer = pending.answer
        return MembersRequestLost(
            f"the member request for guild {answer.guild_id} (nonce {answer.nonce}) on shard "
            f"{pending.shard_id} got no whole answer: {why} ({answer.progress()}); ask again",
            guild_id=answer.guild_id,
            nonce=answer.nonce,
        )

    @staticmethod
    def timed_out(pending: _Pending, timeout: float) -> MembersTimeout:
        """The error for a request whose answer was not whole within `timeout` seconds."""
        answer = pending.answer
        return MembersTimeout(
            f"the member request for guild {answer.guild_id} (nonce {answer.nonce}) on shard "
            f"{pending.shard_id} got no whole answer within {timeout} s: {answer.progress()}",
            guild_id=answer.guild_id,
            nonce=answer.nonce,
            received=answer.received,
            expected=answer.chunk_count,
        )
