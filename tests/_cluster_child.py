"""One process of a bot split over processes, driven by tests/test_multiprocess.py.

    python tests/_cluster_child.py --redis URL --api-base URL --token TOKEN \\
        --index I --count N --total T [--interval S] [--margin S] [--lag S] [--namespace NS]

It runs the shards `ShardScheme.process(index, count, total)` with a shared
`RedisQueue` and `RedisSessionStore`, and talks to the test in JSON lines.

stdout, one object a line:
    {"ready": pid}                        built, waiting for "go"
    {"up": seconds, "shards": [...]}      up() returned after that long
    {"error": kind, "message": text}      up() raised; the process exits 2
    {"received": {shard: sequence}}       what the shards have received, as it changes
    {"handled": [shard, number, seq]}     the handler finished a numbered event
    {"done": handled}                     events() ended; the process exits 0
stdin: "go" starts the cluster; "stop" (or end of input) brings it down.

The handler takes `--lag` seconds for each numbered event, so it can be made
to fall far behind what the shards receive.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import gevent
from gevent.fileobject import FileObjectPosix

from gcluster import Cluster, GClusterError, Intents, ShardScheme
from gcluster.redis import RedisQueue, RedisSessionStore
from gcluster.testing import STREAM_INTENTS, event_number

REPORT_EVERY = 0.05  # seconds between looks at what the shards received


def emit(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(description="one process of a bot split over processes")
    top.add_argument("--redis", required=True)
    top.add_argument("--api-base", required=True)
    top.add_argument("--token", required=True)
    top.add_argument("--index", type=int, required=True)
    top.add_argument("--count", type=int, required=True)
    top.add_argument("--total", type=int, required=True)
    top.add_argument("--interval", type=float, default=5.0)
    top.add_argument("--margin", type=float, default=None, help="RedisQueue's margin")
    top.add_argument("--lag", type=float, default=0.0)
    top.add_argument("--namespace", default="gcluster-test")
    top.add_argument("--log-level", default=os.environ.get("GCLUSTER_CHILD_LOG", "WARNING"))
    args = top.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format=f"%(asctime)s process {args.index} [{os.getpid()}] %(name)s: %(message)s",
    )

    margin = {} if args.margin is None else {"margin": args.margin}
    cluster = Cluster(
        args.token,
        Intents.GUILDS | STREAM_INTENTS,
        api_base=args.api_base,
        shard_scheme=ShardScheme.process(args.index, args.count, args.total),
        queue=RedisQueue(args.redis, namespace=args.namespace, interval=args.interval, **margin),
        session_store=RedisSessionStore(args.redis, namespace=args.namespace),
    )
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    emit(ready=os.getpid())
    if stdin.readline().strip() != b"go":
        return 1

    def report_received() -> None:
        last: dict[int, int] = {}
        while True:
            now = {sid: info.sequence or 0 for sid, info in cluster.info().items()}
            if now != last:
                emit(received=now)
                last = now
            gevent.sleep(REPORT_EVERY)

    def stop_on_request() -> None:
        while True:
            line = stdin.readline()
            if not line or line.strip() == b"stop":
                break
        cluster.down()

    started = time.monotonic()
    # Reports start with the shards: some receive READY while up() still waits.
    reporter = gevent.spawn(report_received)
    try:
        cluster.up(timeout=30.0)
    except GClusterError as err:
        reporter.kill()
        emit(error=type(err).__name__, message=str(err))
        cluster.down()
        return 2
    emit(up=time.monotonic() - started, shards=[shard.id for shard in cluster.shards()])
    stopper = gevent.spawn(stop_on_request)
    handled = 0
    for shard_id, event in cluster.events():
        number = event_number(event.data) if isinstance(event.data, dict) else None
        if number is None:
            continue
        if args.lag:
            gevent.sleep(args.lag)  # the handler's work (I/O, say)
        emit(handled=[shard_id, number, event.sequence])
        handled += 1
    reporter.kill()
    stopper.join(5.0)
    emit(done=handled)
    return 0


if __name__ == "__main__":
    sys.exit(main())
