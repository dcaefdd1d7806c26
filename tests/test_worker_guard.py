"""StreamWorker's guard rails against a real redis-server (and a Redis Cluster).

What an operator runs into: a worker started while Redis is down, a worker
told to stop (SIGTERM) while it holds a batch, a dead worker's events and its
consumer left in the group, a worker on the wrong namespace. Workers run in
a greenlet of the test (the Redis calls go through gevent's thread pool), or
in a child process where a real signal is sent.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import redis
from gevent.event import Event as Flag
from redis_server import (  # noqa: F401 - fixtures
    RedisServer,
    free_port,
    raw_client,
    redis_server_fixture,
    redis_url_fixture,
    single_only,
)

from gcluster import Event, EventType, RequestGuildMembers, UpdatePresence
from gcluster.errors import ConfigError
from gcluster.redis import StreamError, StreamWorker, encode_event, inbox_key, shard_count_key

pytestmark = pytest.mark.extras

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 15.0
NAMESPACE = "t"
STREAM = "{t}:events"
GROUP = "g"

# Appends an event and reads it as a consumer, in one step: no other worker
# of the group, blocked on the stream, can take it first. The consumer then
# "dies": it never acknowledges.
PUBLISH_AND_READ = """
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
"""


# --- helpers ----------------------------------------------------------------------


def message(n: int) -> Event:
    return Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 0, n, {"n": n})


def publish(client: Any, numbers: range | list[int], key: str = STREAM) -> None:
    for n in numbers:
        client.xadd(key, encode_event(0, message(n)))


def wait_until(condition: Callable[[], Any], timeout: float = TIMEOUT) -> bool:
    """Poll `condition` (every 20 ms, letting other greenlets run) until true or `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.02)
    return True


class Running:
    """A worker's `events()` loop in a greenlet: what it got, when, and how it ended."""

    def __init__(
        self,
        worker: StreamWorker,
        on_event: Callable[[Running, Event], None] | None = None,
    ) -> None:
        self.worker = worker
        self.got: list[tuple[float, Event]] = []
        self.error: BaseException | None = None
        self.done = Flag()
        self.greenlet = gevent.spawn(self._run, on_event)

    def _run(self, on_event: Callable[[Running, Event], None] | None) -> None:
        try:
            for _, event in self.worker.events():
                self.got.append((time.monotonic(), event))
                if on_event is not None:
                    on_event(self, event)
        except Exception as err:  # noqa: BLE001 - the test looks at it
            self.error = err
        finally:
            self.done.set()

    def numbers(self) -> list[int]:
        return [event.sequence or 0 for _, event in self.got]

    def stop(self) -> bool:
        self.worker.stop()
        ended = self.done.wait(TIMEOUT)
        self.worker.close()
        return ended


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(
        worker: StreamWorker, on_event: Callable[[Running, Event], None] | None = None
    ) -> Running:
        loop = Running(worker, on_event)
        started.append(loop)
        return loop

    yield start
    for loop in started:
        loop.stop()
        loop.greenlet.kill(block=True, timeout=5)


def worker_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gcluster.redis.worker" and r.levelno == level
    ]


def consumers(client: Any, key: str = STREAM) -> dict[str, int]:
    """The group's consumers and their pending counts (none before the group exists)."""
    try:
        found = client.xinfo_consumers(key, GROUP)
    except redis.ResponseError:  # no such key, or no such group
        return {}
    return {_text(c["name"]): int(c["pending"]) for c in found}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def closed_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


# --- 1. Redis down at start -------------------------------------------------------------


def test_a_worker_started_while_redis_is_down_waits_for_it_with_one_warning(
    running: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gcluster.redis")
    url = closed_url()
    worker = StreamWorker(
        url, GROUP, "w", stream=STREAM, block=0.2, connect_timeout=0.2, timeout=1.0
    )
    loop = running(worker)
    server = RedisServer()
    server.port, server.url = int(url.rsplit(":", 1)[1].split("/")[0]), url
    try:
        assert wait_until(lambda: worker.stats().failures >= 3)
        assert not loop.done.is_set() and loop.error is None  # waiting, not dead
        server.start()
        client = server.client()
        publish(client, range(1, 4))
        assert wait_until(lambda: len(loop.got) == 3), loop.error
        assert loop.numbers() == [1, 2, 3]
        client.close()
    finally:
        assert loop.stop()
        server.stop()
    assert loop.error is None
    retrying = [line for line in worker_lines(caplog, logging.WARNING) if "retrying" in line]
    assert len(retrying) == 1, retrying
    assert retrying[0].startswith(f"stream worker: Redis at {url} failed: ")
    answers = [line for line in worker_lines(caplog, logging.INFO) if "answers again" in line]
    assert len(answers) == 1 and answers[0].startswith("stream worker: Redis answers again after")
    assert not any(r.exc_info for r in caplog.records)  # no traceback


def test_stop_ends_a_worker_waiting_for_redis_without_an_error(
    running: Callable[..., Running],
) -> None:
    worker = StreamWorker(closed_url(), GROUP, "w", block=0.2, connect_timeout=0.2, timeout=1.0)
    loop = running(worker)
    assert wait_until(lambda: worker.stats().failures >= 1)
    stopped_at = time.monotonic()
    assert loop.stop()
    # One connection attempt (with redis-py's two quick retries) at most.
    assert time.monotonic() - stopped_at < 5.0
    assert loop.error is None and loop.got == []


def test_a_key_that_is_not_a_stream_fails_at_once(redis_url: str) -> None:
    client = raw_client(redis_url)
    client.set(STREAM, "not a stream")
    worker = StreamWorker(redis_url, GROUP, "w", stream=STREAM, block=0.2)
    try:
        with gevent.Timeout(TIMEOUT), pytest.raises(StreamError) as caught:
            next(worker.events())
        assert "WRONGTYPE" in str(caught.value)
        assert "the key holds something other than a stream" in str(caught.value)
        assert worker.stats().failures == 0  # not retried
    finally:
        worker.close()
        client.close()


def test_events_after_stop_ends_at_once_without_calling_redis() -> None:
    worker = StreamWorker(closed_url(), GROUP, "w", connect_timeout=0.2)
    worker.stop()  # e.g. a SIGTERM before the loop started
    with gevent.Timeout(2):
        assert list(worker.events()) == []
    assert worker.stats().failures == 0


# --- 2. stopping with nothing left pending ------------------------------------------------


def test_stop_finishes_the_batch_in_hand_and_leaves_nothing_pending(
    redis_url: str, running: Callable[..., Running]
) -> None:
    client = raw_client(redis_url)
    publish(client, range(1, 11))
    worker = StreamWorker(redis_url, GROUP, "w", stream=STREAM, batch=10, block=0.2, claim_idle=60)
    pending_at_stop: list[int] = []

    def stop_at_first(loop: Running, event: Event) -> None:
        if event.sequence == 1:
            pending_at_stop.append(client.xpending(STREAM, GROUP)["pending"])
            loop.worker.stop()

    loop = running(worker, stop_at_first)
    try:
        assert loop.done.wait(TIMEOUT)
        assert loop.error is None
        assert pending_at_stop == [10]  # the whole batch was in hand
        assert loop.numbers() == list(range(1, 11))  # each handled once
        assert client.xpending(STREAM, GROUP)["pending"] == 0
        stats = worker.stats()
        assert (stats.received, stats.acked) == (10, 10)
    finally:
        client.close()


def test_stop_from_another_thread_ends_an_idle_worker_within_block(
    redis_url: str, running: Callable[..., Running]
) -> None:
    worker = StreamWorker(redis_url, GROUP, "w", stream=STREAM, block=0.5, claim_idle=60)
    loop = running(worker)
    client = raw_client(redis_url)
    try:
        assert wait_until(lambda: "w" in consumers(client))  # reading
        stopped_at = time.monotonic()
        threading.Thread(target=worker.stop).start()
        assert loop.done.wait(TIMEOUT)
        assert time.monotonic() - stopped_at < 0.5 + 2.0  # block, and room for a slow machine
        assert loop.error is None
    finally:
        client.close()


SIGNALLED_WORKER = """
import logging, signal, sys, time
import redis
from gcluster.redis import StreamWorker

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
url, stream = sys.argv[1], sys.argv[2]
log = redis.Redis.from_url(url)
worker = StreamWorker(url, "g", "w", stream=stream, batch=10, block=0.2, claim_idle=60)
worker.stop_on_signals(signal.SIGTERM, signal.SIGINT)
for _, event in worker.events():
    log.rpush("handled", event.sequence)
    if event.sequence == 1:
        # A slow handler: the rest of the batch waits in hand when SIGTERM comes.
        log.rpush("holding", 1)
        deadline = time.monotonic() + 30
        while not worker.stopped and time.monotonic() < deadline:
            time.sleep(0.01)
print(worker.stats().acked, flush=True)
"""


@single_only
def test_sigterm_stops_a_worker_holding_a_batch_with_nothing_pending(redis_url: str) -> None:
    client = raw_client(redis_url)
    publish(client, range(1, 11))
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED_WORKER, redis_url, STREAM],
        env=dict(os.environ, PYTHONPATH=path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: client.llen("holding") == 1 or child.poll() is not None)
        assert client.xpending(STREAM, GROUP)["pending"] == 10
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=TIMEOUT)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    log = err.decode()
    assert child.returncode == 0, log
    assert "Traceback" not in log
    assert "'w' stopped on SIGTERM" in log
    assert out.decode().strip() == "10"  # acknowledged
    assert [int(n) for n in client.lrange("handled", 0, -1)] == list(range(1, 11))
    assert client.xpending(STREAM, GROUP)["pending"] == 0
    client.close()


def test_stop_on_signals_stops_once_then_puts_the_previous_handler_back() -> None:
    seen: list[int] = []

    def previous(number: int, frame: Any) -> None:
        seen.append(number)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        worker = StreamWorker(closed_url(), GROUP, "w")
        worker.stop_on_signals(signal.SIGUSR1)
        assert signal.getsignal(signal.SIGUSR1) is not previous
        os.kill(os.getpid(), signal.SIGUSR1)
        assert wait_until(lambda: worker.stopped, timeout=5)
        assert signal.getsignal(signal.SIGUSR1) is previous
        assert seen == []
        os.kill(os.getpid(), signal.SIGUSR1)  # a second one goes where it went before
        assert wait_until(lambda: seen == [signal.SIGUSR1], timeout=5)
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_stop_on_signals_refuses_what_cannot_work() -> None:
    worker = StreamWorker(closed_url(), GROUP, "w")
    with pytest.raises(ConfigError, match="at least one signal"):
        worker.stop_on_signals()
    with pytest.raises(ConfigError, match="SIGKILL|signal"):
        worker.stop_on_signals(signal.SIGKILL)
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            worker.stop_on_signals(signal.SIGTERM)
        except ConfigError as err:
            errors.append(err)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(TIMEOUT)
    assert len(errors) == 1 and "main thread" in str(errors[0])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM)
    )
    assert not worker.stopped


# --- 3. claiming a dead worker's events ---------------------------------------------------


def test_a_dead_workers_event_is_claimed_soon_after_claim_idle(
    redis_url: str, running: Callable[..., Running]
) -> None:
    claim_idle = 1.0
    client = raw_client(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    publish_and_read = client.register_script(PUBLISH_AND_READ)
    worker = StreamWorker(
        redis_url, GROUP, "survivor", stream=STREAM, block=0.2, claim_idle=claim_idle
    )
    loop = running(worker)
    delays: list[tuple[float, float]] = []
    try:
        assert wait_until(lambda: "survivor" in consumers(client))
        for n in range(1, 4):
            if n > 1:
                # Out of step with a claim pass that would run every claim_idle
                # seconds: a pass just missed the event, the next comes late.
                gevent.sleep(0.2)
            before = time.monotonic()
            reply = publish_and_read(keys=[STREAM], args=[GROUP, "dead", *encode_fields(n)])
            after = time.monotonic()
            assert reply, "the dead consumer read nothing"
            assert wait_until(lambda n=n: len(loop.got) == n), loop.error
            claimed_at, event = loop.got[-1]
            assert event.sequence == n
            delays.append((claimed_at - after, claimed_at - before))
        for shortest, longest in delays:
            assert shortest >= claim_idle - 0.01  # not before it was due
            assert longest < 1.5 * claim_idle, delays  # the old pass every claim_idle/2 failed here
        assert worker.stats().claimed == 3
        assert consumers(client).get("dead", 0) == 0
    finally:
        client.close()


def encode_fields(n: int) -> list[Any]:
    flat: list[Any] = []
    for field, value in encode_event(0, message(n)).items():
        flat += [field, value]
    return flat


# --- 4. deleting dead consumers -----------------------------------------------------------


def test_dead_consumers_are_deleted_once_they_hold_nothing_and_live_ones_never(
    redis_url: str, running: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gcluster.redis")
    client = raw_client(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    client.xgroup_createconsumer(STREAM, GROUP, "idle")  # never read: holds nothing
    publish(client, [1, 2])
    assert client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=2)  # and dies
    dead_read_at = time.monotonic()

    # Two live workers, with no event of their own to read: each tidies the
    # group and must never delete the other.
    passes: list[tuple[float, dict[str, int]]] = []  # the group after each tidying pass
    workers = []
    for name in ("left", "right"):
        worker = StreamWorker(
            redis_url,
            GROUP,
            name,
            stream=STREAM,
            block=0.1,
            claim_idle=2.0,
            dead_consumer_idle=1.0,
        )
        tidy = worker._delete_dead_consumers  # noqa: SLF001 - watched, not replaced

        def watched(tidy: Callable[[], None] = tidy) -> None:
            tidy()
            passes.append((time.monotonic(), consumers(client)))

        worker._delete_dead_consumers = watched  # type: ignore[method-assign]  # noqa: SLF001
        workers.append(worker)
    loops = [running(worker) for worker in workers]
    try:
        # Claimed (after 2 s) and handled by one of them.
        assert wait_until(lambda: sum(len(loop.got) for loop in loops) == 2)
        assert sorted(n for loop in loops for n in loop.numbers()) == [1, 2]
        assert wait_until(lambda: "dead" not in consumers(client))
        assert client.xpending(STREAM, GROUP)["pending"] == 0  # nothing lost
        # Quiet for longer than dead_consumer_idle, and still there.
        quiet_since = time.monotonic()
        assert wait_until(lambda: passes[-1][0] > quiet_since + 1.5)
        assert set(consumers(client)) == {"left", "right"}
        stats = [worker.stats() for worker in workers]
        assert sum(s.claimed for s in stats) == 2
        assert sum(s.removed_consumers for s in stats) == 2  # "idle" and "dead", once each
        assert all(loop.error is None for loop in loops)
    finally:
        client.close()
    # Idle past dead_consumer_idle while it held its events: kept.
    kept = [found for at, found in passes if at > dead_read_at + 1.2 and found.get("dead") == 2]
    assert kept, passes
    assert all("idle" not in found for found in kept)  # gone by then: it held nothing
    assert all({"left", "right"} <= set(found) for _, found in passes)  # never deleted
    deleted = [line for line in worker_lines(caplog, logging.INFO) if "deleted consumer" in line]
    assert len(deleted) == 2
    assert any(line.startswith("stream worker: deleted consumer 'dead'") for line in deleted)


def test_dead_consumer_idle_must_outlast_a_read() -> None:
    with pytest.raises(ConfigError, match="dead_consumer_idle"):
        StreamWorker(closed_url(), GROUP, block=1.0, dead_consumer_idle=1.0)
    assert StreamWorker(closed_url(), GROUP, claim_idle=45).dead_consumer_idle == 90
    assert StreamWorker(closed_url(), GROUP, claim_idle=5).dead_consumer_idle == 60
    never = StreamWorker(closed_url(), GROUP, dead_consumer_idle=math.inf)
    assert math.isinf(never.dead_consumer_idle)


# --- 5. the namespace --------------------------------------------------------------------


def test_a_worker_on_a_namespace_no_gateway_runs_on_says_so_once_and_routes_nothing(
    redis_url: str, running: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gcluster.redis")
    client = raw_client(redis_url)
    worker = StreamWorker(redis_url, GROUP, "w", namespace="elsewhere", block=0.1, claim_idle=0.8)
    looks: list[float] = []
    look = worker._look_for_gateway  # noqa: SLF001 - watched, not replaced

    def watched() -> None:
        look()
        looks.append(time.monotonic())

    worker._look_for_gateway = watched  # type: ignore[method-assign]  # noqa: SLF001
    loop = running(worker)
    key = shard_count_key("elsewhere")
    try:
        assert wait_until(lambda: len(looks) >= 4)  # at start, then on claim passes
        assert worker_lines(caplog, logging.WARNING) == [
            "stream worker: no gateway process has run on namespace 'elsewhere' "
            "({elsewhere}:shards is absent): is --namespace / namespace= right? "
            "Reading {elsewhere}:events anyway"
        ]
        members = RequestGuildMembers(guild_id="81384788765712384", query="", limit=0)
        with pytest.raises(StreamError) as caught:
            worker.send_command(members)
        assert "namespace 'elsewhere'" in str(caught.value)
        assert "{elsewhere}:shards is absent" in str(caught.value)
        worker.command(0, UpdatePresence(status="idle"))  # by shard id: no count needed

        client.set(key, "many")
        with pytest.raises(StreamError, match=r"holds 'many', not a shard count"):
            worker.send_command(members)

        client.set(key, 4)
        assert wait_until(
            lambda: any("appeared" in line for line in worker_lines(caplog, logging.INFO))
        )
        worker.send_command(members)
        shard = (81384788765712384 >> 22) % 4
        assert client.xlen(inbox_key("elsewhere", shard)) == 1 + (shard == 0)
        assert wait_until(lambda: len(looks) >= 8)
        assert len(worker_lines(caplog, logging.WARNING)) == 1  # never repeated
        appeared = [line for line in worker_lines(caplog, logging.INFO) if "appeared" in line]
        assert appeared == [
            "stream worker: {elsewhere}:shards appeared: a gateway process runs on "
            "namespace 'elsewhere'"
        ]
        assert loop.error is None
    finally:
        client.close()


def test_a_worker_whose_namespace_has_a_gateway_does_not_warn(
    redis_url: str, running: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    client = raw_client(redis_url)
    client.set(shard_count_key(NAMESPACE), 2)
    worker = StreamWorker(redis_url, GROUP, "w", namespace=NAMESPACE, block=0.1)
    publish(client, [1])
    loop = running(worker)
    try:
        assert wait_until(lambda: len(loop.got) == 1), loop.error
        assert worker_lines(caplog, logging.WARNING) == []
    finally:
        client.close()
