"""Cluster options, builder and shard schemes: what is accepted and what is refused."""

from __future__ import annotations

import json
import logging
from dataclasses import fields

import pytest

from gcluster import (
    Cluster,
    ClusterConfig,
    ClusterNotUp,
    ClusterOptions,
    ConfigError,
    EventTypeFlags,
    GClusterError,
    HttpQueue,
    Intents,
    InvalidState,
    LocalQueue,
    Message,
    ResumeSession,
    ShardScheme,
    ShardSchemeError,
    UpdatePresence,
)
from gcluster._token import Token
from gcluster.backoff import Backoff
from gcluster.inflate import resolve_compression
from gcluster.ratelimit import CommandRatelimiter
from gcluster.testing import FaultPlan, GatewaySimulator, Stall, make_certificates

SECRET = "MTIzNDU2Nzg5.secret-token-value"


def test_builder_sets_every_option_like_the_constructor() -> None:
    queue = LocalQueue(2)
    presence = UpdatePresence(status="idle")
    built = (
        Cluster.builder(SECRET, Intents.GUILD_MESSAGES)
        .event_types(EventTypeFlags.MESSAGE_CREATE)
        .shard_scheme(ShardScheme.range(range(2, 4), total=4))
        .gateway_url("wss://gateway.example")
        .api_base("https://api.example/v10")
        .large_threshold(250)
        .presence(presence)
        .shard_presence(lambda shard_id: None)
        .identify_properties({"os": "x", "browser": "y", "device": "z"})
        .queue(queue)
        .resume_sessions({2: ResumeSession("s", 1)})
        .ratelimit_payloads(False)
        .compression(False)
        .connect_timeout(3.0)
        .max_message_size(1 << 20)
        .decoder(json.loads)
        .build()
    )
    config = built.config()
    assert config.event_types == EventTypeFlags.MESSAGE_CREATE
    assert config.shard_scheme.ids == (2, 3) and config.shard_scheme.total == 4
    assert config.gateway_url == "wss://gateway.example"
    assert config.large_threshold == 250
    assert config.presence is presence
    assert config.queue is queue
    assert config.resume_sessions == {2: ResumeSession("s", 1)}
    assert (config.ratelimit_payloads, config.compression, config.connect_timeout) == (
        False,
        False,
        3.0,
    )
    assert config.decoder is json.loads
    assert config.max_message_size == 1 << 20
    assert Cluster(SECRET, 1).config().max_message_size == 64 << 20
    assert config.token.authorization == "Bot " + SECRET
    assert Cluster.new(SECRET, 1).config().token == Cluster(f"Bot {SECRET}", 1).config().token


def test_every_cluster_option_is_typed() -> None:
    """`ClusterOptions` (what mypy checks keyword options against) lists every option."""
    options = {f.name for f in fields(ClusterConfig)} - {"token", "intents"}
    typed = set(ClusterOptions.__annotations__)
    assert options == typed


def test_config_names_still_import_from_gcluster_cluster() -> None:
    """The options moved to gcluster.config; gcluster.cluster re-exports them."""
    from gcluster import cluster, config

    for name in ("ClusterBuilder", "ClusterConfig", "ClusterOptions"):
        assert getattr(cluster, name) is getattr(config, name)
        assert name in cluster.__all__


@pytest.mark.parametrize("value", [49, 251, 0])
def test_large_threshold_outside_50_to_250_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match="large_threshold"):
        Cluster(SECRET, 1, large_threshold=value)
    with pytest.raises(ConfigError, match="large_threshold"):
        Cluster.builder(SECRET, 1).large_threshold(value).build()


