"""The exceptions gcluster raises.

Everything derives from one root so a caller can catch the library as a whole;
lower-level exceptions (websocket-client, requests, OSError, redis) are caught
in the one module that calls them and re-raised from here with the cause kept.

    GClusterError
    ├── ClusterStartError                 kind: ClusterStartErrorType
    ├── InvalidState (also RuntimeError)  an object used in a state that forbids it
    │   ├── ClusterNotUp                  used before up(): events(), command(), ...
    │   └── EventStreamBusy               a second events() iterator while one is open
    ├── ClusterCommandError               kind: ClusterCommandErrorType
    │   ├── ShardNonexistent              SHARD_NONEXISTENT
    │   └── CommandSendingError           SENDING
    ├── InvalidCommand (also ValueError)  a command that fails validation
    │   └── PayloadTooLarge               over the gateway's 4096 bytes
    ├── ShardSchemeError (also ValueError)
    ├── ConfigError (also ValueError)     a bad option or argument
    ├── ConnectionFailed                  a socket or handshake that failed
    ├── GatewayClosedError                the gateway closed for good; .code
    │   ├── AuthenticationFailed          4004
    │   ├── InvalidShard                  4010
    │   ├── ShardingRequired              4011
    │   ├── InvalidApiVersion             4012
    │   ├── InvalidIntents                4013
    │   └── DisallowedIntents             4014
    ├── QueueError                        an identify queue could not grant a slot
    │   └── SessionStartLimitExhausted    the daily IDENTIFY budget is spent
    ├── SessionStoreError                 a session store could not load or save
    ├── StreamError                       Redis could not take or give stream entries
    ├── RedisCallError                    a Redis call failed; reply: its error reply or None
    ├── LeaseConflict                     a ShardLease that waiting cannot bring: another
    │                                     shard count, or shards another slice holds
    ├── MembersRequestError               request_members() got no whole answer; .guild_id, .nonce
    │   ├── MembersRateLimited            RATE_LIMITED, or refused unsent; .retry_after
    │   ├── MembersTimeout (also TimeoutError)  not every chunk came in time; .received, .expected
    │   └── MembersRequestLost            the shard's session ended before the answer was whole
    ├── ThreadedClusterTimeout (also TimeoutError)  ThreadedCluster's thread did not answer
    └── HubThreadStopped (also RuntimeError)        ThreadedCluster's thread has ended

The gcluster.redis pieces call Redis through one function, which turns
redis-py's exceptions (and the socket's OSError) into `RedisCallError`; the
queue, the session store and the stream worker raise their own error from it,
so the chain reads QueueError <- RedisCallError <- redis.ConnectionError.

Messages never contain the bot token: code that formats one passes it through
`gcluster._token.Token.redact` first.
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthenticationFailed",
    "ClusterCommandError",
    "ClusterCommandErrorType",
    "ClusterNotUp",
    "ClusterStartError",
    "ClusterStartErrorType",
    "CommandSendingError",
    "ConfigError",
    "ConnectionFailed",
    "DisallowedIntents",
    "EventStreamBusy",
    "GClusterError",
    "GatewayClosedError",
    "InvalidApiVersion",
    "InvalidCommand",
    "InvalidIntents",
    "InvalidShard",
    "InvalidState",
    "MembersRateLimited",
    "MembersRequestError",
    "MembersRequestLost",
    "MembersTimeout",
    "PayloadTooLarge",
    "QueueError",
    "HubThreadStopped",
    "RedisCallError",
    "SessionStartLimitExhausted",
    "LeaseConflict",
    "SessionStoreError",
    "StreamError",
    "ThreadedClusterTimeout",
    "ShardNonexistent",
    "ShardSchemeError",
    "ShardingRequired",
    "closed_error",
]


class GClusterError(Exception):
    """Root of every exception gcluster raises."""


class ClusterStartErrorType(enum.Enum):
    RETRIEVING_GATEWAY_INFO = "retrieving_gateway_info"
    SHARD_START = "shard_start"
    TIMEOUT = "timeout"


class ClusterStartError(GClusterError):
    """The cluster could not start.

    Attributes:
        kind: why, as a `ClusterStartErrorType`.
    """

    def __init__(self, message: str, *, kind: ClusterStartErrorType) -> None:
        super().__init__(message)
        self.kind = kind


class InvalidState(GClusterError, RuntimeError):
    """An object was used in a state that does not allow it: started twice, not started, ...

    A mistake in the calling code, not a failure: the message says what to do.
    """


class ClusterNotUp(InvalidState):
    """The cluster was used before `up()` (or a standalone shard before `start()`).

    A cluster has no shards until `up()` creates them, so nothing would ever
    arrive through `events()` and no shard could send a command. The message
    says what to do.
    """


class EventStreamBusy(InvalidState):
    """`events()` was iterated while another iterator of the same cluster is open.

    Each event goes to one reader, so a second loop would silently get only
    what the first one left. An iterator is open from its first event until
    its loop ends (the stream ended, `break`, an exception) or it is closed.
    """


class ClusterCommandErrorType(enum.Enum):
    SHARD_NONEXISTENT = "shard_nonexistent"
    SENDING = "sending"


class ClusterCommandError(GClusterError):
    """A command or message could not be sent through the cluster."""

    kind: ClusterCommandErrorType

    def __init__(self, message: str, *, shard_id: int) -> None:
        super().__init__(message)
        self.shard_id = shard_id


class ShardNonexistent(ClusterCommandError):
    """The cluster holds no shard with that id."""

    kind = ClusterCommandErrorType.SHARD_NONEXISTENT

    def __init__(self, shard_id: int, message: str | None = None) -> None:
        super().__init__(
            message or f"shard {shard_id} is not part of this cluster", shard_id=shard_id
        )


class CommandSendingError(ClusterCommandError):
    """The shard exists but the payload could not be sent (not connected, timed out, ...)."""

    kind = ClusterCommandErrorType.SENDING


class InvalidCommand(GClusterError, ValueError):
    """A gateway command's fields do not satisfy Discord's rules."""


class PayloadTooLarge(InvalidCommand):
    """A payload over the gateway's 4096-byte limit; Discord would close with 4002."""

    def __init__(self, size: int, limit: int = 4096) -> None:
        super().__init__(f"payload is {size} bytes, over the gateway limit of {limit}")
        self.size = size
        self.limit = limit


