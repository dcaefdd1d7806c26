"""Stop without losing events: down_resumable, a JSON file, and a new cluster that resumes.

    DISCORD_TOKEN=... python examples/resume.py [--sessions FILE]
    python examples/resume.py --simulate

`down_resumable()` closes every shard with a code that keeps its session open
on Discord's side and returns `{shard_id: ResumeSession}`. Saved as JSON, they
let another process (here: a second cluster in the same script) RESUME
instead of IDENTIFY, and Discord replays everything dispatched in between.
Discord keeps a session resumable for a short while only, so restart promptly.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import _simulate
import gevent

from gcluster import Cluster, EventType, Intents, ResumeSession

INTENTS = Intents.GUILDS | Intents.GUILD_MESSAGES | Intents.GUILD_MESSAGE_TYPING
# With --simulate: what those intents bring (the simulator withholds the rest, as Discord does).
KINDS = ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "TYPING_START")
WAIT = 30.0  # seconds to read events before stopping, at most


def main(argv: list[str] | None = None) -> int:
    top = _simulate.parser(__doc__)
    top.add_argument("--sessions", default=None, help="where to save the sessions (JSON)")
    args = top.parse_args(argv)
    path = args.sessions or os.path.join(tempfile.gettempdir(), f"gcluster-{os.getpid()}.json")
    with _simulate.gateway(args) as gateway:
        # The first process: run for a while, then stop and save the sessions.
        first = Cluster(gateway.token, INTENTS, **gateway.options)
        first.up()
        first.wait_until_ready(WAIT)
        gateway.send_events_to_all(first, 5, KINDS)  # --simulate: a few events to read
        print(f"first cluster read {read_dispatches(first, count=5 * len(first.shards()))} events")
        sessions = first.down_resumable()
        # Events received before the shutdown are still in the queue: handle them too.
        leftover = sum(1 for _ in first.events())
        with open(path, "w") as file:
            json.dump({str(sid): session.to_dict() for sid, session in sessions.items()}, file)
        print(f"saved {len(sessions)} sessions to a JSON file ({leftover} events after down)")

        # Meanwhile the gateway keeps dispatching; nothing is lost.
        gateway.send_events_to_all(first, 7, KINDS)  # --simulate: sent while no cluster runs

        # The next process: load the sessions and resume them.
        with open(path) as file:
            loaded = json.load(file)
        saved = {int(sid): ResumeSession.from_dict(data) for sid, data in loaded.items()}
        if args.sessions is None:
            os.remove(path)
        second = Cluster(gateway.token, INTENTS, resume_sessions=saved, **gateway.options)
        second.up()
        replayed = read_dispatches(second, count=7 * len(saved))
        resumed = sorted(i.id for i in second.info().values() if i.session_id in _ids(saved))
        print(f"second cluster resumed shards {resumed} and read {replayed} events")
        second.down()
    return 0


def read_dispatches(cluster: Cluster, count: int) -> int:
    """Read events until `count` dispatches (READY and RESUMED aside) or WAIT seconds."""
    seen = 0
    with gevent.Timeout(WAIT, False):
        for _, event in cluster.events():
            if event.sequence is not None and event.kind not in (
                EventType.READY,
                EventType.RESUMED,
            ):
                seen += 1
                if seen >= count:
                    break
    return seen


def _ids(sessions: dict[int, ResumeSession]) -> set[str]:
    return {session.session_id for session in sessions.values()}


if __name__ == "__main__":
    sys.exit(main())
