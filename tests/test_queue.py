"""Identify queues: LocalQueue's daily budget on a fake clock, HttpQueue against a real server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import gevent
import pytest
from _ports import free_port
from conftest import FakeClock
from gevent.pywsgi import WSGIServer

from gcluster.errors import QueueError, SessionStartLimitExhausted
from gcluster.http import SessionStartLimit
from gcluster.queue import (
    SESSION_START_DAY,
    ConfigurableQueue,
    HttpQueue,
    LocalQueue,
    NoOpQueue,
    Queue,
)


def limit(
    remaining: int, total: int = 1000, reset_after: float = 100.0, concurrency: int = 1
) -> SessionStartLimit:
    return SessionStartLimit(
        total=total, remaining=remaining, reset_after=reset_after, max_concurrency=concurrency
    )


def local(clock: FakeClock, **options: Any) -> LocalQueue:
    # No margin: the arithmetic of the slots is what these tests check.
    return LocalQueue(margin=0, clock=clock, sleep=clock.sleep, **options)


# --- LocalQueue: the daily budget ----------------------------------------------


def test_each_grant_spends_a_start_and_the_spare_one_is_never_spent() -> None:
    clock = FakeClock(1000.0)
    queue = local(clock, session_start_limit=limit(4), interval=0)
    assert queue.remaining == 3  # one of the four is kept back
    for shard in range(3):
        queue.request(shard, 10)
    assert queue.remaining == 0
    clock.now += 40
    with pytest.raises(SessionStartLimitExhausted) as caught:
        queue.request(3, 10)
    assert (caught.value.remaining, caught.value.needed) == (0, 1)
    assert caught.value.reset_after == pytest.approx(60.0)
    assert clock.slept == []  # refused before waiting for a slot


def test_spare_can_be_changed_to_spend_everything() -> None:
    clock = FakeClock(1000.0)
    queue = local(clock, session_start_limit=limit(2), interval=0, spare=0)
    queue.request(0, 1)
    queue.request(0, 1)
    with pytest.raises(SessionStartLimitExhausted):
        queue.request(0, 1)


def test_check_budget_refuses_before_any_identify() -> None:
    clock = FakeClock(1000.0)
    queue = local(clock, session_start_limit=limit(5, reset_after=30.0))
    queue.check_budget(4)  # 5 remain, one is spare
    with pytest.raises(SessionStartLimitExhausted) as caught:
        queue.check_budget(5)
    assert (caught.value.remaining, caught.value.needed, caught.value.reset_after) == (4, 5, 30.0)
    assert queue.remaining == 4  # checking spends nothing


def test_an_unknown_budget_is_not_checked() -> None:
    clock = FakeClock(1000.0)
    queue = local(clock, interval=0)
    queue.check_budget(10_000)
    for _ in range(5):
        queue.request(0, 1)
    assert queue.remaining is None


def test_the_budget_refills_after_the_reset() -> None:
    clock = FakeClock(1000.0)
    queue = local(clock, session_start_limit=limit(2, total=50, reset_after=100.0), interval=0)
    queue.request(0, 1)
    with pytest.raises(SessionStartLimitExhausted):
        queue.request(0, 1)
    clock.now += 100
    assert queue.remaining == 49
    queue.request(0, 1)
    assert queue.remaining == 48
    # The new day lasts a day from when it began.
    clock.now += SESSION_START_DAY - 1
    assert queue.remaining == 48
    clock.now += 1
    assert queue.remaining == 49


def test_wait_for_reset_sleeps_until_the_next_day_and_keeps_bucket_spacing() -> None:
    clock = FakeClock(1000.0)
    queue = local(
        clock,
        session_start_limit=limit(3, total=10, reset_after=60.0),
        wait_for_reset=True,
        max_concurrency=1,
    )
    queue.check_budget(5)  # warns instead of raising
    delays = [queue.reserve(shard) for shard in range(5)]
    # Two starts are usable today (5 s apart); the rest wait for the reset at +60 s,
    # still 5 s apart within the bucket.
    assert delays == [0.0, 5.0, 60.0, 65.0, 70.0]
    assert queue.remaining == 6  # 10 - 1 spare - 3 spent from tomorrow's budget
    clock.now += 60
    assert queue.remaining == 6  # the day taken in advance does not refill again


def test_a_cancelled_wait_gives_its_start_back_and_holds_up_no_one() -> None:
    clock = FakeClock(1000.0)

    def killed(seconds: float) -> None:
        raise gevent.GreenletExit

    queue = LocalQueue(
        session_start_limit=limit(10),
        margin=0,
        clock=clock,
        sleep=killed,
        max_concurrency=1,
    )
    queue.request(0, 2)  # no wait: granted
    with pytest.raises(gevent.GreenletExit):
        queue.request(1, 2)  # waits 5 s, killed
    assert queue.remaining == 8
    # The next shard just takes the slot after the empty one.
    assert queue.reserve(0) == 10.0


def test_a_killed_waiter_does_not_block_the_bucket() -> None:
    queue = LocalQueue(max_concurrency=1, interval=0.1)
    granted: list[int] = []

    def identify(shard: int) -> None:
        queue.request(shard, 3)
        granted.append(shard)

    first = gevent.spawn(identify, 0)
    second = gevent.spawn(identify, 1)
    third = gevent.spawn(identify, 2)
    gevent.sleep(0.02)
    second.kill()
    with gevent.Timeout(2):
        gevent.joinall([first, third])
    assert granted == [0, 2]


def test_configure_fills_in_what_was_not_given() -> None:
    clock = FakeClock(1000.0)
    queue = local(clock)
    assert queue.max_concurrency == 1 and queue.remaining is None
    queue.configure(4, limit(20, concurrency=4))
    assert queue.max_concurrency == 4 and queue.remaining == 19

    given = local(clock, max_concurrency=2, session_start_limit=limit(5))
    given.configure(16, limit(900, concurrency=16))
    assert given.max_concurrency == 2 and given.remaining == 4

    from_limit = local(clock, session_start_limit=limit(5, concurrency=8))
    assert from_limit.max_concurrency == 8


def test_queue_protocols() -> None:
    assert isinstance(LocalQueue(), ConfigurableQueue)
    assert isinstance(NoOpQueue(), Queue) and not isinstance(NoOpQueue(), ConfigurableQueue)
    assert isinstance(HttpQueue("http://127.0.0.1:1"), Queue)
    with pytest.raises(ValueError):
        LocalQueue(spare=-1)
    with pytest.raises(ValueError):
        HttpQueue("gateway-queue:5000")


# --- HttpQueue against a local gateway-queue ----------------------------------


class GatewayQueueServer:
    """The gateway-queue protocol: `GET /?shard=N` answers once shard N may identify."""

    def __init__(self, max_concurrency: int, interval: float) -> None:
        self.queue = LocalQueue(max_concurrency=max_concurrency, interval=interval)
        self.grants: list[tuple[int, float]] = []
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            shard = int(query["shard"][0])
        except (KeyError, ValueError):
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"shard missing"]
        if shard == 99:  # scripted: a queue that has failed
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"down"]
        if shard == 98:  # scripted: a queue that never answers
            gevent.sleep(30)
        self.queue.request(shard, 0)
        self.grants.append((shard, time.monotonic()))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"message": "You may identify now"}).encode()]


@pytest.fixture
def gateway_queue() -> Iterator[GatewayQueueServer]:
    server = GatewayQueueServer(max_concurrency=2, interval=0.3)
    server.server.start()
    yield server
    server.server.stop(timeout=1)


def test_http_queue_waits_for_the_service_and_keeps_bucket_spacing(
    gateway_queue: GatewayQueueServer,
) -> None:
    queue = HttpQueue(gateway_queue.url, timeout=5)
    returned: dict[int, float] = {}

    def identify(shard: int) -> None:
        queue.request(shard, 6)
        returned[shard] = time.monotonic()

    with gevent.Timeout(10):
        gevent.joinall([gevent.spawn(identify, shard) for shard in range(6)], raise_error=True)
    queue.close()
    assert sorted(shard for shard, _ in gateway_queue.grants) == list(range(6))
    for bucket in (0, 1):
        times = sorted(t for shard, t in gateway_queue.grants if shard % 2 == bucket)
        assert all(b - a >= 0.3 - 0.005 for a, b in zip(times, times[1:], strict=False))
    for shard, granted in gateway_queue.grants:
        assert returned[shard] >= granted  # nobody went before the service said so


def test_http_queue_raises_on_an_error_answer(gateway_queue: GatewayQueueServer) -> None:
    queue = HttpQueue(gateway_queue.url)
    with pytest.raises(QueueError, match="503"):
        queue.request(99, 100)
    queue.close()


def test_http_queue_raises_when_the_grant_takes_longer_than_the_timeout(
    gateway_queue: GatewayQueueServer,
) -> None:
    queue = HttpQueue(gateway_queue.url, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(QueueError) as caught:
        queue.request(98, 100)
    assert time.monotonic() - started < 2
    assert caught.value.__cause__ is not None
    queue.close()


def test_http_queue_raises_when_nothing_listens() -> None:

    queue = HttpQueue(f"http://127.0.0.1:{free_port()}", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(QueueError, match="failed for shard 3") as caught:
        queue.request(3, 4)
    assert time.monotonic() - started < 2
    assert caught.value.__cause__ is not None
    queue.close()
