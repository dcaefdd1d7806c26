"""ThreadedCluster and its HubThread: gcluster from ordinary threads, without gevent.

The loopback test runs the application in a child process that never imports
gevent itself nor monkey-patches: the simulator lives in this test's hub, and
a thread of this process blocked on the child would stall it, so the child is
awaited through `gevent.subprocess`. Tests of start-up failures run the
simulator in a `HubThread` of its own instead, so this thread may block on the
cluster; the others need no gateway.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from conftest import TIMEOUT
from gevent import subprocess

from gcluster import (
    AuthenticationFailed,
    ClusterBuilder,
    ClusterNotUp,
    ClusterStartError,
    ClusterStartErrorType,
    CommandSendingError,
    ConfigError,
    DisallowedIntents,
    Event,
    EventType,
    Intents,
    InvalidState,
    MemorySessionStore,
    Message,
    RequestGuildMembers,
    ResumeSession,
    SessionStartLimitExhausted,
    ShardNonexistent,
    Stage,
    UpdatePresence,
)
from gcluster.testing import STREAM_INTENTS, GatewaySimulator, SimulatorProcess, event_number
from gcluster.testing.simulator import serving_in_thread
from gcluster.threaded import (
    HubThread,
    HubThreadStopped,
    ThreadedCluster,
    ThreadedClusterBuilder,
    ThreadedClusterTimeout,
    ThreadedShard,
)

MakeSim = Callable[..., GatewaySimulator]
ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "http://127.0.0.1:9/api/v10"

# The application: plain threads only. It prints "ready", waits for a line on
# stdin (the test has sent the events by then), and prints one JSON result.
CHILD = r"""
import json
import sys
import threading
import time

from gcluster import (
    EventType, Intents, RequestGuildMembers, ShardNonexistent, UpdatePresence, shard_for_guild,
)
from gcluster.testing import STREAM_INTENTS, event_number
from gcluster.threaded import ThreadedCluster

api_base, token, shards, per_shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
result = {}


def work():
    cluster = ThreadedCluster(
        token, Intents.GUILDS | Intents.GUILD_MEMBERS | STREAM_INTENTS, api_base=api_base,
        event_buffer=8,
    )
    cluster.up(timeout=15)
    result["ready"] = cluster.wait_until_ready(15)
    print("ready", flush=True)
    sys.stdin.readline()
    time.sleep(1.0)  # a slow application: the events wait, the heartbeats go on
    events = cluster.events()
    numbers = {shard_id: [] for shard_id in range(shards)}
    guilds = {}
    for shard_id, event in events:
        if event.kind is EventType.READY:
            guilds[shard_id] = int(event.data["guilds"][0]["id"])
        elif event.sequence is not None and event_number(event.data) is not None:
            numbers[shard_id].append(event_number(event.data))
        if all(len(n) == per_shard for n in numbers.values()):
            break
    result["numbers"] = numbers
    guild_id = guilds[shards - 1]
    shard_id = shard_for_guild(guild_id, cluster.total)
    cluster.command(shard_id, RequestGuildMembers(guild_id=guild_id, query="", nonce="threaded"))
    cluster.command(0, UpdatePresence(status="idle"))
    result["asked"] = {"guild": guild_id, "shard": shard_id}
    for chunk_shard, event in events:
        if event.kind is EventType.GUILD_MEMBERS_CHUNK:
            result["chunk_shard"] = chunk_shard
            break
    result["info"] = {
        str(i.id): {"stage": i.stage.value, "session": i.session_id, "sequence": i.sequence}
        for i in cluster.info().values()
    }
    try:
        cluster.command(99, UpdatePresence())
    except ShardNonexistent as err:
        result["error"] = [type(err).__name__, err.shard_id, threading.current_thread().name]
    # down() from another thread ends this thread's loop.
    stopper = threading.Thread(target=cluster.down, name="stopper")
    stopper.start()
    result["after_down"] = sorted({event.name for _, event in events})
    stopper.join(15)
    result["info_after_down"] = sorted({i.stage.value for i in cluster.info().values()})


