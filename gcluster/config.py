"""Cluster options: the checked, frozen `ClusterConfig`, their types, and the builder.

Every way of making a cluster (`Cluster(...)`, `Cluster.new`, `Cluster.builder`,
`ThreadedCluster`) ends in `make_config`, and every check of an option lives
either there (the token, the intents, unknown names) or in
`ClusterConfig.__post_init__` (each option's value): an option is refused in
one place, with one message, however it was given. `ClusterBuilder` only
collects options; `build()` hands them to `Cluster`, which checks them.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final, TypedDict

from gcluster._token import Token
from gcluster.commands import UpdatePresence
from gcluster.delivery import Loads, resolve_decoder
from gcluster.errors import ConfigError
from gcluster.events import EventTypeFlags
from gcluster.frames import DEFAULT_MAX_MESSAGE
from gcluster.http import DEFAULT_API_BASE
from gcluster.inflate import resolve_compression
from gcluster.protocol import ResumeSession, default_properties
from gcluster.proxy import Proxy, check_proxy_option
from gcluster.queue import Queue
from gcluster.scheme import ShardScheme
from gcluster.sessions import SessionStore

if TYPE_CHECKING:
    # gcluster.cluster imports this module, so Cluster is imported at run time
    # only where a builder builds one.
    from gcluster.cluster import Cluster

__all__ = ["ClusterBuilder", "ClusterConfig", "ClusterOptions"]

# READY alone can be tens of kilobytes; a limit below this only breaks shards.
MIN_MAX_MESSAGE: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A cluster's options, checked and frozen (`Cluster.config()` returns it).

    See `Cluster` for what each option means.
    """

    token: Token = field(repr=False)
    intents: int
    event_types: EventTypeFlags = EventTypeFlags.ALL
    shard_scheme: ShardScheme = field(default_factory=ShardScheme.auto)
    gateway_url: str | None = None
    api_base: str = DEFAULT_API_BASE
    large_threshold: int = 50
    presence: UpdatePresence | None = None
    shard_presence: Callable[[int], UpdatePresence | None] | None = None
    identify_properties: Mapping[str, str] = field(default_factory=default_properties)
    queue: Queue | None = None
    resume_sessions: Mapping[int, ResumeSession] = field(default_factory=dict)
    ratelimit_payloads: bool = True
    compression: bool | str | None = True
    connect_timeout: float = 10.0
    max_message_size: int = DEFAULT_MAX_MESSAGE
    ssl_context: Any = None
    session_store: SessionStore | None = None
    backlog_warning: int = 10_000
    decoder: str | Loads = "auto"
    # A URL given as a string is parsed here into a Proxy, whose repr hides
    # the credentials; None follows the environment, False means none.
    proxy: Proxy | str | bool | None = None

    def __post_init__(self) -> None:
        if not 50 <= self.large_threshold <= 250:
            raise ConfigError(f"large_threshold must be within 50..250, not {self.large_threshold}")
        if not isinstance(self.shard_scheme, ShardScheme):
            raise ConfigError("shard_scheme must be a ShardScheme")
        if self.queue is not None and not isinstance(self.queue, Queue):
            raise ConfigError("queue must have a request(shard_id, total) method")
        if self.presence is not None and not isinstance(self.presence, UpdatePresence):
            raise ConfigError("presence must be an UpdatePresence")
        if self.connect_timeout <= 0:
            raise ConfigError("connect_timeout must be positive")
        if (
            not isinstance(self.max_message_size, int)
            or isinstance(self.max_message_size, bool)
            or self.max_message_size < MIN_MAX_MESSAGE
        ):
            raise ConfigError(
                f"max_message_size must be an int of at least {MIN_MAX_MESSAGE} bytes, "
                f"not {self.max_message_size!r}"
            )
        resolve_compression(self.compression)  # both raise ConfigError themselves
        resolve_decoder(self.decoder)
        if self.backlog_warning < 1:
            raise ConfigError("backlog_warning must be at least 1")
        if self.session_store is not None and not isinstance(self.session_store, SessionStore):
            raise ConfigError("session_store must have load(shard_ids) and save(shard_id, session)")
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise ConfigError("ssl_context must be an ssl.SSLContext (or gevent's)")
        for shard_id, session in self.resume_sessions.items():
            if not isinstance(session, ResumeSession):
                raise ConfigError(f"resume_sessions[{shard_id}] must be a ResumeSession")
            why = session.mismatch(shard_id, self.shard_scheme.total)
            if why is not None:
                raise ConfigError(f"resume_sessions[{shard_id}] cannot be resumed: {why}")
        try:
            object.__setattr__(self, "proxy", check_proxy_option(self.proxy))
        except ValueError as err:  # its message never holds the credentials
            raise ConfigError(str(err)) from None
        for url_option in ("gateway_url", "api_base"):
            url = getattr(self, url_option)
            if url is not None and "://" not in url:
                raise ConfigError(f"{url_option} must be an absolute URL, not {url!r}")


