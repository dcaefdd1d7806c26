"""The Redis error boundary: redis-py's exceptions become `RedisCallError` in one place.

Scripted fake clients stand in for Redis where a failure has to be injected
(a Redis Cluster exception needs no cluster); an unreachable port stands in
for an outage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import pytest
import redis
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis_server import free_port

from gcluster import Event, EventType
from gcluster.backoff import Backoff
from gcluster.errors import (
    ClusterNotUp,
    ConfigError,
    GClusterError,
    InvalidState,
    RedisCallError,
    StreamError,
)
from gcluster.redis import (
    CommandInbox,
    RedisQueue,
    RedisSessionStore,
    ShardLease,
    StreamSink,
    StreamWorker,
    default_stream,
    encode_event,
)
from gcluster.redis._calls import call, unreachable
from gcluster.redis._client import safe_url

pytestmark = pytest.mark.extras

STREAM = "t:events"


def raise_(err: BaseException) -> None:
    raise err


def as_redis_returns_them(fields: dict[Any, Any]) -> dict[bytes, bytes]:
    def raw(value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    return {raw(k): raw(v) for k, v in fields.items()}


# --- the boundary -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raised",
    [
        redis.ConnectionError("Error 111 connecting to 10.0.0.5:6379. Connection refused."),
        redis.TimeoutError("Timeout reading from socket"),
        RedisClusterException("Redis Cluster cannot be connected"),
        SlotNotCoveredError("Command # 1 (XADD) of pipeline caused error: slot 42 is not covered"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=lambda err: type(err).__name__,
)
def test_a_failure_without_an_answer_becomes_a_redis_call_error(raised: Exception) -> None:
    with pytest.raises(RedisCallError) as caught:
        call(raise_, raised)
    assert caught.value.__cause__ is raised
    assert caught.value.reply is None
    assert str(caught.value) == str(raised)
    assert isinstance(caught.value, GClusterError)


def test_an_error_reply_becomes_a_redis_call_error_with_the_reply() -> None:
    raised = redis.ResponseError("NOGROUP No such key 't:events' or consumer group 'g'")
    with pytest.raises(RedisCallError) as caught:
        call(raise_, raised)
    assert caught.value.__cause__ is raised
    assert caught.value.reply == "NOGROUP No such key 't:events' or consumer group 'g'"


@pytest.mark.parametrize(
    ("raised", "reaching"),
    [
        (redis.ConnectionError("Error 111 connecting"), True),
        (RedisClusterException("Redis Cluster cannot be connected"), True),
        (MovedError("3999 127.0.0.1:7002"), True),
        (ClusterDownError("The cluster is down"), True),
        (TryAgainError("Multiple keys request during rehashing of slot"), True),
        (ReadOnlyError("You can't write against a read only replica."), True),
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind"), False),
        (NoScriptError("No matching script"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_failures_to_reach_redis_are_told_from_refusals(raised: Exception, reaching: bool) -> None:
    # A failure to reach Redis (a failover included) is probed until the slot
    # is served again; a refusal is retried on the backoff alone.
    with pytest.raises(RedisCallError) as caught:
        call(raise_, raised)
    assert unreachable(caught.value) is reaching


def test_the_default_stream_carries_the_namespace_hash_tag() -> None:
    assert default_stream("bot") == "{bot}:events"
    assert StreamSink(FiniteCluster(0), client=FakeClient([]), namespace="bot").stream == (  # type: ignore[arg-type]
        "{bot}:events"
    )
    assert StreamWorker(None, "g", client=FakeClient([]), namespace="bot").keys == [  # type: ignore[arg-type]
        "{bot}:events"
    ]
    with pytest.raises(ConfigError, match="braces"):
        default_stream("a{b")


def test_what_is_not_a_redis_failure_passes_through() -> None:
    with pytest.raises(KeyError):
        call(raise_, KeyError("a bug, not an outage"))


def test_an_outage_surfaces_as_a_redis_call_error_caused_by_redis_py() -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    lease = ShardLease(url, name="process:0/1", connect_timeout=0.5)
    with pytest.raises(RedisCallError) as caught:
        lease.holder()
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    assert "secret" not in str(caught.value)
    lease.close()


def test_a_worker_that_cannot_reach_redis_waits_and_send_command_raises_stream_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with StreamWorker(url, "g", "w", stream=STREAM, total=2, connect_timeout=0.5) as worker:
        waiting = gevent.spawn(list, worker.events())
        with gevent.Timeout(10):
            while worker.stats().failures < 1:
                gevent.sleep(0.02)
        worker.stop()
        assert waiting.get(timeout=10) == []  # waited for Redis, then ended without an error
        with pytest.raises(StreamError, match="127.0.0.1") as caught:
            worker.send_command({"op": 3, "d": {}}, shard_id=1)
        assert isinstance(caught.value.__cause__, RedisCallError)
        assert isinstance(caught.value.__cause__.__cause__, redis.ConnectionError)


# --- a Redis Cluster exception is retried like any other failure --------------------


class FakePipeline:
    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.entries: list[tuple[str, Any]] = []

    def xadd(self, key: str, fields: Any, maxlen: int | None = None) -> None:
        self.entries.append((key, fields))

    def execute(self) -> None:
        if self.client.failures:
            raise self.client.failures.pop(0)
        self.client.stored.extend(self.entries)


class FakeClient:
    """Takes pipelines of XADDs, failing with the queued exceptions first."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.stored: list[tuple[str, Any]] = []

    def pipeline(self, transaction: bool = False) -> FakePipeline:
        return FakePipeline(self)

    def exists(self, key: str) -> int:
        # The sink's probe while it waits to retry: the node answers.
        return 0


