"""The Dispatcher: bounded concurrency, per-key order, failures, backpressure and stopping."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gevent
import pytest
from conftest import TIMEOUT, wait_for
from gevent.event import Event as Flag
from gevent.queue import Queue

from gcluster import ConfigError, Event, EventType, GatewayClosedError, Intents
from gcluster.cluster import Cluster
from gcluster.dispatch import Dispatcher, Handler
from gcluster.testing import STREAM_INTENTS, STREAM_KINDS, GatewaySimulator, event_number

MakeSim = Callable[..., GatewaySimulator]
SHARDS = 4
STREAM = [EventType(name) for name in STREAM_KINDS]


@pytest.fixture
def sim(make_sim: MakeSim) -> GatewaySimulator:
    return make_sim(shards=SHARDS, max_concurrency=SHARDS)


@pytest.fixture
def cluster(sim: GatewaySimulator) -> Iterator[Cluster]:
    cluster = Cluster(sim.token, Intents.GUILDS | STREAM_INTENTS, api_base=sim.api_base)
    cluster.up(timeout=TIMEOUT)
    assert cluster.wait_until_ready(TIMEOUT)
    yield cluster
    cluster.down()


class FakeSource:
    """An event source fed by the test; `end()` ends the stream, `fail(err)` raises from it."""

    def __init__(self) -> None:
        self.queue: Queue = Queue()

    def put(self, shard_id: int, kind: EventType, sequence: int, **data: object) -> None:
        event = Event(kind=kind, name=kind.value, shard_id=shard_id, sequence=sequence, data=data)
        self.queue.put((shard_id, event))

    def end(self) -> None:
        self.queue.put(None)

    def fail(self, error: Exception) -> None:
        self.queue.put(error)

    def events(self) -> Iterator[tuple[int, Event]]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item


class Concurrency:
    """Counts handlers running at once, as the handlers themselves see it."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def leave(self) -> None:
        self.now -= 1


def test_a_thousand_slow_events_are_all_handled_within_the_pool_bound(
    sim: GatewaySimulator, cluster: Cluster
) -> None:
    dispatcher = Dispatcher(cluster, pool_size=25)
    running = Concurrency()
    seen: dict[int, list[int]] = defaultdict(list)

    @dispatcher.on(*STREAM)
    def slow(shard_id: int, event: Event) -> None:
        running.enter()
        try:
            gevent.sleep(0.005)
            number = event_number(event.data)
            assert number is not None
            seen[shard_id].append(number)
        finally:
            running.leave()

    runner = gevent.spawn(dispatcher.run)
    for shard_id in range(SHARDS):
        sim.send_events(shard_id, 250)
    wait_for(lambda: sum(len(numbers) for numbers in seen.values()) == 1000)

    assert 1 < running.most <= 25
    stats = dispatcher.stats()
    assert stats.peak_events_in_flight == running.most
    assert stats.events_handled == 1000
    assert stats.calls_returned == 1000 and stats.calls_failed == 0
    for shard_id in range(SHARDS):
        assert sorted(seen[shard_id]) == list(range(1, 251))
    assert dispatcher.stop(timeout=TIMEOUT)
    assert runner.join(TIMEOUT) is None and runner.dead
    assert dispatcher.stats().events_in_flight == 0