class ClusterOptions(TypedDict, total=False):
    """The keyword options of `Cluster`, `Cluster.new` and `ThreadedCluster`, all optional.

    With them typed, mypy reports a misspelled option or a value of the wrong
    type; `Cluster` still checks both at run time (`ConfigError`) for callers
    that are not type-checked. A dict built ahead of time can be declared as
    one: ``options: ClusterOptions = {"api_base": url}; Cluster(token,
    intents, **options)``. See `Cluster` for what each option means.
    """

    event_types: EventTypeFlags
    shard_scheme: ShardScheme
    gateway_url: str | None
    api_base: str
    large_threshold: int
    presence: UpdatePresence | None
    shard_presence: Callable[[int], UpdatePresence | None] | None
    identify_properties: Mapping[str, str]
    queue: Queue | None
    resume_sessions: Mapping[int, ResumeSession]
    ratelimit_payloads: bool
    compression: bool | str | None
    connect_timeout: float
    ssl_context: ssl.SSLContext | None
    session_store: SessionStore | None
    backlog_warning: int
    decoder: str | Loads
    max_message_size: int
    proxy: Proxy | str | bool | None


_OPTIONS: Final = frozenset(f.name for f in fields(ClusterConfig)) - {"token", "intents"}


def make_config(token: str | Token, intents: int, options: Mapping[str, Any]) -> ClusterConfig:
    """The checked config for `Cluster(token, intents, **options)`.

    Raises:
        ConfigError: a bad token or intents, an unknown option, or one out of range.
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ConfigError(f"unknown cluster option(s): {', '.join(sorted(unknown))}")
    try:
        secret = Token(token)
    except (TypeError, ValueError) as err:
        # Token's messages never hold the token, so the cause may stay.
        raise ConfigError(f"bad token: {err}") from err
    if isinstance(intents, bool) or not isinstance(intents, int) or intents < 0:
        raise ConfigError(f"intents must be Intents or a non-negative int, not {intents!r}")
    values = dict(options)
    if "resume_sessions" in values:
        values["resume_sessions"] = dict(values["resume_sessions"] or {})
    return ClusterConfig(token=secret, intents=int(intents), **values)


class ClusterBuilder:
    """Builds a `Cluster` one option at a time, twilight style:

        cluster = (Cluster.builder(token, Intents.GUILD_MESSAGES)
                   .event_types(EventTypeFlags.MESSAGE_CREATE)
                   .shard_scheme(ShardScheme.range(range(0, 10), total=10))
                   .build())

    Each option method returns the builder; `build()` checks them all.
    """

    def __init__(self, token: str | Token, intents: int) -> None:
        self._token = token
        self._intents = intents
        self._options: ClusterOptions = {}

    def __repr__(self) -> str:
        return f"<ClusterBuilder options={sorted(self._options)}>"

    def build(self) -> Cluster:
        """The cluster, as `Cluster(token, intents, **options)` would make it.

        Raises:
            ConfigError: an option is out of range or of the wrong kind; the
                option methods check nothing, so a bad value shows here.
        """
        from gcluster.cluster import Cluster

        return Cluster(self._token, self._intents, **self._options)

    # Each method sets its own key of the typed dict, so mypy checks the
    # names here as it does a caller's keyword arguments.

    def event_types(self, value: EventTypeFlags) -> ClusterBuilder:
        self._options["event_types"] = value
        return self

    def shard_scheme(self, value: ShardScheme) -> ClusterBuilder:
        self._options["shard_scheme"] = value
        return self

    def gateway_url(self, value: str | None) -> ClusterBuilder:
        self._options["gateway_url"] = value
        return self

    def api_base(self, value: str) -> ClusterBuilder:
        self._options["api_base"] = value
        return self

    def large_threshold(self, value: int) -> ClusterBuilder:
        self._options["large_threshold"] = value
        return self

    def presence(self, value: UpdatePresence | None) -> ClusterBuilder:
        self._options["presence"] = value
        return self

    def shard_presence(self, value: Callable[[int], UpdatePresence | None]) -> ClusterBuilder:
        self._options["shard_presence"] = value
        return self

    def identify_properties(self, value: Mapping[str, str]) -> ClusterBuilder:
        self._options["identify_properties"] = dict(value)
        return self

    def queue(self, value: Queue) -> ClusterBuilder:
        self._options["queue"] = value
        return self

    def resume_sessions(self, value: Mapping[int, ResumeSession]) -> ClusterBuilder:
        self._options["resume_sessions"] = dict(value)
        return self

    def ratelimit_payloads(self, value: bool) -> ClusterBuilder:
        self._options["ratelimit_payloads"] = value
        return self

    def compression(self, value: bool | str | None) -> ClusterBuilder:
        self._options["compression"] = value
        return self

    def connect_timeout(self, value: float) -> ClusterBuilder:
        self._options["connect_timeout"] = value
        return self

    def max_message_size(self, value: int) -> ClusterBuilder:
        self._options["max_message_size"] = value
        return self

    def ssl_context(self, value: ssl.SSLContext | None) -> ClusterBuilder:
        self._options["ssl_context"] = value
        return self

    def session_store(self, value: SessionStore) -> ClusterBuilder:
        self._options["session_store"] = value
        return self

    def backlog_warning(self, value: int) -> ClusterBuilder:
        self._options["backlog_warning"] = value
        return self

    def decoder(self, value: str | Loads) -> ClusterBuilder:
        self._options["decoder"] = value
        return self

    def proxy(self, value: Proxy | str | bool | None) -> ClusterBuilder:
        self._options["proxy"] = value
        return self
