"""Backoff and identify spacing: values and injected clocks, no sleeping."""

from __future__ import annotations

import pytest

from gcluster.backoff import Backoff
from gcluster.queue import LocalQueue, NoOpQueue, Queue


def test_first_reconnect_is_immediate_then_grows_with_jitter_to_the_cap() -> None:
    policy = Backoff(base=1.0, factor=2.0, cap=10.0)
    assert policy.delay(lambda: 0.99) == 0.0
    delays_low = []
    delays_high = []
    for _ in range(8):
        policy = policy.increment()
        delays_low.append(policy.delay(lambda: 0.0))
        delays_high.append(policy.delay(lambda: 1.0))
    assert delays_low == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert delays_high == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    assert policy.reset().delay(lambda: 0.5) == 0.0


def test_backoff_is_immutable_and_validated() -> None:
    policy = Backoff()
    assert policy.increment() is not policy and policy.attempt == 0
    with pytest.raises(ValueError):
        Backoff(base=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_local_queue_spaces_each_bucket_and_runs_buckets_in_parallel() -> None:
    clock = FakeClock()
    queue = LocalQueue(max_concurrency=2, margin=0, clock=clock, sleep=clock.sleep)
    waits = [queue.reserve(shard) for shard in range(6)]
    # Buckets 0 (shards 0, 2, 4) and 1 (1, 3, 5) each go every 5 s.
    assert waits == [0.0, 0.0, 5.0, 5.0, 10.0, 10.0]
    clock.now += 60
    assert queue.reserve(0) == 0.0


def test_local_queue_request_sleeps_for_the_reserved_slot() -> None:
    clock = FakeClock()
    queue = LocalQueue(margin=0, clock=clock, sleep=clock.sleep)
    queue.request(0, 2)
    queue.request(1, 2)
    clock.now += 2
    queue.request(0, 2)
    assert clock.slept == [5.0, 8.0]


def test_local_queue_adds_its_margin_to_every_interval() -> None:
    clock = FakeClock()
    queue = LocalQueue(margin=0.05, clock=clock, sleep=clock.sleep)
    assert [queue.reserve(0) for _ in range(3)] == pytest.approx([0.0, 5.05, 10.1])


def test_queues_satisfy_the_protocol() -> None:
    assert isinstance(LocalQueue(), Queue) and isinstance(NoOpQueue(), Queue)
    with pytest.raises(ValueError):
        LocalQueue(max_concurrency=0)


class SleepingClock(FakeClock):
    """A fake clock whose sleep moves time forward."""

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_ratelimiter_keeps_slots_for_heartbeats_and_waits_for_the_window() -> None:
    from gcluster.ratelimit import CommandRatelimiter

    clock = SleepingClock()
    limiter = CommandRatelimiter(clock=clock, sleep=clock.sleep, heartbeat_interval=41.25)
    # 60 / 41.25 -> 2 heartbeats per window, plus one for op 1 requests.
    assert limiter.capacity == 117
    for _ in range(117):
        assert limiter.acquire(timeout=0)
    assert limiter.remaining() == 0
    assert not limiter.acquire(timeout=1.0)  # the oldest slot frees only at +60 s
    assert clock.slept == []
    assert limiter.acquire()  # waits for it
    # 60 s and the 1% margin that absorbs arrival jitter at the gateway.
    assert clock.slept == [pytest.approx(60.6)]
    assert limiter.remaining() == 116 and limiter.refill_in() == pytest.approx(60.6)


def test_ratelimiter_counts_heartbeats_and_resets_per_connection() -> None:
    from gcluster.ratelimit import CommandRatelimiter

    clock = SleepingClock()
    limiter = CommandRatelimiter(limit=10, period=60, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        limiter.heartbeat()
    assert limiter.remaining() == 6
    limiter.reset()
    assert limiter.remaining() == 10
    # A heartbeat interval so short it would need the whole window still leaves half.
    limiter.set_heartbeat_interval(0.01)
    assert limiter.capacity == 5