worker = threading.Thread(target=work, name="worker")
worker.start()
worker.join(30)
result["worker_done"] = not worker.is_alive()
result["threads"] = sorted(t.name for t in threading.enumerate())
monkey = sys.modules.get("gevent.monkey")
result["patched"] = monkey is not None and monkey.is_anything_patched()
print(json.dumps(result), flush=True)
"""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("DISCORD_TOKEN", None)
    return env


def test_threaded_cluster_from_plain_threads_in_a_process_without_gevent(
    make_sim: MakeSim, tmp_path: Path
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    script = tmp_path / "app.py"
    script.write_text(CHILD)
    assert "import gevent" not in CHILD and "monkey.patch" not in CHILD
    proc = subprocess.Popen(
        [sys.executable, str(script), sim.api_base, sim.token, "2", "20"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        with gevent.Timeout(TIMEOUT, AssertionError("the child never got ready")):
            line = proc.stdout.readline()
        assert line.strip() == b"ready", proc.stderr.read()
        for shard_id in range(2):
            sim.send_events(shard_id, 20)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])

    assert result["ready"] and result["worker_done"]
    assert result["numbers"] == {"0": list(range(1, 21)), "1": list(range(1, 21))}
    asked = result["asked"]
    assert asked["shard"] == 1 and result["chunk_shard"] == 1
    ops = sorted((c.op, c.shard_id) for c in sim.records.commands)
    assert ops == [(3, 0), (8, 1)]
    (members,) = [c for c in sim.records.commands if c.op == 8]
    assert members.data["guild_id"] == str(asked["guild"]) and members.data["nonce"] == "threaded"
    for shard_id, info in result["info"].items():
        (identify,) = [i for i in sim.records.identifies if i.shard_id == int(shard_id)]
        last = max(d.s for d in sim.records.dispatches if d.shard_id == int(shard_id))
        assert info["session"] == identify.session_id
        assert info["stage"] == "connected" and info["sequence"] == last
    # Raised in the cluster's thread, raised again in the caller's.
    assert result["error"] == ["ShardNonexistent", 99, "worker"]
    assert "SHARD_DISCONNECTED" in result["after_down"]
    assert result["info_after_down"] == ["disconnected"]
    assert not result["patched"]
    assert "gcluster-cluster" not in result["threads"]
    # The slow reader held events back, not the heartbeats: no shard was lost.
    assert len(sim.records.identifies) == 2 and not sim.records.resumes
    assert sim.wait_until(lambda: len(sim.records.closes) == 2, TIMEOUT)
    assert sorted(c.code for c in sim.records.closes) == [1000, 1000]
    assert len(sim.records.heartbeats) >= 2


def hub_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "gcluster-cluster"]


def test_a_config_error_raises_in_the_calling_thread_and_leaves_no_thread() -> None:
    with pytest.raises(ConfigError):
        ThreadedCluster("token", Intents.GUILDS, large_threshold=10)
    with pytest.raises(ConfigError):
        ThreadedCluster("token", Intents.GUILDS, no_such_option=True)
    with pytest.raises(ConfigError):
        ThreadedCluster.new("token", Intents.GUILDS, event_buffer=0)
    with pytest.raises(ConfigError):
        ThreadedCluster.builder("token", Intents.GUILDS).call_timeout(0).build()
    with pytest.raises(ConfigError):
        ThreadedCluster.builder("token", Intents.GUILDS).decoder("nope").build()
    assert hub_threads() == []


def test_the_builder_declares_every_option_of_cluster_builder_for_mypy() -> None:
    # Its option methods are ClusterBuilder's; the TYPE_CHECKING block says
    # each returns the threaded builder, so a chain ends in a ThreadedCluster.
    tree = ast.parse((ROOT / "gcluster" / "threaded.py").read_text())
    (builder,) = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "ThreadedClusterBuilder"
    ]
    (declared,) = [
        {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
        for node in builder.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    options = {
        name
        for name, value in vars(ClusterBuilder).items()
        if callable(value) and not name.startswith("_") and name != "build"
    }
    assert declared == options
    made = ThreadedClusterBuilder("token", Intents.GUILDS)
    assert all(getattr(made, name).__func__ is vars(ClusterBuilder)[name] for name in options)


def in_thread(func: Callable[[], object]) -> object:
    """What `func()` returned or raised in another thread; a failed test if it still waits."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(func())
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome.append(err)

    # A daemon: if it waits forever, it must not keep the test run from ending.
    thread = threading.Thread(target=run, name="in-thread", daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive(), f"still waiting after {TIMEOUT} s"
    return outcome[0]


def test_before_up_events_raise_and_commands_say_the_cluster_is_not_up() -> None:
    cluster = ThreadedCluster("token", Intents.GUILDS, api_base=UNREACHABLE, call_timeout=5)
    try:
        error = in_thread(lambda: next(iter(cluster.events())))
        assert isinstance(error, ClusterNotUp) and "call cluster.up() first" in str(error)
        assert cluster.wait_until_ready(0.1) is False
        with pytest.raises(ClusterNotUp, match=r"call cluster\.up\(\) first"):
            cluster.command(0, UpdatePresence())
        with pytest.raises(ClusterNotUp):
            with pytest.deprecated_call():
                cluster.command_raw(0, b"{}")
        assert cluster.shard(0) is None and cluster.info() == {}
        assert cluster.total is None and cluster.session_starts_remaining is None
        with pytest.raises(ClusterNotUp, match=r"call cluster\.up\(\) first"):
            cluster.shard_for(81_384_788_765_712_384)
        with pytest.raises(ClusterNotUp, match=r"call cluster\.up\(\) first"):
            cluster.restart(0)
    finally:
        cluster.down()
    assert in_thread(lambda: list(cluster.events())) == []  # after down(): ends at once
    with pytest.raises(ClusterNotUp, match="shut down without being brought up"):
        cluster.restart(0)
    with pytest.raises(ClusterNotUp, match="shut down without being brought up"):
        cluster.shard_for(81_384_788_765_712_384)


class SimulatorThread:
    """A simulator in a hub thread of its own, so this thread may block on the cluster."""

    def __init__(self, **options: Any) -> None:
        self.hub = HubThread("simulator").start()
        options.setdefault("heartbeat_interval", 0.5)
        self.sim: GatewaySimulator = self.hub.call(
            lambda: GatewaySimulator(**options).start(), timeout=TIMEOUT
        )

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """`func(*args)` where the simulator lives."""
        return self.hub.call(func, *args, timeout=TIMEOUT)

    def wait_until(self, predicate: Callable[[], object]) -> bool:
        """`GatewaySimulator.wait_until`, in the simulator's thread."""
        return bool(self.call(self.sim.wait_until, predicate, TIMEOUT))

    def stop(self) -> None:
        self.call(self.sim.stop)
        self.hub.stop(TIMEOUT)


@contextlib.contextmanager
def simulator_hub(**options: Any) -> Iterator[SimulatorThread]:
    where = SimulatorThread(**options)
    try:
        yield where
    finally:
        where.stop()


@contextlib.contextmanager
def simulator_thread(**options: Any) -> Iterator[GatewaySimulator]:
    """Just the simulator of a `SimulatorThread`, for tests that only read its records."""
    with simulator_hub(**options) as where:
        yield where.sim


def test_up_raises_a_fatal_close_and_events_raise_it_in_every_reader() -> None:
    with simulator_thread(shards=2, max_concurrency=2, privileged_intents=0) as sim:
        cluster = ThreadedCluster(
            sim.token, Intents.MESSAGE_CONTENT, api_base=sim.api_base, call_timeout=TIMEOUT
        )
        try:
            with pytest.raises(DisallowedIntents):
                cluster.up(timeout=TIMEOUT)
            # The shards were made before the close: their count is known.
            assert cluster.total == 2 and cluster.shard_for(1 << 22) == 1
            for _ in range(2):
                assert isinstance(in_thread(lambda: list(cluster.events())), DisallowedIntents)
            assert sim.records.identifies == []
            assert len(sim.records.connections) == 2
        finally:
            cluster.down()
        # After down(), as Cluster's: the stream ends instead of raising.
        assert in_thread(lambda: list(cluster.events())) == []


class ExhaustedQueue:
    """An identify queue with none of the day's session starts left."""

    def request(self, shard_id: int, total: int) -> None:
        raise SessionStartLimitExhausted(remaining=0, needed=1, reset_after=60.0)


def test_events_raise_a_shard_stop_that_is_not_a_gateway_close() -> None:
    with simulator_thread(shards=1) as sim:
        cluster = ThreadedCluster(
            sim.token,
            Intents.GUILDS,
            api_base=sim.api_base,
            queue=ExhaustedQueue(),
            call_timeout=TIMEOUT,
        )
        try:
            with pytest.raises(SessionStartLimitExhausted):
                cluster.up(timeout=TIMEOUT)
            # The pump hands it over, as it does a GatewayClosedError, instead of dying.
            assert isinstance(in_thread(lambda: list(cluster.events())), SessionStartLimitExhausted)
            assert sim.records.identifies == []
        finally:
            cluster.down()


def test_a_start_error_raises_in_the_calling_thread_and_down_ends_it_all() -> None:
    cluster = ThreadedCluster("token", Intents.GUILDS, api_base=UNREACHABLE, call_timeout=5)
    assert cluster.config().api_base == UNREACHABLE
    with pytest.raises(ClusterStartError) as caught:
        cluster.up(timeout=5)
    assert caught.value.kind is ClusterStartErrorType.RETRIEVING_GATEWAY_INFO
    # The cluster never came up: no event would ever arrive.
    assert isinstance(in_thread(lambda: next(iter(cluster.events()))), ClusterNotUp)

    stopper = threading.Thread(target=cluster.down, name="stopper")
    stopper.start()
    stopper.join(TIMEOUT)
    seen: list[object] = []
    readers = [
        threading.Thread(target=lambda: seen.extend(cluster.events()), name=f"reader-{i}")
        for i in range(2)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(TIMEOUT)
        assert not reader.is_alive()  # after down(), every events() loop ends
    assert seen == []
    assert hub_threads() == []
    cluster.down()  # idempotent
    assert cluster.down_resumable() == {}
    assert cluster.info() == {} and cluster.shards() == [] and cluster.shard(0) is None
    assert cluster.wait_until_ready(0.1) is False
    with pytest.raises(CommandSendingError):
        cluster.command(0, UpdatePresence())
    with pytest.raises(ClusterStartError):
        cluster.up()


def test_the_context_manager_brings_it_down_on_error() -> None:
    with pytest.raises(ClusterStartError):
        with ThreadedCluster("token", Intents.GUILDS, api_base=UNREACHABLE, call_timeout=5):
            pass  # pragma: no cover - up() fails first
    assert hub_threads() == []


def test_a_simulator_in_the_calling_thread_is_refused_at_once(make_sim: MakeSim) -> None:
    # Its calls would block this thread's hub and the simulator in it: GET
    # /gateway/bot would time out after 10 s. Refused before any thread starts.
    sim = make_sim()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"SimulatorProcess\) or a thread of its own"):
        ThreadedCluster(sim.token, Intents.GUILDS, api_base=sim.api_base)
    assert time.monotonic() - started < 1.0
    assert hub_threads() == []


def test_up_refuses_a_simulator_started_in_the_calling_thread_after_the_cluster(
    make_sim: MakeSim,
) -> None:
    cluster = ThreadedCluster("token", Intents.GUILDS, api_base=UNREACHABLE, call_timeout=5)
    try:
        sim = make_sim()
        assert serving_in_thread()
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="GatewaySimulator serves from this thread"):
            cluster.up(timeout=5)
        assert time.monotonic() - started < 1.0
        sim.stop()
        assert not serving_in_thread()
    finally:
        cluster.down()
    assert hub_threads() == []


