"""`SimulatorProcess`: a `GatewaySimulator` in a child process, driven from this one.

Benchmarks want the simulator off the client's core: on a two-core machine a
child process gets the other one. It also serves a `gcluster.ThreadedCluster`,
which blocks the thread that calls it and so cannot share that thread's hub
with a `GatewaySimulator`. This starts ``python -m gcluster.testing serve``
(see `gcluster.testing.serve`) and speaks its control channel over the
child's pipes. The pipes are gevent's, so waiting on an answer lets the
rest of the hub (a cluster under test) run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import gevent
from gevent import subprocess
from gevent.event import AsyncResult
from gevent.lock import Semaphore

from gcluster.errors import GClusterError

from .faults import Fault

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

__all__ = ["SimulatorError", "SimulatorProcess"]

# The directory holding the gcluster package, so a checkout works uninstalled.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class SimulatorError(GClusterError, RuntimeError):
    """A simulated run failed.

    The simulator process refused a request or is gone, or a storm
    (`gcluster.testing.storm.run_storm`) did not finish.
    """


class SimulatorProcess:
    """A simulator serving in its own process.

    Args:
        options: `GatewaySimulator` options (``shards``, ``max_concurrency``,
            ``heartbeat_interval``, ...), JSON-encodable.
        python: the interpreter to run it with (default: this one).
        cpu: pin the child to this CPU (Linux), e.g. to keep it off the
            client's core.
        start_timeout: seconds to wait for it to listen.

    Raises:
        SimulatorError: it did not start.

    .. important:: Use it from one gevent hub (the one that created it).
    """

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        *,
        python: str = sys.executable,
        cpu: int | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [python, "-m", "gcluster.testing", "serve", "--options", json.dumps(options or {})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(self._proc.pid, {cpu})
        self._ids = itertools.count(1)
        self._waiting: dict[int, AsyncResult] = {}
        # Requests from several greenlets: one line at a time into the pipe.
        self._write_lock = Semaphore()
        try:
            with gevent.Timeout(start_timeout, SimulatorError("the simulator did not start")):
                line = self._proc.stdout.readline()
            hello = json.loads(line)
        except (SimulatorError, ValueError) as err:
            self._proc.kill()
            raise SimulatorError(f"the simulator did not start: {err}") from err
        self.url: str = hello["url"]
        """The gateway URL (``ws://127.0.0.1:PORT``)."""
        self.api_base: str = hello["api_base"]
        """The REST base URL, for ``Cluster(api_base=...)``."""
        self.port: int = hello["port"]
        self.token: str = hello["token"]
        self.pid: int = hello["pid"]
        self._reader = gevent.spawn(self._read)

    def __repr__(self) -> str:
        return f"<SimulatorProcess pid={self.pid} {self.url}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- requests ------------------------------------------------------------

    def call(
        self, op: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = 600.0
    ) -> Any:
        """Send one request and wait (cooperatively) for its answer.

        Args:
            op: the operation (see `gcluster.testing.serve.Control`).
            arguments: its arguments.
            timeout: seconds to wait for the answer.

        Raises:
            SimulatorError: the request failed, timed out, or the process is gone.
        """
        if self._proc.poll() is not None:
            raise SimulatorError(f"the simulator exited with {self._proc.returncode}")
        request_id = next(self._ids)
        line = (json.dumps({**(arguments or {}), "id": request_id, "op": op}) + "\n").encode()
        result: AsyncResult = AsyncResult()
        self._waiting[request_id] = result
        try:
            with self._write_lock:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
            reply = result.get(timeout=timeout)
        except gevent.Timeout as err:
            raise SimulatorError(f"{op}: no answer within {timeout} s") from err
        except OSError as err:
            raise SimulatorError(f"{op}: the simulator is gone ({err})") from err
        finally:
            self._waiting.pop(request_id, None)
        if not reply.get("ok"):
            raise SimulatorError(f"{op}: {reply.get('error')}")
        return reply.get("result")

    def stats(self) -> dict[str, Any]:
        """The child's CPU seconds, peak RSS and record counts (see `serve.Control.stats`)."""
        return dict(self.call("stats"))

    def wait_connected(self, shard_ids: Iterable[int], timeout: float = 30.0) -> bool:
        """Wait until each shard's session has a live connection."""
        return bool(
            self.call(
                "wait_connected",
                {"shard_ids": list(shard_ids), "timeout": timeout},
                timeout=timeout + 10,
            )
        )

    def blast(
        self,
        shard_ids: Iterable[int],
        count: int,
        kinds: Iterable[str] | None = None,
        *,
        hold: bool = False,
    ) -> list[dict[str, Any]]:
        """Blast ``count`` dispatches to each shard (`GatewaySimulator.blast`).

        Returns once they are encoded and queued, with what each blast holds.
        With ``hold`` nothing is written until `release`.
        """
        arguments = {
            "shard_ids": list(shard_ids),
            "count": count,
            "kinds": _list(kinds),
            "hold": hold,
        }
        return list(self.call("blast", arguments))

    def release(self) -> float:
        """Release every held blast; the child's ``time.monotonic()`` when it did."""
        return float(self.call("release")["time"])

    def send_paced(
        self,
        shard_ids: Iterable[int],
        count: int,
        rate: float,
        kinds: Iterable[str] | None = None,
        *,
        lead: float = 0.05,
    ) -> dict[str, Any]:
        """`GatewaySimulator.send_paced`; once queued, ``{"start": ..., "blasts": [...]}``."""
        arguments = {
            "shard_ids": list(shard_ids),
            "count": count,
            "rate": rate,
            "kinds": _list(kinds),
            "lead": lead,
        }
        return dict(self.call("send_paced", arguments))

    def wait_blasts(self, timeout: float = 300.0) -> list[dict[str, Any]]:
        """Wait for every blast and paced send so far; their `BlastRecord` fields.

        Raises:
            SimulatorError: they were not written within ``timeout``.
        """
        records = self.call("wait_blasts", {"timeout": timeout}, timeout=timeout + 10)
        if records is None:
            raise SimulatorError(f"blasts not written within {timeout} s")
        return list(records)

    def send_events(
        self, shard_id: int, count: int, kinds: Iterable[str] | None = None
    ) -> list[int]:
        """`GatewaySimulator.send_events` in the child."""
        arguments = {"shard_id": shard_id, "count": count, "kinds": _list(kinds)}
        return list(self.call("send_events", arguments))

    def close_shard(self, shard_id: int, code: int, reason: str = "") -> int:
        arguments = {"shard_id": shard_id, "code": code, "reason": reason}
        return int(self.call("close_shard", arguments))

    def apply_fault(self, shard_id: int | None, fault: Fault) -> int:
        """`GatewaySimulator.apply_fault` in the child: any `gcluster.testing.faults` value, now.

        Returns how many live connections it reached (0 when the shard was
        between connections, or for `RefuseConnections`).

        Raises:
            SimulatorError: where `GatewaySimulator.apply_fault` would raise
                ConfigError, e.g. for a bad shard id.
        """
        arguments = {
            "shard_id": shard_id,
            "fault": type(fault).__name__,
            "fields": dataclasses.asdict(fault),
        }
        return int(self.call("apply_fault", arguments))

    def traffic(self) -> list[dict[str, Any]]:
        """Per connection: shard id, compression, messages and bytes written so far."""
        return list(self.call("traffic"))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child (politely, then by force); idempotent."""
        proc = self._proc
        if proc.poll() is None:
            try:
                self.call("stop", timeout=timeout)
            except SimulatorError:
                pass
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reader.kill(block=False)

    # -- internals -----------------------------------------------------------

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            waiter = self._waiting.get(reply.get("id"))
            if waiter is not None:
                waiter.set(reply)
        gone = {"ok": False, "error": "the simulator process exited"}
        for waiter in list(self._waiting.values()):
            waiter.set(gone)


def _list(values: Iterable[str] | None) -> list[str] | None:
    return None if values is None else list(values)
