"""`python -m gcluster run --sink redis://...`: the gateway as a service, with a real Redis.

The service runs as a subprocess with its embedded simulator (``--simulate``)
and one slice of the bot's shards; the test talks to it only through Redis
and its log, as an operator and the workers would.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import gevent.event
import pytest
import redis
from gevent import subprocess
from redis_server import (  # noqa: F401 - fixtures
    RedisClusterNodes,
    RedisServer,
    make_redis_server_fixture,
    raw_client,
    redis_server_fixture,
    redis_url_fixture,
)

from gcluster import ResumeSession, UpdatePresence
from gcluster.__main__ import UsageError, parse_scheme
from gcluster.errors import SessionStoreError
from gcluster.redis import ShardLease, StreamWorker, decode_event, inbox_key
from gcluster.redis.service import _report_sessions, _SaveRecord
from gcluster.testing import GatewaySimulator, event_number

pytestmark = pytest.mark.extras

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
NAMESPACE = "svc"
STREAM = "{svc}:events"  # the namespace's default stream


class Service:
    """The service subprocess, with its log (stderr) collected line by line."""

    def __init__(
        self, *args: str, token: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        environ = dict(os.environ, PYTHONPATH=path)
        environ.pop("DISCORD_TOKEN", None)
        if token is not None:
            environ["DISCORD_TOKEN"] = token
        environ.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gcluster", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None:
                self._reader.join(timeout=2)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(f"the service exited without logging {text!r}:\n{self.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log within {timeout} s:\n{self.log}")
            gevent.sleep(0.05)

    def wait_until(self, predicate: object, timeout: float = TIMEOUT) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s:\n{self.log}")
            gevent.sleep(0.05)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=TIMEOUT)
        self._reader.join(timeout=5)
        return int(code)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.kill()


def any_node(redis_server: RedisServer | RedisClusterNodes, redis_url: str, namespace: str) -> str:
    """The URL to give the service: on a Redis Cluster, a replica not serving the namespace."""
    if isinstance(redis_server, RedisClusterNodes):
        return redis_server.other_url(f"{{{namespace}}}")
    return redis_url


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.kill()


def test_sigterm_saves_resumable_sessions_and_exits_0(
    redis_server: RedisServer | RedisClusterNodes, redis_url: str, services: list[Service]
) -> None:
    service = Service(
        "--sink", any_node(redis_server, redis_url, NAMESPACE),
        "--namespace", NAMESPACE,
        "--scheme", "process:1/2",
        "--shards", "4",
        "--simulate",
        "--simulate-events", "25",
        "--intents", "GUILDS,GUILD_MESSAGES,GUILD_MESSAGE_TYPING,GUILD_PRESENCES",
        "--log-level", "debug",  # a line per command sent is a DEBUG line
    )  # fmt: skip
    services.append(service)
    client = raw_client(redis_url)
    try:
        service.wait_for_line("service: shards 2-3 ready")
        service.wait_for_line(f"events to stream {STREAM!r}")

        # Events of this process's shards (2 and 3) reach the stream.
        def numbered() -> set[tuple[int, int | None]]:
            items = [decode_event(fields) for _, fields in client.xrange(STREAM)]
            return {(s, event_number(e.data)) for s, e in items if isinstance(e.data, dict)}

        wanted = {(s, n) for s in (2, 3) for n in range(1, 26)}
        service.wait_until(lambda: numbered() >= wanted)

        # A worker's command for shard 3 is sent by this process; shard 0 is another's.
        with StreamWorker(redis_url, "ops", "tester", namespace=NAMESPACE, stream=STREAM) as w:
            w.command(3, UpdatePresence(status="idle"))
            w.command(0, UpdatePresence(status="dnd"))
        service.wait_for_line("shard 3: sent command op 3 from tester")
        assert client.xlen(inbox_key(NAMESPACE, 0)) == 1
        assert client.xinfo_groups(inbox_key(NAMESPACE, 0)) == []  # nobody here reads it

        assert service.stop() == 0, service.log
        sessions = {}
        for shard_id in range(4):
            raw = client.get(f"{{{NAMESPACE}}}:session:{shard_id}")
            if raw is not None:
                sessions[shard_id] = ResumeSession.from_dict(json.loads(raw))
        assert sorted(sessions) == [2, 3]
        # READY and the 25 events, all published before the sessions were saved.
        assert all(session.sequence >= 26 for session in sessions.values()), sessions
        log = service.log
        assert "service: SIGTERM received: stopping" in log
        assert "service: sessions of shards 2-3 saved for resuming" in log
        assert "service: stopped" in log
        assert "Traceback" not in log
        assert "test-token" not in log  # the simulator's token
    finally:
        client.close()


def stream_numbers(client: redis.Redis, stream: str) -> Counter[tuple[int, int | None]]:
    items = [decode_event(fields) for _, fields in client.xrange(stream)]
    return Counter((s, event_number(e.data)) for s, e in items if isinstance(e.data, dict))


def test_a_standby_takes_over_a_killed_service_and_resumes_its_sessions(
    redis_server: RedisServer | RedisClusterNodes,
    redis_url: str,
    make_sim: Callable[..., GatewaySimulator],
    services: list[Service],
) -> None:
    sim = make_sim(shards=2, max_concurrency=2)
    args = (
        "--sink", any_node(redis_server, redis_url, "ha"),
        "--namespace", "ha",
        "--scheme", "process:0/1",
        "--shards", "2",
        "--lease", "--lease-ttl", "1.5",
        "--api-base", sim.api_base,
        "--events", "MESSAGE_CREATE,MESSAGE_UPDATE,MESSAGE_DELETE,TYPING_START,PRESENCE_UPDATE",
        "--intents", "GUILDS,GUILD_MESSAGES,GUILD_MESSAGE_TYPING,GUILD_PRESENCES",
    )  # fmt: skip
    client = raw_client(redis_url)
    active = Service(*args, token=sim.token)
    services.append(active)
    active.wait_for_line("service: shards 0-1 ready")
    standby = Service(*args, token=sim.token)
    services.append(standby)
    standby.wait_for_line("lease {ha}:lease:process:0/1: held by")
    try:
        for shard_id in range(2):
            sim.send_events(shard_id, 20)
        wanted = {(s, n) for s in range(2) for n in range(1, 21)}
        active.wait_until(lambda: set(stream_numbers(client, "{ha}:events")) >= wanted)

        def saved(shard_id: int) -> int:
            raw = client.get(f"{{ha}}:session:{shard_id}")
            return ResumeSession.from_dict(json.loads(raw)).sequence if raw else 0

        # Sessions are saved once a second; the dead process's last save is where
        # the standby resumes (READY + 20 events here).
        active.wait_until(lambda: saved(0) == saved(1) == 21)
        active.process.kill()  # no goodbye: its lease just stops being renewed
        for shard_id in range(2):
            sim.send_events(shard_id, 20)  # while nobody holds the shards
        standby.wait_for_line("taken by")
        standby.wait_for_line("service: shards 0-1 ready")
        wanted = {(s, n) for s in range(2) for n in range(1, 41)}
        standby.wait_until(lambda: set(stream_numbers(client, "{ha}:events")) >= wanted)

        # The standby resumed both sessions where the dead one left them: no IDENTIFY.
        assert len(sim.records.identifies) == 2
        assert sorted(r.shard_id for r in sim.records.resumes if r.ok) == [0, 1]
        assert standby.stop() == 0, standby.log
        assert not client.exists("{ha}:lease:process:0/1")  # released on the way out
        assert "Traceback" not in standby.log
    finally:
        client.close()


def test_a_lease_taken_over_by_another_holder_is_given_up(redis_url: str) -> None:
    client = raw_client(redis_url)
    lost = gevent.event.Event()
    mine = ShardLease(redis_url, name="process:0/1", namespace="t", ttl=0.6, owner="me")
    mine.on_lost = lost.set
    theirs = ShardLease(redis_url, name="process:0/1", namespace="t", ttl=0.6, owner="them")
    try:
        assert mine.acquire(timeout=1)
        assert not theirs.acquire(timeout=0.4)  # held and renewed past its ttl
        assert mine.holder() == "me"
        client.set(mine.key, "them")  # e.g. it expired during a partition and was taken
        assert lost.wait(2)
        assert not mine.held
        mine.close()
        assert client.get(mine.key) == b"them"  # releasing never deletes another's lease
    finally:
        mine.close()
        theirs.close()
        client.close()


def test_a_service_without_redis_says_so_and_exits_1(services: list[Service]) -> None:
    from redis_server import free_port

    service = Service(
        "--sink", f"redis://127.0.0.1:{free_port()}/0",
        "--shards", "1",
        "--simulate",
    )  # fmt: skip
    services.append(service)
    code = service.process.wait(timeout=TIMEOUT)
    service._reader.join(timeout=5)
    assert code == 1, service.log
    assert "is unreachable: Error 111 connecting" in service.log
    assert "Traceback" not in service.log


def test_intents_the_gateway_refuses_exit_3(
    redis_url: str, make_sim: Callable[..., GatewaySimulator], services: list[Service]
) -> None:
    sim = make_sim(shards=1, privileged_intents=0)
    service = Service(
        "--sink", redis_url,
        "--namespace", NAMESPACE,
        "--api-base", sim.api_base,
        "--shards", "1",
        "--intents", "GUILDS,GUILD_MEMBERS",
        token=sim.token,
    )  # fmt: skip
    services.append(service)
    code = service.process.wait(timeout=TIMEOUT)
    service._reader.join(timeout=5)
    assert code == 3, service.log
    assert [close.code for close in sim.records.closes] == [4014]
    assert "closed by the gateway with 4014" in service.log
    assert "Traceback" not in service.log


@pytest.mark.parametrize(
    ("text", "total", "ids"),
    [
        ("process:0/2", 4, (0, 1)),
        ("process:1/3", 7, (2, 3)),
        ("range:3-5", 8, (3, 4, 5)),
        (None, 3, (0, 1, 2)),
    ],
)
def test_scheme_option(text: str | None, total: int, ids: tuple[int, ...]) -> None:
    scheme = parse_scheme(text, total)
    assert scheme is not None and scheme.resolve(1) == (ids, total)


@pytest.mark.parametrize(
    ("text", "total", "message"),
    [
        ("process:0/2", None, "needs the bot's shard count"),
        ("process:2/2", 4, "index 2 is outside"),
        ("slices:1", 4, "must be auto, process:I/N or range:A-B"),
        ("range:a-b", 4, "range:a-b"),
    ],
)
def test_bad_scheme_options_say_what_is_wrong(text: str, total: int | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_scheme(text, total)


PASSWORD = "s3cret-pw"


def test_a_sink_password_from_the_environment_is_in_no_log_line_and_not_in_argv(
    make_redis_server: Callable[[], RedisServer], services: list[Service]
) -> None:
    server = make_redis_server()
    admin = server.client()
    admin.config_set("requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    service = Service(
        env={
            "GCLUSTER_SINK": url,
            "GCLUSTER_NAMESPACE": "pw",
            "GCLUSTER_STREAM": "pw:events",
            "GCLUSTER_SHARDS": "2",
            "GCLUSTER_SIMULATE": "1",
            "GCLUSTER_LOG_FORMAT": "json",
            "GCLUSTER_STATS_INTERVAL": "0.2",
        }
    )
    services.append(service)
    authed = redis.Redis.from_url(url)
    try:
        service.wait_for_line('"step":"stats"')
        with open(f"/proc/{service.process.pid}/cmdline", "rb") as cmdline:
            assert PASSWORD.encode() not in cmdline.read()
        assert authed.xlen("pw:events") > 0  # it did reach Redis with the password
        assert service.stop() == 0, service.log
    finally:
        authed.config_set("requirepass", "")
        authed.close()
        admin.close()
    lines = [json.loads(line) for line in service.lines]  # every line is JSON
    assert PASSWORD not in service.log
    assert any(f"redis://:***@127.0.0.1:{server.port}/0" in line["message"] for line in lines)
    assert sorted(line["shard"] for line in lines if line.get("step") == "ready") == [0, 1]
    assert any(
        line["message"] == "2/2 shards ready"
        or line["message"].startswith("2/2 shards ready after")
        for line in lines
    )


class FailingStore:
    """A session store whose saves of some shards fail, as Redis refusing them would."""

    def __init__(self, failing: set[int]) -> None:
        self.failing = failing
        self.saved: dict[int, ResumeSession | None] = {}

    def load(self, shard_ids: object) -> dict[int, ResumeSession]:
        return {5: ResumeSession("loaded-session", 9)}

    def save(self, shard_id: int, session: ResumeSession | None) -> None:
        if shard_id in self.failing:
            raise SessionStoreError("session store: could not save at Redis redis://x: OOM")
        self.saved[shard_id] = session

    def close(self) -> None:
        pass


def test_the_shutdown_line_says_which_sessions_redis_took(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="gcluster.service")
    inner = FailingStore(failing={2, 3})
    store = _SaveRecord(inner)  # type: ignore[arg-type]
    store.load([5])  # a session resumed and left unchanged is in Redis already
    session = ResumeSession("abc", 10)
    for shard_id in (0, 1, 2, 3):
        try:
            store.save(shard_id, session)
        except SessionStoreError:
            pass
    inner.failing.discard(3)
    store.save(3, session)  # saved on a later try
    inner.failing.add(1)
    with pytest.raises(SessionStoreError):
        store.save(1, session)  # saved once, then its newer session was not

    sessions = {shard_id: session for shard_id in (0, 1, 2, 3, 4, 5)}
    assert _report_sessions(store, sessions, "{ns}") is False
    saved, unsaved = (r.getMessage() for r in caplog.records)
    assert saved.startswith("service: sessions of shards 0, 3, 5 saved for resuming")
    assert unsaved.startswith("service: sessions of shards 1-2, 4 not saved (session store:")
    assert "OOM" in unsaved
    caplog.clear()
    assert _report_sessions(store, {0: session}, "{ns}") is True
