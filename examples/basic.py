"""The smallest bot: one loop over the events of every shard.

    DISCORD_TOKEN=... python examples/basic.py
    python examples/basic.py --simulate

Each shard runs in its own greenlets; `cluster.events()` merges their events
into one stream, in order within each shard. Only the message events are
asked for: the others are dropped before their JSON is even decoded.
"""

from __future__ import annotations

import sys

import _simulate

from gcluster import Cluster, EventType, EventTypeFlags, Intents


def main(argv: list[str] | None = None) -> int:
    args = _simulate.parser(__doc__).parse_args(argv)
    with _simulate.gateway(args) as gateway:
        types = (
            EventTypeFlags.MESSAGE_CREATE
            | EventTypeFlags.MESSAGE_DELETE
            | EventTypeFlags.MESSAGE_UPDATE
        )
        cluster = Cluster(
            gateway.token, Intents.GUILD_MESSAGES, event_types=types, **gateway.options
        )
        cluster.up()
        gateway.feed(cluster, per_shard=10)  # --simulate: 10 events a shard, then down()

        for shard_id, event in cluster.events():
            if event.kind is EventType.MESSAGE_CREATE:
                print(f"Shard {shard_id} got a new message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
