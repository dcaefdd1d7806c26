"""discord.py's side of ``benchmarks/peers.py``: an AutoShardedClient against the simulator.

Runs in the benchmarks' own virtualenv (``benchmarks/.venv-bench``, where
discord.py is installed; gcluster never imports it and this never imports
gcluster). discord.py is pointed at the simulator by setting its REST base
URL and its default gateway URL; the shard count and gateway URL then come
from the simulator's GET /gateway/bot, as they would from Discord's.
Everything else is discord.py's defaults, except what
the simulator does not do: it sends no GUILD_CREATE after READY (so there is
no waiting for guilds) and it allows IDENTIFYs back to back (so there is no
5 s sleep between shards).

``--json stdlib`` makes it decode with the standard library's json, as
discord.py does without its ``speed`` extra; ``--json orjson`` with orjson, as
it does with it (orjson must be installed in the virtualenv).

It prints JSON lines: ``{"event": "ready", ...}`` once every shard is ready,
then ``{"event": "done", ...}`` each time another ``--events`` messages
reached ``on_message``, with ``time.monotonic()`` and the process's CPU time,
and exits after ``--rounds`` of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "time": time.monotonic(), "cpu": cpu_seconds(), **fields}))
    sys.stdout.flush()


class Bench(discord.AutoShardedClient):
    def __init__(self, per_round: int, rounds: int, **options: object) -> None:
        super().__init__(**options)
        self.per_round = per_round
        self.rounds = rounds
        self.count = 0
        self.ready_once = False

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # The simulator allows IDENTIFYs back to back; discord.py would sleep 5 s.
        return None

    async def on_ready(self) -> None:
        if not self.ready_once:
            self.ready_once = True
            emit("ready", shards=self.shard_count, version=discord.__version__)

    async def on_message(self, message: discord.Message) -> None:
        self.count += 1
        if self.count % self.per_round == 0:
            emit("done", count=self.count)
            if self.count == self.per_round * self.rounds:
                await self.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-base", required=True)
    parser.add_argument("--gateway-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--events", type=int, required=True, help="messages per round, all shards")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", choices=("stdlib", "orjson"), default="stdlib")
    args = parser.parse_args()
    # discord.py picks orjson at import when it is installed; choose explicitly.
    if args.json == "orjson":
        import orjson

        discord.utils._from_json = orjson.loads
    else:
        discord.utils._from_json = json.loads
    Route.BASE = args.api_base
    # Used instead of /gateway/bot's URL when the shard count is given, and
    # after some reconnects: never Discord's own.
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.gateway_url)
    compression = discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE
    if compression != "zlib-stream":
        print(f"discord.py would use {compression}, not zlib-stream", file=sys.stderr)
        return 2
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = True
    client = Bench(
        args.events,
        args.rounds,
        intents=intents,
        guild_ready_timeout=0.0,
        chunk_guilds_at_startup=False,
    )
    asyncio.run(client.start(args.token))
    return 0


if __name__ == "__main__":
    sys.exit(main())