@pytest.mark.parametrize(
    ("token", "intents", "options"),
    [
        ("", 1, {}),
        ("Bot ", 1, {}),
        (SECRET, -1, {}),
        (SECRET, "GUILDS", {}),
        (SECRET, 1, {"no_such_option": 1}),
        (SECRET, 1, {"gateway_url": "gateway.example"}),
        (SECRET, 1, {"presence": {"status": "idle"}}),
        (SECRET, 1, {"resume_sessions": {0: {"session_id": "x"}}}),
        (SECRET, 1, {"connect_timeout": 0}),
        (SECRET, 1, {"max_message_size": 1000}),
        (SECRET, 1, {"max_message_size": True}),
        (SECRET, 1, {"max_message_size": "64MiB"}),
        (SECRET, 1, {"max_message_size": 2.0**30}),
    ],
)
def test_bad_options_raise_config_error(
    token: str, intents: object, options: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        Cluster(token, intents, **options)  # type: ignore[arg-type]


def test_an_unknown_decoder_is_refused() -> None:
    with pytest.raises(ConfigError, match="decoder must be one of auto, ujson, orjson or a call"):
        Cluster(SECRET, 1, decoder="simplejson")


def test_a_decoder_that_is_not_installed_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gcluster.delivery

    monkeypatch.setitem(gcluster.delivery.DECODERS, "no_such_json_module", "gcluster[nothing]")
    with pytest.raises(ConfigError, match=r"not installed: pip install 'gcluster\[nothing\]'"):
        Cluster(SECRET, 1, decoder="no_such_json_module")


def test_token_never_shows_in_repr_str_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cluster = Cluster(SECRET, 1, api_base="http://127.0.0.1:9/api/v10")
    texts = [repr(cluster), str(cluster), repr(cluster.config()), str(cluster.config().token)]
    try:
        cluster.up(timeout=10)
    except Exception as err:  # noqa: BLE001 - any error's text is checked below
        texts += [str(err), repr(err), str(err.__cause__)]
    texts += [r.getMessage() for r in caplog.records]
    assert texts and not [t for t in texts if "secret-token-value" in t]


def test_shard_scheme_shapes() -> None:
    assert ShardScheme.range(range(0, 10), total=10).ids == tuple(range(10))
    assert ShardScheme.range([5, 1, 3], total=6).ids == (1, 3, 5)
    assert ShardScheme.bucket(1, 4, 10).ids == (1, 5, 9)
    assert ShardScheme.process(0, 3, 10).ids == (0, 1, 2)
    assert ShardScheme.process(1, 3, 10).ids == (3, 4, 5)
    assert ShardScheme.process(2, 3, 10).ids == (6, 7, 8, 9)
    # Slices of a process scheme cover every shard exactly once.
    covered = [i for index in range(7) for i in ShardScheme.process(index, 7, 100).ids]
    assert covered == list(range(100))
    assert ShardScheme.auto().resolve(12) == (tuple(range(12)), 12)
    assert ShardScheme.range(range(2), 8).resolve(12) == ((0, 1), 8)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ShardScheme.range(range(0, 11), total=10), "outside 0..9"),
        (lambda: ShardScheme.range([], total=10), "no shard ids"),
        (lambda: ShardScheme.range([1, 1], total=10), "repeat"),
        (lambda: ShardScheme.range(["1"], total=10), "not an int"),
        (lambda: ShardScheme.range(5, total=10), "iterable"),
        (lambda: ShardScheme.range(range(2), total=0), "total"),
        (lambda: ShardScheme.bucket(4, 4, 10), "bucket_id 4"),
        (lambda: ShardScheme.bucket(0, 0, 10), "concurrency"),
        (lambda: ShardScheme.bucket(5, 8, 4), "holds no shard"),
        (lambda: ShardScheme.process(3, 3, 10), "index 3"),
        (lambda: ShardScheme.process(0, 11, 10), "cannot share"),
        (lambda: ShardScheme.process(0, 0, 10), "count"),
    ],
)
def test_shard_scheme_errors_say_what_is_wrong(build: object, message: str) -> None:
    with pytest.raises(ShardSchemeError, match=message):
        build()  # type: ignore[operator]
    assert issubclass(ShardSchemeError, ValueError)


def test_message_close_codes_are_checked() -> None:
    assert Message.close(4000).code == 4000
    for code in (999, 1005, 5000):
        with pytest.raises(ValueError):
            Message.close(code)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Message.close(1005), "close code 1005"),
        (lambda: Message.close(4000, "x" * 124), "123 bytes"),
        (lambda: Backoff(base=0), "backoff needs"),
        (lambda: CommandRatelimiter(0), "limit >= 1"),
        (lambda: LocalQueue(0), "max_concurrency"),
        (lambda: LocalQueue(1, interval=-1), "interval"),
        (lambda: HttpQueue("gateway-queue:5000"), "absolute"),
        (lambda: HttpQueue("http://q", workers=0), "workers"),
        (lambda: resolve_compression("gzip"), "compression must be"),
        (lambda: Token("   "), "empty"),
        (lambda: GatewaySimulator(shards=0), "shards"),
        (lambda: Stall(seconds=-1), "seconds"),
        (lambda: FaultPlan(shard_id=0, fault=Stall(seconds=1.0)), "exactly one"),
        (lambda: make_certificates("/nonexistent", backend="nss"), "backend"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise_config_error(build: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build()  # type: ignore[operator]
    # Still a ValueError for callers that catch that, and the library's own error.
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, GClusterError)


def test_a_simulator_used_in_the_wrong_state_raises_invalid_state() -> None:
    sim = GatewaySimulator(shards=1)
    with pytest.raises(InvalidState, match="not started"):
        sim.apply_fault(0, Stall(seconds=1.0))
    with sim:
        with pytest.raises(InvalidState, match="already started"):
            sim.start()
    assert issubclass(InvalidState, RuntimeError) and issubclass(ClusterNotUp, InvalidState)
