"""Gateway commands: a presence on every shard, and guild members from the guild's own shard.

    DISCORD_TOKEN=... python examples/commands.py
    python examples/commands.py --simulate

A command goes out through one shard. A presence is per shard, so it is sent
to all of them; a guild's member list must be asked for on the shard that
holds the guild, which `shard_for_guild(guild_id, total)` computes. The
members arrive as GUILD_MEMBERS_CHUNK events on that shard. (Against Discord,
asking for a member list needs the privileged GUILD_MEMBERS intent, enabled in
the developer portal.)
"""

from __future__ import annotations

import sys

import _simulate
import gevent

from gcluster import (
    Activity,
    ActivityType,
    Cluster,
    EventType,
    Intents,
    RequestGuildMembers,
    Status,
    UpdatePresence,
    shard_for_guild,
)

WAIT = 30.0  # seconds to wait for the shards, and then for the answers


def main(argv: list[str] | None = None) -> int:
    args = _simulate.parser(__doc__).parse_args(argv)
    with _simulate.gateway(args) as gateway:
        cluster = Cluster(gateway.token, Intents.GUILDS | Intents.GUILD_MEMBERS, **gateway.options)
        try:
            return run(cluster)
        finally:
            cluster.down()


def run(cluster: Cluster) -> int:
    cluster.up()
    shards = cluster.shards()
    total = shards[0].total

    # READY lists each shard's guilds: take the first of every shard that has one.
    guilds: dict[int, int] = {}
    ready: set[int] = set()
    with gevent.Timeout(WAIT, False):
        for shard_id, event in cluster.events():
            if event.kind is EventType.READY:
                ready.add(shard_id)
                if event.data["guilds"]:
                    guilds[shard_id] = int(event.data["guilds"][0]["id"])
            if len(ready) == len(shards):
                break

    presence = UpdatePresence(
        status=Status.DND, activities=[Activity(name="the gateway", type=ActivityType.WATCHING)]
    )
    for shard in shards:
        cluster.command(shard.id, presence)
        print(f"presence -> shard {shard.id}")

    asked: dict[str, int] = {}  # nonce -> the shard that was asked
    for guild_id in sorted(guilds.values()):
        shard_id = shard_for_guild(guild_id, total)
        nonce = f"members-{guild_id}"[:32]
        cluster.command(shard_id, RequestGuildMembers(guild_id=guild_id, query="", nonce=nonce))
        asked[nonce] = shard_id
        print(f"members of guild {guild_id} -> shard {shard_id}")

    answered = 0
    with gevent.Timeout(WAIT, False):
        for shard_id, event in cluster.events():
            if event.kind is EventType.GUILD_MEMBERS_CHUNK and event.data.get("nonce") in asked:
                expected = asked[event.data["nonce"]]
                members = len(event.data.get("members", []))
                print(
                    f"chunk for guild {event.data['guild_id']} on shard {shard_id} "
                    f"(asked shard {expected}): {members} members"
                )
                answered += 1
                if answered == len(asked):
                    break
    print(f"answers: {answered} of {len(asked)}")
    return 0 if answered == len(asked) else 1


if __name__ == "__main__":
    sys.exit(main())
