"""A real redis-server for the tests: started on a free port, stopped afterwards.

Import the fixtures into a test module; they register under the names
`redis_server`, `redis_url` and `make_redis_server`:

    from redis_server import redis_server_fixture, redis_url_fixture  # noqa: F401
There is no skipping: without a redis-server binary the tests fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest
import redis

__all__ = [
    "RedisServer",
    "free_port",
    "make_redis_server_fixture",
    "redis_server_fixture",
    "redis_url_fixture",
]

_START_TIMEOUT = 10.0


def _binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(found, os.X_OK):
        raise RuntimeError("redis-server is not installed; the Redis tests need it")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="gcluster-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self._process = subprocess.Popen(
            [
                _binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        client = self.client()
        deadline = time.monotonic() + _START_TIMEOUT
        try:
            while True:
                if self._process.poll() is not None:
                    err = self._process.stderr.read() if self._process.stderr else b""
                    raise RuntimeError(f"redis-server exited: {err.decode(errors='replace')}")
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.02)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1.0)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        self._dir.cleanup()


@pytest.fixture(scope="module", name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """One server for a test module (use `redis_url` for a flushed one per test)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(name="redis_url")
def redis_url_fixture(redis_server: RedisServer) -> str:
    """The module's server, emptied for this test."""
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(name="make_redis_server")
def make_redis_server_fixture() -> Iterator[Callable[[], RedisServer]]:
    """Start servers of the test's own (to stop them mid-test); all stop after it."""
    started: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer().start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