def test_a_simulator_in_another_thread_is_not_this_threads() -> None:
    hub = HubThread("simulator").start()
    try:
        sim = hub.call(lambda: GatewaySimulator().start(), timeout=TIMEOUT)
        assert hub.call(serving_in_thread, timeout=TIMEOUT)
        assert not serving_in_thread()
        hub.call(sim.stop, timeout=TIMEOUT)
        assert not hub.call(serving_in_thread, timeout=TIMEOUT)
    finally:
        hub.stop()


def test_threaded_cluster_refuses_a_patched_threading_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = types.SimpleNamespace(is_module_patched=lambda name: name == "threading")
    monkeypatch.setitem(sys.modules, "gevent.monkey", fake)
    with pytest.raises(RuntimeError, match="use Cluster directly"):
        ThreadedCluster("token", Intents.GUILDS)


def test_hub_thread_calls_return_raise_and_time_out() -> None:
    hub = HubThread("test-hub").start()
    try:
        assert hub.call(lambda a, b: a + b, 2, 3, timeout=TIMEOUT) == 5
        # Runs in a greenlet of the other thread, which may block cooperatively.
        where = hub.call(
            lambda: (gevent.sleep(0.01), threading.current_thread().name)[1], timeout=TIMEOUT
        )
        assert where == "test-hub"

        def boom() -> None:
            raise KeyError("from the hub")

        with pytest.raises(KeyError, match="from the hub"):
            hub.call(boom, timeout=TIMEOUT)
        with pytest.raises(ThreadedClusterTimeout):
            hub.call(gevent.sleep, 5, timeout=0.1)

        # A call still running when the thread stops fails instead of hanging.
        outcome: list[BaseException] = []
        running = threading.Event()

        def sleep_long() -> None:
            running.set()
            gevent.sleep(30)

        def long_call() -> None:
            try:
                hub.call(sleep_long, timeout=TIMEOUT)
            except HubThreadStopped as err:
                outcome.append(err)

        caller = threading.Thread(target=long_call)
        caller.start()
        assert running.wait(TIMEOUT)
    finally:
        assert hub.stop(TIMEOUT)
    caller.join(TIMEOUT)
    assert not caller.is_alive() and len(outcome) == 1
    assert not hub.alive and hub.stop(TIMEOUT)
    with pytest.raises(HubThreadStopped):
        hub.call(lambda: None, timeout=TIMEOUT)