class ShardSchemeError(GClusterError, ValueError):
    """A shard scheme whose ids or totals make no sense."""


class ConfigError(GClusterError, ValueError):
    """An option or argument the library cannot work with.

    A cluster option outside what Discord accepts, a number out of range, a
    Redis URL redis-py refuses, a simulator fault without a shard, ...
    """


class ConnectionFailed(GClusterError):
    """Connecting to the gateway (TCP, TLS or the websocket handshake) failed."""


class GatewayClosedError(GClusterError):
    """The gateway closed a shard with a code that forbids reconnecting.

    Attributes:
        shard_id: the shard that was closed (None for a token refused over REST).
        code: the websocket close code.
        reason: the close reason the gateway gave.
    """

    code: int = 0

    def __init__(self, shard_id: int | None, code: int | None = None, reason: str = "") -> None:
        if code is not None:
            self.code = code
        self.shard_id = shard_id
        self.reason = reason
        detail = f": {reason}" if reason else ""
        # shard_id is None when REST refused the token before any shard connected.
        who = f"shard {shard_id} closed by the gateway" if shard_id is not None else "refused"
        super().__init__(f"{who} with {self.code}{detail}")


class AuthenticationFailed(GatewayClosedError):
    code = 4004


class InvalidShard(GatewayClosedError):
    code = 4010


class ShardingRequired(GatewayClosedError):
    code = 4011


class InvalidApiVersion(GatewayClosedError):
    code = 4012


class InvalidIntents(GatewayClosedError):
    code = 4013


class DisallowedIntents(GatewayClosedError):
    code = 4014


_BY_CODE: dict[int, type[GatewayClosedError]] = {
    cls.code: cls
    for cls in (
        AuthenticationFailed,
        InvalidShard,
        ShardingRequired,
        InvalidApiVersion,
        InvalidIntents,
        DisallowedIntents,
    )
}


