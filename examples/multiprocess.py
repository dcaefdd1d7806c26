"""One bot split over several processes that share a Redis: identify queue and sessions.

    DISCORD_TOKEN=... python examples/multiprocess.py --redis redis://localhost:6379/0 --shards 12
    python examples/multiprocess.py --simulate --redis redis://localhost:6379/0

This script starts `--processes` copies of itself. Copy i runs its slice of
the shards, `ShardScheme.process(i, processes, shards)`, so every process
holds shards of every identify bucket, with two things shared through Redis:

- a `RedisQueue`: Discord allows one IDENTIFY per bucket per 5 s for the bot
  as a whole, whichever process sends it;
- a `RedisSessionStore`: each shard's session, saved as the process finishes
  with its events, so a process that is restarted (or crashed) RESUMEs its
  shards instead of spending new session starts, and misses nothing.

Each process prints the events it receives. Ctrl-C stops them all, keeping
their sessions resumable for the next start. With --simulate the parent also
runs a gateway simulator (its identify interval scaled from 5 s to 1 s, with
two buckets, so the queue's spacing shows), sends every shard a few events,
stops the processes once they have printed them, removes what the run left in
Redis and exits.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import IO, Any

import _needs
import gevent
from gevent import subprocess

from gcluster import Cluster, EventType, EventTypeFlags, Intents, ShardScheme

INTENTS = Intents.GUILDS | Intents.GUILD_MESSAGES | Intents.GUILD_MESSAGE_TYPING
EVENT_TYPES = (
    EventTypeFlags.READY
    | EventTypeFlags.RESUMED
    | EventTypeFlags.MESSAGE_CREATE
    | EventTypeFlags.MESSAGE_UPDATE
    | EventTypeFlags.MESSAGE_DELETE
    | EventTypeFlags.TYPING_START
)
# How long the simulated run may take before it gives up.
SIMULATION_TIMEOUT = 30.0
# The simulator's identify interval (Discord: 5 s), and its buckets.
SIMULATED_INTERVAL = 1.0
SIMULATED_CONCURRENCY = 2
SIMULATED_KINDS = ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "TYPING_START")
RECEIVED = re.compile(r"^\[process \d+\] shard (\d+): ")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    top = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    top.add_argument("--redis", required=True, help="the Redis every process shares")
    top.add_argument(
        "--simulate",
        action="store_true",
        help="run against an embedded gateway simulator instead of Discord",
    )
    top.add_argument("--processes", type=int, default=3, help="how many processes (default 3)")
    top.add_argument(
        "--shards",
        type=int,
        default=None,
        help="the bot's shard count, the same for every process (--simulate: default 6)",
    )
    top.add_argument(
        "--events", type=int, default=5, help="with --simulate: events sent to each shard"
    )
    top.add_argument(
        "--namespace", default="gcluster-example", help="the bot's key prefix in Redis"
    )
    top.add_argument(
        "--api-base",
        default=None,
        help="REST base URL instead of Discord's, e.g. a gateway proxy (token from DISCORD_TOKEN)",
    )
    # Set by the parent for the processes it starts.
    top.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    top.add_argument("--interval", type=float, default=5.0, help=argparse.SUPPRESS)
    args = top.parse_args(argv)
    if args.shards is None:
        if not args.simulate:
            top.error("--shards is needed with Discord: every process must use the same count")
        args.shards = 6
    if not 1 <= args.processes <= args.shards:
        top.error("--processes must be between 1 and --shards")
    return args


# --- one process of the bot -----------------------------------------------------------


def run_process(args: argparse.Namespace) -> int:
    """Run this process's slice of the shards until SIGINT or SIGTERM."""
    from gcluster.redis import RedisQueue, RedisSessionStore

    index = args.child
    me = f"[process {index}]"
    options: dict[str, Any] = {"api_base": args.api_base} if args.api_base else {}
    cluster = Cluster(
        os.environ["DISCORD_TOKEN"],
        INTENTS,
        event_types=EVENT_TYPES,
        shard_scheme=ShardScheme.process(index, args.processes, args.shards),
        queue=RedisQueue(args.redis, namespace=args.namespace, interval=args.interval),
        session_store=RedisSessionStore(args.redis, namespace=args.namespace),
        **options,
    )

    def stop() -> None:
        # Keep the sessions (saved in Redis): the next start RESUMEs them.
        gevent.spawn(cluster.down_resumable)

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    cluster.up()
    say(f"{me} up: shards {[shard.id for shard in cluster.shards()]}")
    handled = 0
    for shard_id, event in cluster.events():
        if event.kind is EventType.READY:
            say(f"{me} shard {shard_id} identified")
        elif event.kind is EventType.RESUMED:
            say(f"{me} shard {shard_id} resumed")
        elif event.sequence is not None:
            channel = event.data.get("channel_id") if isinstance(event.data, dict) else None
            say(f"{me} shard {shard_id}: {event.name} in channel {channel}")
            handled += 1
    say(f"{me} stopped after {handled} events; sessions kept in Redis")
    return 0


def say(line: str) -> None:
    print(line, flush=True)