def test_hub_thread_has_a_module_of_its_own_and_is_still_where_it_was() -> None:
    import gcluster.hubthread
    import gcluster.threaded

    assert gcluster.threaded.HubThread is gcluster.hubthread.HubThread
    assert "HubThread" in gcluster.threaded.__all__


def first_event(
    cluster: ThreadedCluster, wanted: Callable[[int, Event], bool]
) -> tuple[int, Event]:
    """The first event that `wanted` accepts, of a new `events()` loop in another thread."""

    def read() -> tuple[int, Event]:
        for shard_id, event in cluster.events():
            if wanted(shard_id, event):
                return shard_id, event
        raise AssertionError("events() ended first")

    outcome = in_thread(read)
    if isinstance(outcome, Exception):
        raise outcome
    assert isinstance(outcome, tuple)
    return outcome


def test_restart_shard_for_and_session_starts_remaining_as_cluster_has_them() -> None:
    with simulator_hub(shards=2, max_concurrency=2, session_start_remaining=50) as where:
        sim = where.sim
        cluster = ThreadedCluster.new(
            sim.token, Intents.GUILDS, api_base=sim.api_base, call_timeout=TIMEOUT
        )
        try:
            assert cluster.session_starts_remaining is None  # GET /gateway/bot not asked yet
            cluster.up(timeout=TIMEOUT)
            assert cluster.total == 2
            guild_id = where.call(sim.guild_ids, 1)[0]
            assert cluster.shard_for(guild_id) == cluster.shard_for(str(guild_id)) == 1
            # 50 at start, 2 IDENTIFYs, and LocalQueue keeps one back.
            assert cluster.session_starts_remaining == 47

            cluster.restart(0)
            assert where.wait_until(lambda: len(sim.records.resumes) == 1)
            assert [(r.shard_id, r.ok) for r in sim.records.resumes] == [(0, True)]
            resumed, _ = first_event(cluster, lambda _, event: event.kind is EventType.RESUMED)
            assert resumed == 0
            assert cluster.wait_until_ready(TIMEOUT)
            with pytest.raises(ShardNonexistent):
                cluster.restart(2)
            assert len(sim.records.identifies) == 2
        finally:
            cluster.down()
        # After down(): as the cluster stopped.
        assert cluster.session_starts_remaining == 47
        assert cluster.shard_for(guild_id) == 1
        with pytest.raises(InvalidState, match="shut down"):
            cluster.restart(0)