def closed_error(shard_id: int, code: int, reason: str = "") -> GatewayClosedError:
    """The exception for a fatal close code (the generic one for unknown codes)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return GatewayClosedError(shard_id, code, reason)
    return cls(shard_id, reason=reason)


class QueueError(GClusterError):
    """An identify queue could not grant a slot; the shard did not identify."""


class SessionStartLimitExhausted(QueueError):
    """Too few of the day's session starts remain to identify the shards.

    Attributes:
        remaining: session starts left today.
        needed: how many the shards would have spent.
        reset_after: seconds until Discord refills the budget.
    """

    def __init__(self, remaining: int, needed: int, reset_after: float) -> None:
        super().__init__(
            f"only {remaining} session starts remain today but {needed} are needed; "
            f"the budget resets in {reset_after:.0f} s"
        )
        self.remaining = remaining
        self.needed = needed
        self.reset_after = reset_after


class SessionStoreError(GClusterError):
    """A session store (e.g. Redis) could not load or save a shard's session."""


class MembersRequestError(GClusterError):
    """`request_members` got no whole answer; the subclasses say why.

    Raised as itself when the gateway's answer broke the rules (a chunk
    count that changed, an index out of range, members that are not
    objects): the message names what was wrong.

    Attributes:
        guild_id: the guild the members were asked for.
        nonce: the request's nonce, as sent in op 8 (None if it was never sent).
    """

    def __init__(self, message: str, *, guild_id: int, nonce: str | None) -> None:
        super().__init__(message)
        self.guild_id = guild_id
        self.nonce = nonce


class MembersRateLimited(MembersRequestError):
    """Discord rate-limits the request: ask again after `retry_after` seconds.

    Either Discord answered with a RATE_LIMITED dispatch for the request's
    nonce (`sent` True), or the cluster refused to send a request Discord
    would refuse (`sent` False): a request for all of a guild's members
    within 30 s of the last one for that guild.

    Attributes:
        retry_after: seconds to wait before asking again.
        sent: whether the request reached the gateway.
    """

    def __init__(
        self,
        message: str,
        *,
        guild_id: int,
        nonce: str | None,
        retry_after: float,
        sent: bool,
    ) -> None:
        super().__init__(message, guild_id=guild_id, nonce=nonce)
        self.retry_after = retry_after
        self.sent = sent


class MembersTimeout(MembersRequestError, TimeoutError):
    """Not every GUILD_MEMBERS_CHUNK of the answer came within the timeout.

    Attributes:
        received: the chunk indexes that did come, sorted.
        expected: the answer's chunk_count, or None when no chunk came.
    """

    def __init__(
        self,
        message: str,
        *,
        guild_id: int,
        nonce: str | None,
        received: tuple[int, ...],
        expected: int | None,
    ) -> None:
        super().__init__(message, guild_id=guild_id, nonce=nonce)
        self.received = received
        self.expected = expected


class MembersRequestLost(MembersRequestError):
    """The shard's session ended (a new one, a fatal close, `down()`) before the answer was whole.

    A session that resumes keeps its answer coming; a new session never
    gets the rest. Asking again is safe.
    """


class ThreadedClusterTimeout(GClusterError, TimeoutError):
    """The cluster's thread did not answer a call in time."""


class HubThreadStopped(GClusterError, RuntimeError):
    """The hub thread has ended (or is ending), so it can no longer run calls."""


class StreamError(GClusterError):
    """Redis could not take or give stream entries (events or commands)."""


class LeaseConflict(GClusterError):
    """A `ShardLease` refused at once, because waiting would never bring it.

    Either a live process of the namespace runs another shard count (the
    bot's processes must agree on it), or another slice's process holds some
    of these shards (two overlapping `--scheme` values).
    """


class RedisCallError(GClusterError):
    """A Redis call failed: no connection, no answer in time, or an error reply.

    The redis-py exception (or the socket's OSError) is the `__cause__`, and
    the message is its message, e.g. "Error 111 connecting to
    localhost:6379. Connection refused.".

    Attributes:
        reply: the error Redis answered with (e.g. "NOGROUP No such key ..."),
            or None when no answer came: the connection was refused or lost,
            the reply was late, or no node of a Redis Cluster serves the slot.
    """

    def __init__(self, message: str, *, reply: str | None = None) -> None:
        super().__init__(message)
        self.reply = reply