class FiniteCluster:
    """A cluster stand-in whose event stream ends after `count` events."""

    def __init__(self, count: int) -> None:
        self.count = count

    def events(self) -> Iterator[tuple[int, Event]]:
        for n in range(self.count):
            yield 0, Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 0, n + 1, {"n": n})


def test_the_sink_retries_a_redis_cluster_exception_like_any_redis_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeClient([SlotNotCoveredError("slot 42 is not covered"), RedisClusterException("x")])
    sink = StreamSink(
        FiniteCluster(5),
        client=client,  # type: ignore[arg-type]
        stream=STREAM,
        commands=False,
        retry=Backoff(base=0.01, cap=0.02),
    )
    with gevent.Timeout(10):
        sink.run()
    stats = sink.stats()
    assert stats.published == 5 and len(client.stored) == 5
    assert stats.failures == 2 and stats.outages == 1
    assert stats.last_error == "RedisClusterException: x"
    assert "SlotNotCoveredError: slot 42 is not covered" in caplog.text
    assert "(a FakeClient)" in caplog.text  # named without the client's repr


class ScriptedWorkerClient:
    """XREADGROUP answers (or exceptions) in order; XACKs and XADDs are recorded."""

    def __init__(self, reads: list[Any]) -> None:
        self.reads = reads
        self.acked: list[Any] = []

    def xgroup_create(self, *args: Any, **kwargs: Any) -> None:
        pass

    def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
        answer = self.reads.pop(0) if self.reads else []
        if isinstance(answer, Exception):
            raise answer
        return answer

    def xack(self, key: str, group: str, *ids: Any) -> int:
        self.acked.extend(ids)
        return len(ids)

    def xadd(self, *args: Any, **kwargs: Any) -> Any:
        raise SlotNotCoveredError("slot 7 is not covered")

    def exists(self, key: str) -> int:
        # The worker's probe while it waits to retry: the node answers.
        return 0

    def close(self) -> None:
        pass


def test_the_worker_retries_a_redis_cluster_exception_like_any_redis_failure() -> None:
    event = Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 1, 9, {"id": "1"})
    entry = (b"1-0", as_redis_returns_them(encode_event(1, event)))
    client = ScriptedWorkerClient(
        [
            RedisClusterException("Redis Cluster cannot be connected"),
            [],  # no pending events of our own
            [[STREAM.encode(), [entry]]],
        ]
    )
    worker = StreamWorker(
        None,
        "g",
        "w",
        stream=STREAM,
        total=2,
        client=client,  # type: ignore[arg-type]
    )
    with gevent.Timeout(10):
        events = worker.events()
        assert next(events) == (1, event)
        worker.stop()
        assert list(events) == []
    assert worker.stats().failures == 1
    assert client.acked == [b"1-0"]
    with pytest.raises(StreamError) as caught:
        worker.send_command({"op": 3, "d": {}}, shard_id=1)
    assert isinstance(caught.value.__cause__, RedisCallError)
    assert isinstance(caught.value.__cause__.__cause__, SlotNotCoveredError)


