"""``python -m gcluster.testing serve``: a simulator in a process of its own.

A benchmark that runs the simulator in its own hub measures two programs on
one core. Run here instead, the simulator gets the machine's other core, and
the benchmark drives it through a control channel: JSON lines on the
process's standard input, one answer line each on standard output (see
`SimulatorProcess`, the other end). The first line it prints says where it
listens::

    {"event": "listening", "url": "ws://127.0.0.1:PORT", "api_base": ..., "pid": ...}

Each request is ``{"id": N, "op": NAME, ...arguments}`` and is answered, when
it is done, with ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok":
false, "error": "..."}``; requests run concurrently, so answers may come out
of order. End of input stops the simulator. With ``--control none`` it serves
until interrupted instead, e.g. to point a bot at it by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import sys
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import gevent
from gevent.event import Event as Flag
from gevent.fileobject import FileObjectPosix
from gevent.lock import Semaphore

from gcluster.errors import ConfigError

from . import faults
from .blast import Blast
from .simulator import GatewaySimulator

__all__ = ["main"]

log = logging.getLogger(__name__)

# GatewaySimulator options that may be given as flags (the rest via --options).
_FLAGS: dict[str, type] = {
    "shards": int,
    "max_concurrency": int,
    "heartbeat_interval": float,
    "identify_interval": float,
    "replay_limit": int,
    "guilds_per_shard": int,
    "token": str,
    "host": str,
    "port": int,
}

# Every kind of fault, by class name, as the ``apply_fault`` request names it.
_FAULTS: dict[str, type] = {kind.__name__: kind for kind in typing.get_args(faults.Fault)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gcluster.testing",
        description="Run the gateway simulator in its own process.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a simulator (see the module docstring)")
    for name, kind in _FLAGS.items():
        serve.add_argument(f"--{name.replace('_', '-')}", type=kind, dest=name)
    serve.add_argument(
        "--options", default="{}", help="more GatewaySimulator options, as a JSON object"
    )
    serve.add_argument(
        "--control",
        choices=("stdio", "none"),
        default="stdio",
        help="stdio: JSON requests on stdin (default); none: serve until interrupted",
    )
    serve.add_argument("--log-level", default="WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="sim %(levelname)s %(message)s"
    )
    options: dict[str, Any] = json.loads(args.options)
    for name in _FLAGS:
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    # A thousand shards need a thousand sockets, and as many again on the client's side.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sim = GatewaySimulator(**options).start()
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    _write(
        out,
        {
            "event": "listening",
            "url": sim.url,
            "api_base": sim.api_base,
            "port": sim.port,
            "token": sim.token,
            "pid": os.getpid(),
        },
    )
    stop = Flag()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop.set)
    if args.control == "stdio":
        gevent.spawn(Control(sim, out, stop).run)
    stop.wait()
    sim.stop()
    return 0


def _write(out: Any, message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _blast_info(blast: Blast) -> dict[str, Any]:
    return {
        "shard_id": blast.shard_id,
        "connection_id": blast.connection_id,
        "first_s": blast.first_s,
        "last_s": blast.last_s,
        "first_number": blast.first_number,
        "last_number": blast.last_number,
        "events": blast.events,
        "prepare_seconds": blast.prepare_seconds,
        "wire_bytes": blast.frames.wire_bytes,
        "payload_bytes": sum(blast.frames.payload_bytes),
    }


class Control:
    """Answers control requests for one simulator, each in its own greenlet."""

    def __init__(self, sim: GatewaySimulator, out: Any, stop: Flag) -> None:
        self._sim = sim
        self._out = out
        self._stop = stop
        self._write_lock = Semaphore()
        self._pending: list[Blast] = []
        self._held: list[Blast] = []
        self._ops: dict[str, Callable[..., Any]] = {
            "ping": lambda: {"time": time.monotonic()},
            "stats": self.stats,
            "wait_connected": self.wait_connected,
            "blast": self.blast,
            "release": self.release,
            "send_paced": self.send_paced,
            "wait_blasts": self.wait_blasts,
            "send_events": self.send_events,
            "close_shard": lambda shard_id, code, reason="": self._sim.close_shard(
                shard_id, code, reason
            ),
            "apply_fault": self.apply_fault,
            "traffic": self.traffic,
            "stop": self.shutdown,
        }

    def run(self) -> None:
        stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
        for line in stdin:
            if not line.strip():
                continue
            gevent.spawn(self._answer, line)
        self._stop.set()

    def _answer(self, line: bytes) -> None:
        request_id = None
        try:
            request = json.loads(line)
            request_id = request.pop("id", None)
            op = self._ops[request.pop("op")]
            reply = {"id": request_id, "ok": True, "result": op(**request)}
        except Exception as err:  # noqa: BLE001 - every failure is the caller's to see
            reply = {"id": request_id, "ok": False, "error": f"{type(err).__name__}: {err}"}
        with self._write_lock:
            _write(self._out, reply)

    # -- operations --------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The process's CPU time and memory, and what the simulator counted."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        records = self._sim.records
        return {
            "time": time.monotonic(),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "max_rss_kb": usage.ru_maxrss,
            "connections": len(records.connections),
            "identifies": len(records.identifies),
            "resumes": len(records.resumes),
            "heartbeats": len(records.heartbeats),
            "closes": len(records.closes),
            "violations": len(records.violations),
        }

    def wait_connected(self, shard_ids: list[int], timeout: float = 30.0) -> bool:
        """Wait until each shard has a session served by a live connection."""
        sim = self._sim

        def connected() -> bool:
            sessions = sim.sessions
            return all(sid in sessions and sessions[sid].connected for sid in shard_ids)

        return sim.wait_until(connected, timeout)

    def blast(
        self,
        shard_ids: list[int],
        count: int,
        kinds: list[str] | None = None,
        hold: bool = False,
    ) -> list[dict[str, Any]]:
        """`GatewaySimulator.blast` ``count`` dispatches to each shard; answers once queued.

        With ``hold`` nothing is written until the ``release`` request.
        """
        blasts = [self._sim.blast(sid, count, kinds, hold=hold) for sid in shard_ids]
        self._pending.extend(blasts)
        if hold:
            self._held.extend(blasts)
        return [_blast_info(blast) for blast in blasts]

    def release(self) -> dict[str, Any]:
        """Release the held blasts at once; answers with the time it did."""
        held, self._held = self._held, []
        now = time.monotonic()
        for blast in held:
            blast.release(now)
        return {"time": now, "released": len(held)}

    def send_paced(
        self,
        shard_ids: list[int],
        count: int,
        rate: float,
        kinds: list[str] | None = None,
        lead: float = 0.05,
    ) -> dict[str, Any]:
        """`GatewaySimulator.send_paced`; answers with the start time once queued."""
        paced = self._sim.send_paced(shard_ids, count, rate, kinds, lead=lead)
        self._pending.extend(paced.blasts)
        return {"start": paced.start, "blasts": [_blast_info(b) for b in paced.blasts]}

    def wait_blasts(self, timeout: float = 300.0) -> list[dict[str, Any]] | None:
        """Wait for every blast and paced send so far; their records (None on timeout)."""
        pending, self._pending = self._pending, []
        deadline = time.monotonic() + timeout
        records = []
        for blast in pending:
            record = blast.wait(max(0.0, deadline - time.monotonic()))
            if record is None:
                return None
            records.append({**asdict(record), "send_rate": record.send_rate})
        return records

    def send_events(self, shard_id: int, count: int, kinds: list[str] | None = None) -> list[int]:
        return self._sim.send_events(shard_id, count, kinds)

    def apply_fault(
        self, shard_id: int | None, fault: str, fields: dict[str, Any] | None = None
    ) -> int:
        """`GatewaySimulator.apply_fault` with the `faults` class named ``fault``,
        built from ``fields``; how many live connections it reached."""
        kind = _FAULTS.get(fault)
        if kind is None:
            raise ConfigError(f"no fault {fault!r}: one of {', '.join(sorted(_FAULTS))}")
        return self._sim.apply_fault(shard_id, kind(**(fields or {})))

    def traffic(self) -> list[dict[str, Any]]:
        """Per connection: its shard (once it identified or resumed) and bytes written."""
        records = self._sim.records
        shards: dict[int, int | None] = {}
        for identify in records.identifies:
            shards[identify.connection_id] = identify.shard_id
        for resume in records.resumes:
            shards.setdefault(resume.connection_id, resume.shard_id)
        compression = {c.id: c.compression for c in records.connections}
        return [
            {
                **asdict(traffic),
                "shard_id": shards.get(conn_id),
                "compression": compression.get(conn_id),
            }
            for conn_id, traffic in sorted(records.traffic.items())
        ]

    def shutdown(self) -> dict[str, Any]:
        # Answer first; stop on the hub's next turn.
        gevent.spawn_later(0.01, self._stop.set)
        return {}
