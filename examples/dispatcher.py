"""Handlers that wait on I/O, run concurrently: the Dispatcher.

    DISCORD_TOKEN=... python examples/dispatcher.py
    python examples/dispatcher.py --simulate

Each event's handlers run in a greenlet of a bounded pool, so a handler that
waits (here a 50 ms pause standing in for a REST call or a database query)
holds up neither the other events nor the shards' heartbeats. With
``ordering="channel"`` the events of one channel are handled one at a time,
in order, while different channels proceed side by side.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict

import _simulate
import gevent

from gcluster import Cluster, Event, EventType, Intents
from gcluster.dispatch import Dispatcher


def main(argv: list[str] | None = None) -> int:
    args = _simulate.parser(__doc__).parse_args(argv)
    with _simulate.gateway(args) as gateway:
        cluster = Cluster(gateway.token, Intents.GUILDS | Intents.GUILD_MESSAGES, **gateway.options)
        dispatcher = Dispatcher(cluster, pool_size=20, ordering="channel")
        kinds: Counter[str] = Counter()
        # The sequences each channel's messages were handled in: one shard
        # numbers a channel's events, so each list must be increasing.
        handled: defaultdict[str, list[int]] = defaultdict(list)

        @dispatcher.on(EventType.MESSAGE_CREATE, EventType.MESSAGE_UPDATE)
        def on_message(shard_id: int, event: Event) -> None:
            gevent.sleep(0.05)  # a slow call; other channels go on meanwhile
            handled[event.data["channel_id"]].append(event.sequence or 0)

        @dispatcher.on_any
        def count(shard_id: int, event: Event) -> None:
            kinds[event.name] += 1

        started = time.monotonic()
        cluster.up()
        gateway.feed(cluster, per_shard=20)  # --simulate: 20 events a shard, then down()
        try:
            dispatcher.run()  # until cluster.down() ends the stream
        except KeyboardInterrupt:
            cluster.down()
            dispatcher.stop(timeout=10)
        elapsed = time.monotonic() - started

        stats = dispatcher.stats()
        messages = sum(len(seqs) for seqs in handled.values())
        in_order = all(seqs == sorted(seqs) for seqs in handled.values())
        print(f"handled {messages} messages in {len(handled)} channels in {elapsed:.1f} s")
        print(f"order kept in every channel: {'yes' if in_order else 'NO'}")
        print(
            f"most handled at once: {stats.peak_events_in_flight} (pool of {dispatcher.pool_size})"
        )
        print(
            f"events: received={stats.events_received} handled={stats.events_handled} "
            f"in_flight={stats.events_in_flight} pending={stats.events_pending}; "
            f"handler calls: returned={stats.calls_returned} failed={stats.calls_failed}"
        )
        print("by kind: " + ", ".join(f"{name}={n}" for name, n in sorted(kinds.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
