"""A bot without gevent: ThreadedCluster from ordinary threads.

    DISCORD_TOKEN=... python examples/threaded.py
    python examples/threaded.py --simulate

The cluster runs in a background thread with its own gevent hub; this script
never imports gevent and never monkey-patches. A plain `threading.Thread`
reads the events, while the main thread sends a command and reads the shards'
state: every ThreadedCluster method may be called from any thread, and an
exception raised in the cluster's thread is raised again in the caller's.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter

import _simulate

from gcluster import Activity, EventType, Intents, Status, UpdatePresence
from gcluster.threaded import ThreadedCluster


def main(argv: list[str] | None = None) -> int:
    args = _simulate.parser(__doc__).parse_args(argv)
    with _simulate.gateway(args, threads=True) as gateway:
        cluster = ThreadedCluster(gateway.token, Intents.GUILD_MESSAGES, **gateway.options)
        cluster.up(timeout=60)
        if not cluster.wait_until_ready(timeout=60):
            print("the shards did not become ready", file=sys.stderr)
            cluster.down()
            return 1

        counts: Counter[str] = Counter()

        def read_events() -> None:
            for shard_id, event in cluster.events():
                counts[event.name] += 1
                if event.kind is EventType.MESSAGE_CREATE:
                    print(f"[{threading.current_thread().name}] shard {shard_id}: new message")

        reader = threading.Thread(target=read_events, name="reader")
        reader.start()

        presence = UpdatePresence(status=Status.IDLE, activities=[Activity(name="with threads")])
        # Each is a ThreadedShard: its methods run on the shard in the cluster's thread.
        for shard in cluster.shards():
            shard.command(presence)
        print(f"presence sent to shards {[shard.id for shard in cluster.shards()]}")
        for info in cluster.info().values():
            print(f"shard {info.id}: {info.stage.value}, session {info.session_id}")

        gateway.feed(cluster, per_shard=10)  # --simulate: 10 events a shard, then down()
        try:
            reader.join()
        except KeyboardInterrupt:
            cluster.down()  # from this thread; the reader's loop ends
            reader.join()
        print(f"messages: {counts['MESSAGE_CREATE']}, events: {sum(counts.values())}")
        print(f"gevent monkey-patched: {_patched()}")
    return 0


def _patched() -> bool:
    # Looked up, not imported: this script itself never imports gevent.
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_anything_patched()


if __name__ == "__main__":
    sys.exit(main())
