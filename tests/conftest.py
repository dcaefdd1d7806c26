"""Shared helpers of the loopback tier: a simulator per test and bounded event collection."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
import pytest

from gcluster.backends import ZSTD_MODULES, Backend, zstd_backend
from gcluster.events import Event
from gcluster.testing import GatewaySimulator, event_number

# Generous: a loaded CI machine is slow, and a passing test never waits this long.
TIMEOUT = 15.0


# Each zstd library gcluster can use on this Python: the standard library's on
# 3.14+, and the ones the test extra installs (marked: CI's run without
# extras deselects them, so none is ever skipped where it should run).
ZSTD_LIBRARIES = [
    *(["compression.zstd"] if sys.version_info >= (3, 14) else []),
    *(
        [pytest.param("backports.zstd", marks=pytest.mark.extras)]
        if sys.version_info < (3, 14)
        else []
    ),
    pytest.param("zstandard", marks=pytest.mark.extras),
]


@pytest.fixture(params=ZSTD_LIBRARIES)
def zstd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Each zstd library in turn, the others hidden: both the client and the
    in-process simulator use it."""
    backend = zstd_backend(request.param)
    assert backend is not None, f"{request.param} is not installed"
    for name, _ in ZSTD_MODULES:
        if name != request.param:
            # None in sys.modules makes `import name` raise ImportError.
            monkeypatch.setitem(sys.modules, name, None)
    return backend


@pytest.fixture
def make_sim() -> Iterator[Callable[..., GatewaySimulator]]:
    """Start simulators with the given options; all are stopped after the test."""
    started: list[GatewaySimulator] = []

    def make(**options: Any) -> GatewaySimulator:
        options.setdefault("heartbeat_interval", 0.5)
        sim = GatewaySimulator(**options).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


def wait_for(predicate: Callable[[], object], timeout: float = TIMEOUT) -> None:
    """Wait cooperatively until `predicate()` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        gevent.sleep(0.01)


def collect(
    events: Iterable[tuple[int, Event]],
    until: Callable[[list[tuple[int, Event]]], bool],
    timeout: float = TIMEOUT,
) -> list[tuple[int, Event]]:
    """Read events until `until(received)` holds; fail the test after `timeout` seconds."""
    received: list[tuple[int, Event]] = []
    with gevent.Timeout(timeout, AssertionError(f"condition not met within {timeout} s")):
        for item in events:
            received.append(item)
            if until(received):
                break
    return received


def numbers(received: Iterable[tuple[int, Event]], shard_id: int) -> list[int]:
    """The simulator's per-shard event numbers, in the order they arrived."""
    found = []
    for sid, event in received:
        if sid == shard_id and event.sequence is not None and isinstance(event.data, dict):
            n = event_number(event.data)
            if n is not None:
                found.append(n)
    return found


def has_numbers(shard_ids: Iterable[int], count: int) -> Callable[[list[tuple[int, Event]]], bool]:
    """`until` for `collect`: every shard has delivered numbered events up to `count`."""
    wanted = set(shard_ids)
    highest: dict[int, int] = {}

    def until(received: list[tuple[int, Event]]) -> bool:
        sid, event = received[-1]
        if sid in wanted and isinstance(event.data, dict):
            n = event_number(event.data)
            if n is not None:
                highest[sid] = max(highest.get(sid, 0), n)
        return all(highest.get(s, 0) >= count for s in wanted)

    return until


def assert_exactly_once_in_order(
    received: list[tuple[int, Event]], shard_ids: Iterable[int], count: int
) -> None:
    """Each shard delivered its numbered events 1..count once each, in order,
    with strictly increasing sequences, and nothing came from other shards."""
    wanted = set(shard_ids)
    for shard_id in wanted:
        assert numbers(received, shard_id) == list(range(1, count + 1))
        sequences = [
            e.sequence for sid, e in received if sid == shard_id and e.sequence is not None
        ]
        assert sequences == sorted(sequences) and len(sequences) == len(set(sequences))
    assert {sid for sid, _ in received} == wanted


class FakeClock:
    """A clock that only moves when something sleeps on it, recording each sleep.

    Call it for the time; pass `sleep` where a policy waits (identify queues,
    the send budget), so schedules are tested without sleeping.
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
