"""What the examples share: where to connect, and the embedded simulator behind ``--simulate``.

Every example runs against Discord with ``DISCORD_TOKEN`` set, or with
``--simulate`` against `gcluster.testing.GatewaySimulator`: a local gateway
that streams a few events, then (`Gateway.feed`) brings the cluster down once
they have all arrived, so the example ends by itself. The examples' own code
is the same in both modes; only this module knows the difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gcluster import GatewayCluster

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

# How long the simulated feed waits for the cluster to be ready and to receive everything.
FEED_TIMEOUT = 15.0


def parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every example takes."""
    top = argparse.ArgumentParser(
        description=(description or "").strip().splitlines()[0] if description else None
    )
    top.add_argument(
        "--simulate",
        action="store_true",
        help="run against the embedded gateway simulator instead of Discord",
    )
    top.add_argument(
        "--shards", type=int, default=2, help="with --simulate: how many shards (default 2)"
    )
    top.add_argument(
        "--api-base",
        default=None,
        help="REST base URL instead of Discord's, e.g. a gateway proxy or a simulator "
        "started elsewhere (the token still comes from DISCORD_TOKEN)",
    )
    return top


class Gateway:
    """Discord itself: the token from DISCORD_TOKEN; `feed` and `summary` do nothing."""

    def __init__(self, token: str, options: dict[str, Any]) -> None:
        self.token = token
        self.options = options

    def feed(
        self, cluster: GatewayCluster, per_shard: int = 10, kinds: Sequence[str] | None = None
    ) -> None:
        """With --simulate: stream events, then bring the cluster down. With Discord: nothing."""

    def send_events(self, shard_id: int, count: int, kinds: Sequence[str] | None = None) -> None:
        """With --simulate: dispatch `count` events to the shard now."""

    def send_events_to_all(
        self, cluster: GatewayCluster, count: int, kinds: Sequence[str] | None = None
    ) -> None:
        """With --simulate: dispatch `count` events to every shard of the cluster now."""

    def guild_ids(self, shard_id: int) -> list[int]:
        """With --simulate: the ids of the shard's guilds (all map to it)."""
        return []

    def summary(self) -> str | None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        summary = self.summary()
        self.close()
        if summary is not None and exc_type is None:
            print(summary, flush=True)


class Simulation(Gateway):
    """The simulator, running in this thread's gevent hub (the gevent examples)."""

    def __init__(self, shards: int) -> None:
        from gcluster.testing import GatewaySimulator

        self.sim = GatewaySimulator(shards=shards, max_concurrency=shards, heartbeat_interval=5.0)
        self.sim.start()
        super().__init__(self.sim.token, {"api_base": self.sim.api_base})
        self._feeder: Any = None

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run `func(sim, *args)` where the simulator lives."""
        return func(self.sim, *args)

    def background(self, func: Callable[[], None]) -> None:
        import gevent

        self._feeder = gevent.spawn(func)

    def sleep(self, seconds: float) -> None:
        import gevent

        gevent.sleep(seconds)

    def feed(
        self, cluster: GatewayCluster, per_shard: int = 10, kinds: Sequence[str] | None = None
    ) -> None:
        self.background(lambda: self._feed(cluster, per_shard, kinds))

    def send_events(self, shard_id: int, count: int, kinds: Sequence[str] | None = None) -> None:
        self.run(_send_events, shard_id, count, kinds)

    def send_events_to_all(
        self, cluster: GatewayCluster, count: int, kinds: Sequence[str] | None = None
    ) -> None:
        for shard_id in sorted(cluster.info()):
            self.send_events(shard_id, count, kinds)

    def _feed(self, cluster: GatewayCluster, per_shard: int, kinds: Sequence[str] | None) -> None:
        if not cluster.wait_until_ready(FEED_TIMEOUT):
            print("simulator: the shards did not become ready", file=sys.stderr, flush=True)
            cluster.down()
            return
        shard_ids = sorted(cluster.info())
        for shard_id in shard_ids:
            self.send_events(shard_id, per_shard, kinds)
        # Then wait until every shard has received all of it: down() ends the
        # events() loop only after what is queued by then.
        sent = {sid: self.run(_sequence, sid) for sid in shard_ids}
        deadline = time.monotonic() + FEED_TIMEOUT
        while time.monotonic() < deadline:
            info = cluster.info()
            if all((info[sid].sequence or 0) >= sent[sid] for sid in shard_ids):
                break
            self.sleep(0.02)
        cluster.down()

    def guild_ids(self, shard_id: int) -> list[int]:
        return list(self.run(lambda sim: sim.guild_ids(shard_id)))

    def summary(self) -> str:
        return self.run(_summary)

    def close(self) -> None:
        if self._feeder is not None:
            self._feeder.kill()
        self.run(lambda sim: sim.stop())


class ThreadedSimulation(Simulation):
    """The simulator in a thread of its own, with its own hub (the examples without gevent)."""

    def __init__(self, shards: int) -> None:
        from gcluster.testing import GatewaySimulator
        from gcluster.threaded import HubThread

        self._hub = HubThread("simulator").start()
        self.sim = self._hub.call(
            lambda: GatewaySimulator(
                shards=shards, max_concurrency=shards, heartbeat_interval=5.0
            ).start(),
            timeout=10,
        )
        Gateway.__init__(self, self.sim.token, {"api_base": self.sim.api_base})
        self._feeder = None

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        return self._hub.call(func, self.sim, *args, timeout=10)

    def background(self, func: Callable[[], None]) -> None:
        self._feeder = threading.Thread(target=func, name="simulated-feed", daemon=True)
        self._feeder.start()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        if self._feeder is not None:
            self._feeder.join(FEED_TIMEOUT)
        self.run(lambda sim: sim.stop())
        self._hub.stop()


def gateway(args: argparse.Namespace, *, threads: bool = False) -> Gateway:
    """Where the example connects: the simulator (--simulate) or Discord.

    Args:
        threads: run the simulator in a thread of its own, for examples whose
            own thread has no gevent hub to lend it.
    """
    if args.simulate:
        return ThreadedSimulation(args.shards) if threads else Simulation(args.shards)
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        raise SystemExit(
            "DISCORD_TOKEN is not set; set it to a bot token, or pass --simulate "
            "to run against the embedded gateway simulator"
        )
    options = {"api_base": args.api_base} if args.api_base else {}
    return Gateway(token, options)


# --- run where the simulator lives ----------------------------------------------------


def _send_events(sim: Any, shard_id: int, count: int, kinds: Iterable[str] | None) -> None:
    sim.send_events(shard_id, count, kinds)


def _sequence(sim: Any, shard_id: int) -> int:
    session = sim.session(shard_id)
    return session.sequence if session is not None else 0


def _summary(sim: Any) -> str:
    records = sim.records
    commands = Counter((c.op, c.shard_id) for c in records.commands)
    listed = ", ".join(
        f"op {op} on shard {shard_id}" + (f" x{n}" if n > 1 else "")
        for (op, shard_id), n in sorted(commands.items())
    )
    return (
        f"simulator: {len(records.identifies)} identifies, "
        f"{sum(r.ok for r in records.resumes)} resumes, "
        f"{len(records.dispatches)} dispatches, commands: {listed or 'none'}"
    )