def test_restart_revives_a_cluster_whose_shards_all_failed_and_events_flow_again() -> None:
    with simulator_hub(shards=1) as where:
        sim = where.sim
        cluster = ThreadedCluster(
            sim.token, STREAM_INTENTS, api_base=sim.api_base, call_timeout=TIMEOUT
        )
        try:
            cluster.up(timeout=TIMEOUT)
            where.call(sim.close_shard, 0, 4004)
            # Every shard stopped for good: each events() loop raises the error.
            for _ in range(2):
                assert isinstance(in_thread(lambda: list(cluster.events())), AuthenticationFailed)
            cluster.restart(0)
            first_event(cluster, lambda _, event: event.kind is EventType.READY)
            assert cluster.wait_until_ready(TIMEOUT)
            assert len(sim.records.identifies) == 2
            where.call(sim.send_events, 0, 3)
            shard_id, _ = first_event(cluster, lambda _, event: event_number(event.data) == 3)
            assert shard_id == 0
        finally:
            cluster.down()


def read_until_number(
    cluster: ThreadedCluster, number: int, *, manual_finish: bool
) -> list[tuple[int, Event]]:
    """Every event one loop reads (in another thread) up to the numbered event `number`."""

    def read() -> list[tuple[int, Event]]:
        got = []
        for item in cluster.events(manual_finish=manual_finish):
            got.append(item)
            if event_number(item[1].data) == number:
                return got
        raise AssertionError("events() ended first")

    outcome = in_thread(read)
    if isinstance(outcome, Exception):
        raise outcome
    assert isinstance(outcome, list)
    return outcome


