"""Redis for the benchmarks: one redis-server, or a 6-node Redis Cluster, on free ports.

Small on purpose (the tests have their own launcher in tests/redis_server.py).
The cluster is three masters with a replica each, made by ``redis-cli
--cluster create``; every gcluster key of one namespace carries the
namespace's hash tag, so one master serves a whole bot and the others stand by.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

__all__ = ["RedisProcesses", "client_for", "is_cluster", "start_cluster", "start_redis"]

_START_TIMEOUT = 20.0


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/bin/{name}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcesses:
    """redis-server processes started here, stopped by `stop()`."""

    def __init__(self, url: str, processes: list[subprocess.Popen[bytes]], workdir: Path) -> None:
        self.url = url
        self.processes = processes
        self._workdir = workdir

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self._workdir, ignore_errors=True)


def _server(port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    node_dir = workdir / str(port)
    node_dir.mkdir()
    return subprocess.Popen(
        [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(node_dir), "--loglevel", "warning", *extra],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _wait_for_ping(port: int, process: subprocess.Popen[bytes]) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + _START_TIMEOUT
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {port} exited") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


def start_redis() -> RedisProcesses:
    """One redis-server without persistence."""
    workdir = Path(tempfile.mkdtemp(prefix="gcluster-bench-"))
    port = _free_port()
    process = _server(port, workdir)
    _wait_for_ping(port, process)
    return RedisProcesses(f"redis://127.0.0.1:{port}/0", [process], workdir)


def start_cluster(nodes: int = 6, replicas: int = 1) -> RedisProcesses:
    """A Redis Cluster of `nodes` servers (`replicas` per master), every slot covered."""
    workdir = Path(tempfile.mkdtemp(prefix="gcluster-bench-cluster-"))
    ports = [_free_port() for _ in range(nodes)]
    # The cluster bus port is given too: the default, port + 10000, may be
    # taken or past 65535.
    processes = [
        _server(port, workdir, "--cluster-enabled", "yes", "--cluster-port", str(_free_port()),
                "--cluster-node-timeout", "2000")
        for port in ports
    ]  # fmt: skip
    started = RedisProcesses(f"redis://127.0.0.1:{ports[0]}", processes, workdir)
    try:
        for port, process in zip(ports, processes, strict=True):
            _wait_for_ping(port, process)
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=_START_TIMEOUT,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=ports[0])
        deadline = time.monotonic() + _START_TIMEOUT
        while client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        client.close()
    except BaseException:
        started.stop()
        raise
    return started


def is_cluster(url: str) -> bool:
    """Whether the server at `url` runs with cluster mode enabled."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    finally:
        client.close()


def client_for(url: str, cluster: bool, **options: object) -> redis.Redis | RedisCluster:
    """A redis-py client for `url`: a `RedisCluster` when the server is a cluster node."""
    if cluster:
        return RedisCluster.from_url(url, **options)  # type: ignore[arg-type]
    return redis.Redis.from_url(url, **options)  # type: ignore[arg-type]
