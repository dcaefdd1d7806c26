"""Real Redis on loopback, for the tests and the benchmarks: one server, or a Redis Cluster.

`RedisServer` starts one redis-server on a free port; `RedisClusterNodes`
starts a Redis Cluster (three masters and three replicas by default) with
``redis-cli --cluster create`` and waits until it is ok. Neither needs
pytest: a benchmark puts tests/ on ``sys.path`` and imports them. The test
fixtures around them are in redis_server.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import redis
from _ports import free_port

__all__ = [
    "RedisClusterNodes",
    "RedisServer",
    "all_keys",
    "free_port",
    "raw_client",
]

_START_TIMEOUT = 10.0
# A Redis Cluster node listens on its port and, 10000 above it, on its cluster bus.
_BUS_OFFSET = 10_000


def _binary(name: str = "redis-server") -> str:
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not os.access(found, os.X_OK):
        raise RuntimeError(f"{name} is not installed; the Redis tests need it")
    return found


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 above) is free too."""
    for _ in range(100):
        port = free_port()
        if port + _BUS_OFFSET > 65_535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + _BUS_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisServer:
    """One redis-server process on 127.0.0.1, without persistence.

    Args:
        cluster_node_timeout: make it a Redis Cluster node (not yet part of a
            cluster) with this node timeout in milliseconds; None: a plain server.
    """

    def __init__(self, cluster_node_timeout: int | None = None) -> None:
        self.cluster_node_timeout = cluster_node_timeout
        self.port = free_port() if cluster_node_timeout is None else _free_cluster_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="gcluster-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        cluster_args: list[str] = []
        if self.cluster_node_timeout is not None:
            cluster_args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                os.path.join(self._dir.name, "nodes.conf"),
                "--cluster-node-timeout",
                str(self.cluster_node_timeout),
            ]
        self._process = subprocess.Popen(
            [
                _binary(),
                *cluster_args,
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

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as a crashed machine would (its files stay)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(5.0)

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


class RedisClusterNodes:
    """A Redis Cluster on 127.0.0.1: `masters` masters with `replicas` replicas each.

    Started with ``redis-cli --cluster create``; `start()` returns once every
    node says ``cluster_state:ok`` and every replica's link to its master is
    up, so a master killed at once is failed over. `cluster_node_timeout` (in
    ms) sets how soon a dead master's replica takes over (about twice it).
    """

    def __init__(self, masters: int = 3, replicas: int = 1, cluster_node_timeout: int = 1000):
        if masters < 3:
            raise ValueError("redis-cli --cluster create wants at least 3 masters")
        self.nodes = [RedisServer(cluster_node_timeout) for _ in range(masters * (1 + replicas))]
        self.replicas = replicas
        self.url = self.nodes[0].url

    def start(self) -> RedisClusterNodes:
        try:
            for node in self.nodes:
                node.start()
            create = subprocess.run(
                [
                    _binary("redis-cli"),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if create.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed: {create.stdout.decode(errors='replace')}"
                    f"{create.stderr.decode(errors='replace')}"
                )
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says the cluster is ok and sees every master linked up.

        Raises:
            TimeoutError: not within `timeout`.
        """
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            last = self._not_ok()
            if not last:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster is not ok after {timeout} s: {last}")
            time.sleep(0.05)

    def _not_ok(self) -> str:
        """What keeps the cluster from being ok, or "" when nothing does."""
        running = [node for node in self.nodes if node.running]
        for node in running:
            client = node.client()
            try:
                info = client.execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text:
                    return f"node {node.port} is not ok"
                role = client.info("replication")
                if role.get("role") == "slave" and role.get("master_link_status") != "up":
                    return f"replica {node.port} is not linked to its master"
            except redis.RedisError as err:
                return f"node {node.port}: {err}"
            finally:
                client.close()
        return ""

    def client(self) -> redis.RedisCluster:
        """A redis-py cluster client of the running nodes."""
        port = next(node.port for node in self.nodes if node.running)
        return redis.RedisCluster(host="127.0.0.1", port=port, socket_connect_timeout=1.0)

    def master_of(self, key: str) -> RedisServer:
        """The node serving `key`'s slot now."""
        client = self.client()
        try:
            node = client.get_node_from_key(key)
            return next(n for n in self.nodes if n.port == node.port)
        finally:
            client.close()

    def other_url(self, key: str) -> str:
        """The URL of a node that does not serve `key`'s slot: a replica of another master.

        Whatever the library is given must work from there as well.
        """
        serving = self.master_of(key)
        for node in self.nodes:
            if node is serving or not node.running:
                continue
            client = node.client()
            try:
                info = client.info("replication")
            finally:
                client.close()
            if info.get("role") == "slave" and info.get("master_port") != serving.port:
                return node.url
        raise RuntimeError(f"no node outside the slot of {key!r}")

    def flush(self) -> None:
        """Empty every master."""
        client = self.client()
        try:
            client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def raw_client(url: str) -> redis.Redis | redis.RedisCluster:
    """A redis-py client for the server or cluster at `url`, for a test to look with."""
    plain = redis.Redis.from_url(url, socket_connect_timeout=1.0)
    try:
        plain.execute_command("CLUSTER", "INFO")
    except redis.ResponseError:
        return plain
    plain.close()
    return redis.RedisCluster.from_url(url, socket_connect_timeout=1.0)


def all_keys(url: str) -> list[str]:
    """Every key of the server, or of every master of the cluster, at `url`, sorted."""
    client = raw_client(url)
    try:
        if isinstance(client, redis.RedisCluster):
            found = client.keys("*", target_nodes=redis.RedisCluster.PRIMARIES)
        else:
            found = client.keys("*")
        return sorted(key.decode() for key in found)
    finally:
        client.close()
