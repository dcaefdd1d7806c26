"""Handlers in worker processes: the gateway as a service, events through Redis Streams.

    python -m gcluster run --sink redis://localhost:6379/0 --scheme process:0/1 --shards 2
    python examples/workers.py --redis redis://localhost:6379/0 --name w1    # as many as you like
    python examples/workers.py --simulate    # all of it on this machine, then a summary

The gateway process keeps the shards' connections and publishes every event to
a Redis stream; workers in one consumer group share the events, each handled
by one of them. The handler below is the one a single-process bot would run
over `cluster.events()`; in a worker only the line that makes the iterator
changes. A handler that answers on the gateway sends its command through the
worker (`worker.send_command`): the gateway process holding the guild's shard
sends it, and the answer (here GUILD_MEMBERS_CHUNK) comes back as an event,
to whichever worker takes it.

With --simulate it starts a throwaway redis-server (unless --redis is given),
the gateway service on the embedded simulator (2 shards, 10 events each) and
two workers, waits until every message was answered, stops them all (the
service with SIGTERM, which saves its sessions) and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import _needs

from gcluster import Event, EventType, RequestGuildMembers

if TYPE_CHECKING:
    from gcluster.redis import StreamWorker

GROUP = "example-bot"
WAIT = 30.0


def handle(shard_id: int, event: Event, worker: StreamWorker, name: str) -> None:
    """What the bot does with one event; the same code in a single process or a worker."""
    if event.kind is EventType.MESSAGE_CREATE:
        author = event.data["author"]
        print(f"[{name}] shard {shard_id}: message from {author['username']}", flush=True)
        # Ask the gateway for the author's member object: a command, sent by the
        # process that holds the guild's shard.
        worker.send_command(
            RequestGuildMembers(
                guild_id=event.data["guild_id"],
                user_ids=[author["id"]],
                nonce=f"m{event.data['id']}"[-32:],
            )
        )
    elif event.kind is EventType.GUILD_MEMBERS_CHUNK:
        members = len(event.data.get("members", []))
        print(f"[{name}] shard {shard_id}: member chunk ({members} members)", flush=True)


def work(url: str, name: str) -> int:
    """One worker: handle the group's events until SIGTERM or Ctrl-C, then stop cleanly."""
    from gcluster.redis import StreamWorker

    worker = StreamWorker(url, GROUP, name)
    # SIGTERM (a deploy, systemd) or Ctrl-C: handle the events already read,
    # acknowledge them and end, leaving nothing for another worker to claim.
    # A second Ctrl-C interrupts a handler that hangs.
    worker.stop_on_signals(signal.SIGTERM, signal.SIGINT)
    print(f"[{name}] reading {worker.stream!r} as {name!r} in group {GROUP!r}", flush=True)
    try:
        # In one process this line would be: for shard_id, event in cluster.events():
        for shard_id, event in worker.events():
            handle(shard_id, event, worker, name)
    except KeyboardInterrupt:
        pass
    finally:
        worker.close()
    stats = worker.stats()
    print(f"[{name}] done: {stats.acked} events handled, {stats.commands} commands", flush=True)
    return 0


# --- --simulate: everything on this machine ------------------------------------------------


@contextmanager
def throwaway_redis() -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        raise SystemExit("--simulate needs redis-server on PATH (or pass --redis URL)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="gcluster-example-") as workdir:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(port)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            server.terminate()
            server.wait()


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def spawn(*args: str) -> subprocess.Popen[str]:
    """A Python child whose output this process reads; its errors go to our stderr."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=path),
    )


def collect(process: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    """Append the process's output lines to `lines` as they come, from a thread."""

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def wait_for(condition: Callable[[], bool], what: str, outputs: dict[str, list[str]]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}; the workers printed {outputs}")
        time.sleep(0.05)


def simulate(redis_url: str | None) -> int:
    with throwaway_redis() if redis_url is None else _given(redis_url) as url:
        service = spawn(
            "-m", "gcluster", "run", "--sink", url, "--shards", "2", "--simulate",
            "--simulate-events", "10", "--intents", "GUILDS,GUILD_MESSAGES,GUILD_MEMBERS",
            "--events", "MESSAGE_CREATE,GUILD_MEMBERS_CHUNK", "--log-level", "warning",
        )  # fmt: skip
        names = ("w1", "w2")
        workers = [spawn(os.path.abspath(__file__), "--redis", url, "--name", n) for n in names]
        outputs: dict[str, list[str]] = {name: [] for name in names}
        readers = [collect(w, outputs[n]) for w, n in zip(workers, names, strict=True)]
        try:
            # 10 events a shard cycle through 5 kinds: 2 messages per shard, 4 in all,
            # and each gets its member chunk back.
            wait_for(
                lambda: (
                    _count(outputs, "message from") >= 4 and _count(outputs, "member chunk") >= 4
                ),
                "the workers to handle every message and its answer",
                outputs,
            )
            service.send_signal(signal.SIGTERM)
            service_code = service.wait(WAIT)
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker, reader in zip(workers, readers, strict=True):
                worker.wait(WAIT)
                reader.join(WAIT)
        finally:
            for process in (service, *workers):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        for lines in outputs.values():
            for line in lines:
                print(line)
        took = sorted(name for name, lines in outputs.items() if any("message" in x for x in lines))
        print(
            f"summary: {_count(outputs, 'message from')} messages and "
            f"{_count(outputs, 'member chunk')} member chunks handled by {len(workers)} workers "
            f"({', '.join(took)} took messages); gateway service exited {service_code}"
        )
        return 0 if service_code == 0 else 1


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def _count(outputs: dict[str, list[str]], text: str) -> int:
    return sum(text in line for lines in outputs.values() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "--redis",
        default=os.environ.get("REDIS_URL"),
        help="the Redis the gateway service publishes to (default $REDIS_URL)",
    )
    parser.add_argument("--name", default=None, help="this worker's consumer name")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="run a gateway service on the embedded simulator and two workers, then summarize",
    )
    args: Any = parser.parse_args(argv)
    if args.redis:
        _needs.redis(args.redis)
    else:
        _needs.package("redis", "pip install 'gcluster[redis]'")
    if args.simulate:
        return simulate(args.redis)
    if not args.redis:
        raise SystemExit("pass --redis URL (or set REDIS_URL), or --simulate")
    return work(args.redis, args.name or f"{socket.gethostname()}-{os.getpid()}")


if __name__ == "__main__":
    sys.exit(main())