@pytest.mark.parametrize("ordering", ["shard", "guild", "channel"])
def test_events_of_one_key_are_handled_in_order(
    sim: GatewaySimulator, cluster: Cluster, ordering: str
) -> None:
    dispatcher = Dispatcher(cluster, pool_size=10, ordering=ordering)  # type: ignore[arg-type]
    running = Concurrency()
    by_key: dict[object, list[int]] = defaultdict(list)
    done = []
    rng = random.Random(7)

    @dispatcher.on(*STREAM)
    def handler(shard_id: int, event: Event) -> None:
        running.enter()
        try:
            # Uneven delays: without the ordering, later events would overtake.
            gevent.sleep(rng.random() * 0.004)
            number = event_number(event.data)
            assert number is not None
            by_key[dispatcher.key(shard_id, event)].append(number)
            done.append(number)
        finally:
            running.leave()

    runner = gevent.spawn(dispatcher.run)
    for shard_id in range(SHARDS):
        sim.send_events(shard_id, 100)
    wait_for(lambda: len(done) == 400)
    assert dispatcher.stop(timeout=TIMEOUT)
    runner.join(TIMEOUT)

    for key, numbers in by_key.items():
        assert numbers == sorted(numbers), key
    # PRESENCE_UPDATE has no channel: with "channel" it falls back to its guild.
    expected = {"channel", "guild"} if ordering == "channel" else {ordering}
    assert {key[0] for key in by_key} == expected  # type: ignore[index]
    assert 1 < running.most <= 10  # different keys ran side by side
    if ordering == "shard":
        assert running.most <= SHARDS


def test_the_ordering_key_falls_back_sensibly() -> None:
    def event(kind: EventType, **data: object) -> Event:
        return Event(kind=kind, name=kind.value, shard_id=3, sequence=1, data=data)

    message = event(EventType.MESSAGE_CREATE, guild_id="10", channel_id="20")
    dm = event(EventType.MESSAGE_CREATE, channel_id="21")
    channel = event(EventType.CHANNEL_UPDATE, id="22", guild_id="10")
    member = event(EventType.GUILD_MEMBER_ADD, guild_id="10")
    lifecycle = event(EventType.SHARD_CONNECTED)
    by_guild = Dispatcher(FakeSource(), ordering="guild")
    by_channel = Dispatcher(FakeSource(), ordering="channel")
    by_shard = Dispatcher(FakeSource(), ordering="shard")

    assert by_guild.key(3, message) == ("guild", "10")
    assert by_guild.key(3, dm) == ("channel", "21")
    assert by_guild.key(3, lifecycle) == ("shard", 3)
    assert by_channel.key(3, message) == ("channel", "20")
    assert by_channel.key(3, channel) == ("channel", "22")
    assert by_channel.key(3, member) == ("guild", "10")
    assert by_channel.key(3, lifecycle) == ("shard", 3)
    assert by_shard.key(3, message) == ("shard", 3)
    assert Dispatcher(FakeSource()).key(3, message) is None