# --- the parent: start the processes (and the simulator) -------------------------------


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    if args.child is not None:
        return run_process(args)
    # The processes would retry a missing Redis for as long as they run: check it first.
    _needs.redis(args.redis)
    if args.simulate:
        return simulate(args)
    children = start_processes(args, discord_token(), api_base=args.api_base)

    def stop() -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    gevent.signal_handler(signal.SIGINT, stop)
    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.joinall([gevent.spawn(forward, child.stdout, Counter()) for child in children])
    return max(child.wait() for child in children)


def discord_token() -> str:
    token = os.environ.get("DISCORD_TOKEN")
    if not token:
        raise SystemExit(
            "DISCORD_TOKEN is not set; set it to a bot token, or pass --simulate "
            "to run against the embedded gateway simulator"
        )
    return token


def start_processes(
    args: argparse.Namespace,
    token: str,
    *,
    api_base: str | None = None,
    interval: float | None = None,
) -> list[subprocess.Popen]:
    env = dict(os.environ, DISCORD_TOKEN=token)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--redis",
        args.redis,
        "--processes",
        str(args.processes),
        "--shards",
        str(args.shards),
        "--namespace",
        args.namespace,
    ]
    if api_base is not None:
        command += ["--api-base", api_base]
    if interval is not None:
        command += ["--interval", str(interval)]
    return [
        subprocess.Popen([*command, "--child", str(index)], stdout=subprocess.PIPE, env=env)
        for index in range(args.processes)
    ]


def forward(stream: IO[bytes], received: Counter[int]) -> None:
    """Print a process's lines as they come, counting the events each shard received."""
    for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        print(line, flush=True)
        match = RECEIVED.match(line)
        if match:
            received[int(match[1])] += 1


def simulate(args: argparse.Namespace) -> int:
    from gcluster.testing import GatewaySimulator

    # A namespace of this run's own, removed from Redis at the end.
    args.namespace = f"{args.namespace}-simulated-{os.getpid()}"
    sim = GatewaySimulator(
        shards=args.shards,
        max_concurrency=SIMULATED_CONCURRENCY,
        identify_interval=SIMULATED_INTERVAL,
        heartbeat_interval=5.0,
    ).start()
    children = start_processes(args, sim.token, api_base=sim.api_base, interval=SIMULATED_INTERVAL)
    received: Counter[int] = Counter()
    readers = [gevent.spawn(forward, child.stdout, received) for child in children]
    deadline = time.monotonic() + SIMULATION_TIMEOUT

    def wait_until(condition: Callable[[], bool]) -> bool:
        # The simulator's own wait: the hub serves the gateway and the readers meanwhile.
        return sim.wait_until(condition, timeout=max(0.0, deadline - time.monotonic()))

    try:
        if not wait_until(lambda: len(sim.sessions) == args.shards):
            print("simulator: not every shard identified", file=sys.stderr)
            return 1
        for shard_id in range(args.shards):
            sim.send_events(shard_id, args.events, kinds=SIMULATED_KINDS)
        if not wait_until(lambda: all(received[s] >= args.events for s in range(args.shards))):
            print("simulator: not every event was received", file=sys.stderr)
            return 1
        return stop_processes(children, readers, deadline)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        gevent.joinall(readers, timeout=5.0)
        print(summary(sim), flush=True)
        sim.stop()
        forget(args.redis, args.namespace)


def stop_processes(
    children: list[subprocess.Popen], readers: list[gevent.Greenlet], deadline: float
) -> int:
    for child in children:
        child.send_signal(signal.SIGTERM)
    try:
        codes = [child.wait(max(0.1, deadline - time.monotonic())) for child in children]
    except subprocess.TimeoutExpired:
        print("simulator: a process did not stop", file=sys.stderr)
        return 1
    gevent.joinall(readers, timeout=5.0)
    return max(codes)


def summary(sim: Any) -> str:
    records = sim.records
    gaps = []
    for bucket in range(SIMULATED_CONCURRENCY):
        times = sorted(r.time for r in records.identifies if r.bucket == bucket)
        gaps += [b - a for a, b in zip(times, times[1:], strict=False)]
    spacing = f"; IDENTIFYs of a bucket at least {min(gaps):.2f} s apart" if gaps else ""
    return (
        f"simulator: {len(records.identifies)} identifies, {len(records.violations)} "
        f"violations, {len(records.dispatches)} dispatches{spacing}"
    )


def forget(url: str, namespace: str) -> None:
    """Remove the keys of a simulated run (queue slots, budget, sessions) from Redis."""
    import redis

    tag = f"{{{namespace}}}"
    client = redis.Redis.from_url(url)
    cluster = None
    try:
        try:
            client.execute_command("CLUSTER", "INFO")
        except redis.ResponseError:
            pass  # "cluster support disabled": one server
        else:
            # A node of a Redis Cluster: every key of the namespace shares its
            # hash tag, so the node serving the tag's slot holds them all.
            cluster = redis.RedisCluster.from_url(url)
            client = cluster.get_redis_connection(cluster.get_node_from_key(tag))
        keys = list(client.scan_iter(match=f"{tag}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    sys.exit(main())
