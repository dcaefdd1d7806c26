"""The command rate limiter on a fake clock: window edges, timeouts, the heartbeats' share."""

from __future__ import annotations

import gevent
import pytest
from conftest import FakeClock
from gevent.event import Event

from gcluster.ratelimit import CommandRatelimiter


def limiter(clock: FakeClock, limit: int = 2, period: float = 100.0) -> CommandRatelimiter:
    # A period of 100 s makes the counted span (period + 1%) exactly 101 s.
    return CommandRatelimiter(limit, period, clock=clock, sleep=clock.sleep)


@pytest.mark.parametrize(
    ("limit", "period"), [(0, 60.0), (-1, 60.0), (120, 0.0), (120, -1.0), (0, 0.0)]
)
def test_invalid_limits_are_refused(limit: int, period: float) -> None:
    with pytest.raises(ValueError) as caught:
        CommandRatelimiter(limit, period)
    assert str(caught.value) == "a rate limit needs limit >= 1 and period > 0"


def test_the_smallest_limits_are_valid() -> None:
    clock = FakeClock()
    one = CommandRatelimiter(1, 0.5, clock=clock, sleep=clock.sleep)
    assert one.capacity == 1 and one.remaining() == 1
    assert one.acquire() and one.acquire()
    assert clock.slept == [pytest.approx(0.505)]


def test_no_heartbeat_interval_reserves_nothing() -> None:
    assert limiter(FakeClock(), limit=10).capacity == 10


def test_the_heartbeats_share_is_rounded_up_and_capped_at_half() -> None:
    rate = limiter(FakeClock(), limit=11, period=60.0)
    rate.set_heartbeat_interval(30.0)  # 2 heartbeats a window, and one spare
    assert rate.capacity == 8
    rate.set_heartbeat_interval(25.0)  # 2.4 -> 3, and one spare
    assert rate.capacity == 7
    rate.set_heartbeat_interval(0.001)  # would need every slot: half of 11, rounded down
    assert rate.capacity == 6
    rate.set_heartbeat_interval(0.0)
    assert rate.capacity == 11


def test_a_payload_counts_for_the_period_and_its_margin_exactly() -> None:
    clock = FakeClock()
    rate = limiter(clock, limit=1)
    assert rate.acquire(timeout=0)
    clock.now = 100.99
    assert rate.remaining() == 0
    clock.now = 101.0
    assert rate.remaining() == 1


def test_a_full_window_waits_for_its_oldest_payload() -> None:
    clock = FakeClock()
    rate = limiter(clock)
    assert rate.acquire(timeout=0)
    clock.now = 10.0
    assert rate.acquire(timeout=0)
    assert rate.refill_in() == 91.0
    assert rate.acquire()
    assert clock.slept == [91.0]  # until the first one stops counting, not the second
    assert clock.now == 101.0


def test_a_timeout_just_long_enough_waits_and_takes_the_slot() -> None:
    clock = FakeClock()
    rate = limiter(clock)
    assert rate.acquire(timeout=0) and rate.acquire(timeout=0)
    assert not rate.acquire(timeout=100.99)
    assert clock.slept == []
    assert rate.acquire(timeout=101.0)
    assert clock.slept == [101.0]


def test_refill_in() -> None:
    clock = FakeClock()
    rate = limiter(clock, limit=3)
    assert rate.refill_in() == 0.0  # nothing counted
    rate.heartbeat()
    clock.now = 100.5
    assert rate.refill_in() == 0.5
    clock.now = 101.0
    assert rate.refill_in() == 0.0
    assert rate.remaining() == 3


def test_heartbeats_count_but_never_wait() -> None:
    clock = FakeClock()
    rate = limiter(clock)
    for _ in range(5):
        rate.heartbeat()
    assert clock.slept == [] and rate.remaining() == 0
    assert not rate.acquire(timeout=0)


def test_a_waiting_command_holds_back_the_ones_after_it() -> None:
    # The first acquire() sleeps (on a gevent event, so the test controls
    # when it wakes); a second one with a timeout gives up at once.
    clock = FakeClock()
    wake = Event()

    def sleep(seconds: float) -> None:
        clock.slept.append(seconds)
        wake.wait()
        clock.now += seconds

    rate = CommandRatelimiter(1, 100.0, clock=clock, sleep=sleep)
    assert rate.acquire(timeout=0)
    first = gevent.spawn(rate.acquire)
    gevent.idle()
    assert clock.slept == [101.0]  # the first is waiting for the window
    with gevent.Timeout(1, AssertionError("acquire(timeout=0) blocked")):
        assert rate.acquire(timeout=0) is False
    wake.set()
    assert first.get(timeout=5) is True