def test_a_raising_handler_is_logged_and_counted_and_the_rest_go_on(
    sim: GatewaySimulator, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = Dispatcher(cluster, pool_size=10, ordering="channel")
    counted = []

    @dispatcher.on(EventType.MESSAGE_CREATE)
    def broken(shard_id: int, event: Event) -> None:
        raise ValueError(f"cannot handle {event.sequence}")

    @dispatcher.on(*STREAM)
    def counter(shard_id: int, event: Event) -> None:
        counted.append(event_number(event.data))

    runner = gevent.spawn(dispatcher.run)
    with caplog.at_level(logging.ERROR, logger="gcluster.dispatch"):
        sim.send_events(1, 50)  # 10 of them are MESSAGE_CREATE
        wait_for(lambda: len(counted) == 50)
    assert dispatcher.stop(timeout=TIMEOUT)
    runner.join(TIMEOUT)

    assert sorted(counted) == list(range(1, 51))  # type: ignore[type-var]
    stats = dispatcher.stats()
    assert stats.calls_failed == 10 and stats.calls_returned == 50
    assert stats.events_handled == 50
    records = [r for r in caplog.records if r.name == "gcluster.dispatch"]
    assert len(records) == 10
    first = records[0]
    assert first.shard_id == 1 and first.event_name == "MESSAGE_CREATE"  # type: ignore[attr-defined]
    assert isinstance(first.sequence, int)  # type: ignore[attr-defined]
    message = first.getMessage()
    assert "shard 1" in message and "MESSAGE_CREATE" in message
    assert f"sequence {first.sequence}" in message  # type: ignore[attr-defined]
    assert first.exc_info is not None and first.exc_info[0] is ValueError


@contextmanager
def no_logging_configured() -> Iterator[None]:
    """Logging as an application that configured none sees it: gcluster's NullHandler only.

    pytest's own handlers on the root logger are set aside meanwhile.
    """
    root = logging.getLogger()
    saved = list(root.handlers)
    for handler in saved:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in saved:
            root.addHandler(handler)


class Records(logging.Handler):
    """What an application's own logging handler would receive."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_one_failing_event(dispatcher: Dispatcher, source: FakeSource) -> None:
    """Dispatch one MESSAGE_CREATE (shard 2, sequence 7) to a handler that raises."""

    @dispatcher.on(EventType.MESSAGE_CREATE)
    def broken(shard_id: int, event: Event) -> None:
        raise ValueError("cannot handle it")

    source.put(2, EventType.MESSAGE_CREATE, 7, channel_id="5")
    source.end()
    with gevent.Timeout(TIMEOUT):
        dispatcher.run()


def test_with_nothing_configured_a_failure_is_printed_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = FakeSource()
    dispatcher = Dispatcher(source)
    with no_logging_configured():
        run_one_failing_event(dispatcher, source)

    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert "ValueError: cannot handle it" in err
    assert "broken failed: shard 2, event MESSAGE_CREATE, sequence 7" in err
    assert dispatcher.stats().calls_failed == 1


@pytest.mark.parametrize("where", ["gcluster", "gcluster.dispatch", ""])
def test_with_logging_configured_a_failure_is_logged_not_printed(
    capsys: pytest.CaptureFixture[str], where: str
) -> None:
    source = FakeSource()
    dispatcher = Dispatcher(source)
    handler = Records()
    logger = logging.getLogger(where)  # "" is the root logger: logging.basicConfig()
    with no_logging_configured():
        logger.addHandler(handler)
        try:
            run_one_failing_event(dispatcher, source)
        finally:
            logger.removeHandler(handler)

    assert capsys.readouterr().err == ""
    [record] = handler.records
    assert record.name == "gcluster.dispatch" and record.levelno == logging.ERROR
    assert "shard 2, event MESSAGE_CREATE, sequence 7" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError


def test_a_handler_on_a_logger_that_does_not_propagate_there_does_not_count(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = FakeSource()
    dispatcher = Dispatcher(source)
    handler = Records()
    root, library = logging.getLogger(), logging.getLogger("gcluster")
    with no_logging_configured():
        root.addHandler(handler)
        library.propagate = False
        try:
            run_one_failing_event(dispatcher, source)
        finally:
            library.propagate = True
            root.removeHandler(handler)

    assert handler.records == []
    assert "ValueError: cannot handle it" in capsys.readouterr().err


def test_an_error_hook_gets_the_failure_instead(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    source = FakeSource()
    told: list[tuple[int, Event, Handler, BaseException]] = []
    dispatcher = Dispatcher(source, on_error=lambda *failure: told.append(failure))
    with caplog.at_level(logging.DEBUG, logger="gcluster.dispatch"):
        run_one_failing_event(dispatcher, source)

    [(shard_id, event, handler, error)] = told
    assert (shard_id, event.name, event.sequence) == (2, "MESSAGE_CREATE", 7)
    assert getattr(handler, "__name__", None) == "broken"
    assert isinstance(error, ValueError) and str(error) == "cannot handle it"
    assert [r for r in caplog.records if r.name == "gcluster.dispatch"] == []
    assert capsys.readouterr().err == ""
    assert dispatcher.stats().calls_failed == 1


def test_an_error_hook_that_raises_is_reported_with_the_handlers_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = FakeSource()

    def on_error(shard_id: int, event: Event, handler: Handler, error: BaseException) -> None:
        raise RuntimeError("the hook broke too")

    dispatcher = Dispatcher(source, on_error=on_error)
    with no_logging_configured():
        run_one_failing_event(dispatcher, source)

    err = capsys.readouterr().err
    assert "ValueError: cannot handle it" in err
    assert "RuntimeError: the hook broke too" in err
    assert "broken failed: shard 2, event MESSAGE_CREATE, sequence 7" in err


def test_stats_count_events_and_handler_calls_apart() -> None:
    source = FakeSource()
    dispatcher = Dispatcher(source, on_error=lambda *failure: None)

    @dispatcher.on(EventType.MESSAGE_CREATE)
    def fails(shard_id: int, event: Event) -> None:
        raise ValueError("no")

    @dispatcher.on_any
    def returns(shard_id: int, event: Event) -> None:
        pass

    source.put(0, EventType.MESSAGE_CREATE, 1, channel_id="5")
    source.put(0, EventType.MESSAGE_CREATE, 2, channel_id="5")
    source.put(0, EventType.TYPING_START, 3, channel_id="5")
    source.end()
    with gevent.Timeout(TIMEOUT):
        dispatcher.run()

    stats = dispatcher.stats()
    assert (stats.events_received, stats.events_handled) == (3, 3)
    assert (stats.calls_returned, stats.calls_failed) == (3, 2)
    assert (stats.events_in_flight, stats.events_pending) == (0, 0)


def test_a_slow_handler_delays_neither_heartbeats_nor_other_events(
    sim: GatewaySimulator, cluster: Cluster
) -> None:
    dispatcher = Dispatcher(cluster, pool_size=10)
    release = Flag()
    others = []

    @dispatcher.on(EventType.MESSAGE_CREATE)
    def stuck(shard_id: int, event: Event) -> None:
        if event_number(event.data) == 1:
            release.wait()

    @dispatcher.on(EventType.MESSAGE_UPDATE, EventType.TYPING_START)
    def quick(shard_id: int, event: Event) -> None:
        others.append(event_number(event.data))

    runner = gevent.spawn(dispatcher.run)
    sim.send_events(0, 20)
    wait_for(lambda: len(others) == 8)  # every other kind, while #1 is still stuck
    assert dispatcher.stats().events_in_flight == 1
    acked = len(sim.records.heartbeats)
    # The simulator asks for a heartbeat every 0.5 s: they go on meanwhile.
    assert sim.wait_until(lambda: len(sim.records.heartbeats) >= acked + 2 * SHARDS, TIMEOUT)
    assert all(info.stage.value == "connected" for info in cluster.info().values())
    assert len(sim.records.identifies) == SHARDS and not sim.records.resumes
    release.set()
    assert dispatcher.stop(timeout=TIMEOUT)
    runner.join(TIMEOUT)


def test_a_backlog_stays_in_the_cluster_not_in_the_dispatcher(
    sim: GatewaySimulator, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    dispatcher = Dispatcher(cluster, pool_size=2, ordering="shard", max_pending=10)
    release = Flag()
    seen = []

    @dispatcher.on(*STREAM)
    def blocked(shard_id: int, event: Event) -> None:
        release.wait()
        seen.append(event_number(event.data))

    runner = gevent.spawn(dispatcher.run)
    with caplog.at_level(logging.WARNING, logger="gcluster.dispatch"):
        sim.send_events(2, 100)
        wait_for(lambda: cluster.info()[2].sequence == 101)  # READY + all 100 received
        wait_for(lambda: dispatcher.stats().events_pending == 10)
        stats = dispatcher.stats()
        assert stats.events_in_flight == 1 and stats.events_handled == 0
        # One handled, ten waiting, one in the reader's hands: the rest wait in the cluster.
        assert cluster.backlog >= 100 - 12
    assert any("paused reading" in r.getMessage() for r in caplog.records)
    release.set()
    wait_for(lambda: len(seen) == 100)
    assert seen == list(range(1, 101))
    assert dispatcher.stats().events_pending == 0
    assert dispatcher.stop(timeout=TIMEOUT)
    runner.join(TIMEOUT)


def test_stop_wakes_an_idle_reader_without_taking_an_event(
    sim: GatewaySimulator, cluster: Cluster
) -> None:
    dispatcher = Dispatcher(cluster)
    dispatcher.on_any(lambda shard_id, event: None)
    runner = gevent.spawn(dispatcher.run)
    wait_for(lambda: dispatcher.stats().events_received >= 3 * SHARDS)  # what up() queued
    assert dispatcher.stop(timeout=TIMEOUT)
    assert runner.join(TIMEOUT) is None and runner.dead
    received = dispatcher.stats().events_received
    # The cluster is still up, and what comes next is read by whoever reads next.
    sim.send_events(0, 3)
    got = []
    with gevent.Timeout(TIMEOUT):
        for _, event in cluster.events():
            if event.sequence is not None:
                got.append(event_number(event.data))
            if len(got) == 3:
                break
    assert got == [1, 2, 3]
    assert dispatcher.stats().events_received == received


def test_stop_waits_for_running_handlers_within_its_timeout() -> None:
    source = FakeSource()
    dispatcher = Dispatcher(source, pool_size=4)
    release = Flag()
    finished = []

    @dispatcher.on(EventType.MESSAGE_CREATE)
    def handler(shard_id: int, event: Event) -> None:
        release.wait()
        finished.append(event.sequence)

    runner = gevent.spawn(dispatcher.run)
    for sequence in range(3):
        source.put(0, EventType.MESSAGE_CREATE, sequence)
    wait_for(lambda: dispatcher.stats().events_in_flight == 3)
    assert dispatcher.stop(timeout=0.1) is False
    release.set()
    assert dispatcher.stop(timeout=TIMEOUT) is True
    assert sorted(finished) == [0, 1, 2]
    runner.join(TIMEOUT)
    assert runner.dead


def test_run_returns_when_the_stream_ends_after_the_handlers_finish() -> None:
    source = FakeSource()
    dispatcher = Dispatcher(source, pool_size=4, ordering="guild")
    finished = []

    @dispatcher.on(EventType.MESSAGE_CREATE)
    def handler(shard_id: int, event: Event) -> None:
        gevent.sleep(0.01)
        finished.append(event.sequence)

    for sequence in range(10):
        source.put(0, EventType.MESSAGE_CREATE, sequence, guild_id=str(sequence % 2))
    source.end()
    with gevent.Timeout(TIMEOUT):
        dispatcher.run()
    assert sorted(finished) == list(range(10))
    assert dispatcher.stats().events_in_flight == 0


def test_run_raises_what_the_stream_raises_once_handlers_finish() -> None:
    source = FakeSource()
    dispatcher = Dispatcher(source)
    finished = []

    @dispatcher.on_any
    def handler(shard_id: int, event: Event) -> None:
        gevent.sleep(0.01)
        finished.append(event.sequence)

    source.put(0, EventType.MESSAGE_CREATE, 1)
    source.fail(GatewayClosedError(0, 4004, "Authentication failed."))
    with gevent.Timeout(TIMEOUT), pytest.raises(GatewayClosedError):
        dispatcher.run()
    assert finished == [1]


def test_stop_before_run_makes_run_return_at_once() -> None:
    dispatcher = Dispatcher(FakeSource())
    assert dispatcher.stop(timeout=1)
    with gevent.Timeout(1):
        dispatcher.run()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError):
        Dispatcher(FakeSource(), pool_size=0)
    with pytest.raises(ConfigError):
        Dispatcher(FakeSource(), ordering="user")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Dispatcher(FakeSource(), max_pending=0)
    dispatcher = Dispatcher(FakeSource())
    with pytest.raises(TypeError):
        dispatcher.on()
    with pytest.raises(TypeError):
        dispatcher.on("MESSAGE_CREATE")  # type: ignore[arg-type]