def sequence_of(read: list[tuple[int, Event]], number: int) -> int:
    (sequence,) = [e.sequence for _, e in read if event_number(e.data) == number]
    assert sequence is not None
    return sequence


@pytest.mark.parametrize("manual_finish", [True, False], ids=["manual", "automatic"])
def test_the_saved_session_moves_past_finished_events_only(manual_finish: bool) -> None:
    store = MemorySessionStore()
    with simulator_hub(shards=1) as where:
        sim = where.sim
        cluster = ThreadedCluster(
            sim.token,
            STREAM_INTENTS,
            api_base=sim.api_base,
            session_store=store,
            call_timeout=TIMEOUT,
        )
        try:
            cluster.up(timeout=TIMEOUT)
            where.call(sim.send_events, 0, 5)
            read = read_until_number(cluster, 5, manual_finish=manual_finish)
            if manual_finish:
                # Finished in the order handed out: up to the third numbered event.
                third = next(i for i, (_, e) in enumerate(read) if event_number(e.data) == 3)
                cluster.finish(third)
                cluster.finish()
                finished = 3
            else:
                # Each event was finished as the loop came back for the next;
                # the loop ended on the fifth, which it did not come back from.
                finished = 4
            sessions = cluster.down_resumable()
        finally:
            cluster.down()
    # The gateway's session is at the last event received; the store's at the last finished.
    assert sessions[0].sequence == sequence_of(read, 5)
    assert store.sessions[0].session_id == sessions[0].session_id
    assert store.sessions[0].sequence == sequence_of(read, finished)


def test_shard_returns_a_handle_whose_methods_run_on_the_shard_in_the_hub_thread() -> None:
    # The simulator in a process of its own: its records come back as counts.
    with SimulatorProcess({"shards": 2, "max_concurrency": 2, "heartbeat_interval": 0.5}) as sim:
        cluster = (
            ThreadedCluster.builder(sim.token, STREAM_INTENTS | Intents.GUILD_MEMBERS)
            .api_base(sim.api_base)
            .call_timeout(TIMEOUT)
            .event_buffer(50)
            .build()
        )
        try:
            assert isinstance(cluster, ThreadedCluster)
            assert cluster.shard(1) is None and cluster.shards() == []
            cluster.up(timeout=TIMEOUT)
            shard = cluster.shard(1)
            assert isinstance(shard, ThreadedShard) and shard is cluster.shard(1)
            assert cluster.shard(2) is None
            assert [s.id for s in cluster.shards()] == [0, 1] and shard.total == 2
            assert shard.wait_until_ready(TIMEOUT)
            assert shard.stage is Stage.CONNECTED and shard.error is None
            info = shard.info()
            assert info.id == 1 and info == cluster.info()[1]
            assert info.session_id is not None and info.sequence is not None
            assert shard.session == ResumeSession(info.session_id, info.sequence, info.resume_url)

            _, ready = first_event(
                cluster, lambda sid, event: sid == 1 and event.kind is EventType.READY
            )
            guild_id = int(ready.data["guilds"][0]["id"])
            shard.command(RequestGuildMembers(guild_id=guild_id, query="", nonce="handle"))
            chunk_shard, chunk = first_event(
                cluster, lambda _, event: event.kind is EventType.GUILD_MEMBERS_CHUNK
            )
            assert chunk_shard == 1 and chunk.data["nonce"] == "handle"

            shard.send(Message.close(4000))  # keeps the session: the shard resumes
            first_event(cluster, lambda sid, event: sid == 1 and event.kind is EventType.RESUMED)
            shard.restart()
            first_event(cluster, lambda sid, event: sid == 1 and event.kind is EventType.RESUMED)
            assert shard.wait_until_ready(TIMEOUT)
            stats = sim.stats()
            assert (stats["identifies"], stats["resumes"]) == (2, 2)
        finally:
            cluster.down()
    # After down(): the handle answers as the shard stopped, and sends nothing.
    assert shard is cluster.shard(1)
    assert shard.stage is Stage.DISCONNECTED and shard.session is None
    assert shard.wait_until_ready(0.1) is False
    with pytest.raises(CommandSendingError):
        shard.command(UpdatePresence(status="idle"))
    with pytest.raises(InvalidState, match="shut down"):
        shard.restart()