# --- naming the server -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:secret@h:1/0", "redis://:***@h:1/0"),
        ("rediss://user:secret@h/2", "rediss://user:***@h/2"),
        ("redis://user@h", "redis://user@h"),
        ("redis://:se/cret@h:6379/0", "redis://:***@h:6379/0"),  # "/" not percent-encoded
        ("redis://h?password=secret&db=1", "redis://h?password=***&db=1"),
        ("unix:///tmp/redis.sock?db=3", "unix:///tmp/redis.sock?db=3"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_a_client_is_named_by_its_server_not_its_repr() -> None:
    client = redis.Redis(host="10.0.0.5", port=6380, db=2, password="secret")
    assert safe_url(None, client) == "redis://10.0.0.5:6380/2"
    assert safe_url(None, redis.Redis(unix_socket_path="/tmp/r.sock")) == "unix:///tmp/r.sock?db=0"
    assert safe_url(None, redis.Redis(host="h", ssl=True)) == "rediss://h:6379/0"


# --- bad arguments and misuse ------------------------------------------------------

URL = "redis://127.0.0.1:6379/0"  # never connected to: the arguments are refused first


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RedisQueue(URL, max_concurrency=0), "max_concurrency"),
        (lambda: RedisQueue(URL, spare=-1), "spare"),
        (lambda: RedisQueue(URL, namespace="a{b}"), "namespace"),
        (lambda: RedisSessionStore(), "url or client"),
        (lambda: RedisSessionStore(URL, client=redis.Redis()), "not both"),
        (lambda: RedisSessionStore("http://127.0.0.1:6379"), "not a Redis URL"),
        (lambda: StreamSink(FiniteCluster(0), URL, batch=0), "batch"),
        (lambda: StreamSink(FiniteCluster(0), URL, stream=""), "stream"),
        (lambda: StreamWorker(URL, ""), "group"),
        (lambda: StreamWorker(URL, "g", block=10.0), "block"),
        (lambda: StreamWorker(URL, "g", event_types=[3]), "event_types"),
        (lambda: CommandInbox(FiniteCluster(0), URL, ttl=0), "ttl"),
        (lambda: ShardLease(URL, name="x", ttl=0.1), "ttl"),
        (lambda: ShardLease(URL, name=""), "name"),
    ],
)
def test_bad_arguments_raise_config_error(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_a_bad_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        RedisSessionStore("http://:secret@127.0.0.1:6379")
    assert "secret" not in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)


class NotUp:
    total = None

    def shards(self) -> list[Any]:
        return []


def test_serving_commands_for_a_cluster_that_is_not_up_raises_cluster_not_up() -> None:
    sink = StreamSink(NotUp(), client=FakeClient([]), stream=STREAM)  # type: ignore[arg-type]
    with pytest.raises(ClusterNotUp):
        sink.run()
    inbox = CommandInbox(NotUp(), client=FakeClient([]))  # type: ignore[arg-type]
    with pytest.raises(ClusterNotUp):
        inbox.run()


class QuietCluster:
    """An up cluster stand-in whose event stream waits and never yields."""

    def events(self) -> Iterator[tuple[int, Event]]:
        gevent.event.Event().wait()
        yield from ()


def test_a_sink_run_twice_at_once_raises_invalid_state() -> None:
    sink = StreamSink(QuietCluster(), client=FakeClient([]), stream=STREAM, commands=False)  # type: ignore[arg-type]
    running = gevent.spawn(sink.run)
    gevent.sleep(0)
    with pytest.raises(InvalidState, match="already running"):
        sink.run()
    assert sink.stop(timeout=1)
    running.join(timeout=5)
    assert running.successful()
