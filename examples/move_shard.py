"""Move shards from one running cluster to another: remove_shard, then add_shard.

    DISCORD_TOKEN=... python examples/move_shard.py
    python examples/move_shard.py --simulate

Two clusters stand for two processes of one bot; across processes they would
share a `gcluster.redis.RedisQueue` and pass the sessions through a
`RedisSessionStore` (or any channel, as `ResumeSession.to_dict()`). Shard 1
leaves the first cluster with its session and the second cluster starts
with it; then shard 0 moves into the running second cluster. Each RESUMEs:
no IDENTIFY, and every event reaches the application once, through one
cluster or the other. The first cluster's `events()` still delivers what
its shards had received before they left.
"""

from __future__ import annotations

import sys
from collections import Counter

import _simulate
import gevent

from gcluster import Cluster, EventType, Intents, LocalQueue, ShardScheme

INTENTS = Intents.GUILDS | Intents.GUILD_MESSAGES
KINDS = ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE")
WAIT = 30.0


def main(argv: list[str] | None = None) -> int:
    args = _simulate.parser(__doc__).parse_args(argv)
    args.shards = 2
    with _simulate.gateway(args) as gateway:
        queue = LocalQueue()  # one identify queue for both (a RedisQueue across processes)
        scheme = ShardScheme.range([0, 1], total=2)
        first = Cluster(gateway.token, INTENTS, shard_scheme=scheme, queue=queue, **gateway.options)
        first.up()
        read: Counter[int] = Counter()  # dispatches read, by shard, from both clusters
        readers = [gevent.spawn(count_dispatches, first, read)]
        gateway.send_events_to_all(first, 5, KINDS)  # --simulate: events before the moves

        # Shard 1 moves: the second cluster starts with it, resuming its session.
        session = first.remove_shard(1)
        second = Cluster(
            gateway.token,
            INTENTS,
            shard_scheme=ShardScheme.range([1], total=2),
            resume_sessions={1: session} if session else {},
            queue=queue,
            **gateway.options,
        )
        second.up()
        readers.append(gevent.spawn(count_dispatches, second, read))
        print(f"shard 1 moved: first runs {sorted(first.info())}, second {sorted(second.info())}")

        # Shard 0 moves into the running second cluster.
        session = first.remove_shard(0)
        second.add_shard(0, session).wait_until_ready(WAIT)
        print(f"shard 0 moved: first runs {sorted(first.info())}, second {sorted(second.info())}")
        first.down()  # its events() ends once what its shards had received is read

        gateway.feed(second, 5, KINDS)  # --simulate: more events, then second.down()
        gevent.joinall(readers)
        print(f"events read: shard 0: {read[0]}, shard 1: {read[1]}")
    return 0


def count_dispatches(cluster: Cluster, read: Counter[int]) -> None:
    """Count the dispatches (READY and RESUMED aside) until the cluster's events() ends."""
    for shard_id, event in cluster.events():
        if event.sequence is not None and event.kind not in (EventType.READY, EventType.RESUMED):
            read[shard_id] += 1


if __name__ == "__main__":
    sys.exit(main())
