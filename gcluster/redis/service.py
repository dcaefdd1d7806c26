"""Service mode: `python -m gcluster run --sink redis://...`, the gateway as a long-lived process.

One process per slice of the bot's shards (`--scheme process:I/N`), each
with the bot's shared Redis: IDENTIFYs spaced by `RedisQueue`, sessions kept
in `RedisSessionStore` (a restarted process resumes), every event published
by a `StreamSink`, and the command inbox of each of its shards served. Worker
processes (`StreamWorker`) do the handling.

The log goes to stderr, one line per thing that happened, with the shard id
first where there is one; it never contains the token. SIGTERM (or SIGINT)
stops reading events, publishes what was read, closes the shards with
`down_resumable()` so their sessions are saved for the next process, and
exits 0 (1 if events read could not be published). A gateway that closes the
shards for good (a refused token, disallowed intents: `GatewayClosedError`)
makes it exit 3, the command line's status for that.

With `--lease`, the slice is held through a `ShardLease`: a second process
started with the same `--scheme` waits as a standby, and takes over (resuming
the sessions) once the holder stops or dies and its lease expires. A holder
stopped by SIGTERM releases the lease as soon as its sessions are saved, which
wakes the standby at once (a deploy's handoff takes a fraction of a second); a
holder that loses its lease stops its shards and exits 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any, Final

import gevent
import gevent.event

from gcluster._exit import ExitStatus, exit_status
from gcluster.cluster import Cluster
from gcluster.errors import ConfigError, GClusterError, RedisCallError
from gcluster.protocol import Stage
from gcluster.redis._calls import call
from gcluster.redis._client import hash_tag, make_client, safe_url
from gcluster.redis.inbox import shard_ranges
from gcluster.redis.lease import ShardLease
from gcluster.redis.queue import RedisQueue
from gcluster.redis.sessions import RedisSessionStore
from gcluster.redis.streams import StreamSink
from gcluster.scheme import ShardScheme

__all__ = ["LOG_FORMAT", "serve"]

log = logging.getLogger("gcluster.service")

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def serve(
    args: argparse.Namespace,
    *,
    token: str,
    intents: int,
    scheme: ShardScheme,
    options: dict[str, Any],
    simulate: Any = None,
) -> int:
    """Run the gateway service until SIGTERM or SIGINT; the exit code.

    Args:
        args: the `run` command's options (sink, namespace, stream, ...).
        token, intents, scheme, options: the cluster's.
        simulate: a started `GatewaySimulator` to feed events to, or None.
    """
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format=LOG_FORMAT)
    url = args.sink
    namespace = args.namespace
    where = safe_url(url)
    try:
        _check_redis(url)
    except (RedisCallError, ConfigError) as err:
        log.error("service: Redis at %s is unreachable: %s", where, err)
        if simulate is not None:
            simulate.stop()
        return 1
    queue = RedisQueue(url, namespace=namespace)
    store = RedisSessionStore(url, namespace=namespace)
    cluster = Cluster(
        token, intents, shard_scheme=scheme, queue=queue, session_store=store, **options
    )
    sink = StreamSink(
        cluster,
        url,
        stream=args.stream,
        per_event_streams=args.per_event_streams,
        maxlen=args.maxlen or None,
        namespace=namespace,
    )
    stop = gevent.event.Event()
    received: list[str] = []

    def on_signal(name: str) -> None:
        received.append(name)
        stop.set()

    gevent.signal_handler(signal.SIGTERM, on_signal, "SIGTERM")
    gevent.signal_handler(signal.SIGINT, on_signal, "SIGINT")
    lease = None
    if args.lease:
        lease = ShardLease(
            url,
            name=args.scheme or "all",
            namespace=namespace,
            ttl=args.lease_ttl,
            on_lost=lambda: on_signal("lease lost"),
        )
    try:
        if lease is not None:
            log.info("service: waiting for the lease on shards %s (%s)", args.scheme, lease.key)
            acquiring = gevent.spawn(lease.acquire)
            gevent.wait([acquiring, stop], count=1)
            if not lease.held:
                acquiring.kill()
                log.info("service: %s while waiting for the lease: stopped", received[0])
                return 0
        starting = gevent.spawn(_start, cluster)
        gevent.wait([starting, stop], count=1)
        if not starting.ready():
            log.info("service: %s during start: stopping", received[0])
            starting.kill()
            cluster.down_resumable()
            return 0
        if starting.value is not None:
            raise starting.value
        ids = [shard.id for shard in cluster.shards()]
        log.info(
            "service: shards %s of %d started; events to %s %r at %s; commands from %s",
            shard_ranges(ids),
            cluster.total,
            "per-event streams" if args.per_event_streams else "stream",
            sink.stream,
            where,
            f"{hash_tag(namespace)}:commands:<shard>",
        )
        gevent.spawn(_announce_ready, cluster, ids, simulate, args.simulate_events)
        publishing = gevent.spawn(_publish, sink)
        gevent.wait([publishing, stop], count=1)
        if publishing.ready():
            # The event stream ended by itself: every shard was fatally closed.
            error = publishing.value
            log.error("service: stopped publishing: %s", error or "the event stream ended")
            cluster.down()
            return exit_status(error) if error is not None else ExitStatus.ERROR
        log.info("service: %s received: stopping", received[0])
        flushed = sink.stop(timeout=args.drain_timeout)
        stats = sink.stats()
        log.info(
            "service: published %d events (%d batches, %d failed)",
            stats.published,
            stats.batches,
            stats.failures,
        )
        sessions = cluster.down_resumable()
        log.info(
            "service: sessions of shards %s saved for resuming (%s:session:<shard>)",
            shard_ranges(sorted(sessions)) or "none",
            hash_tag(namespace),
        )
        if lease is not None:
            # The shards are closed and their sessions saved: a standby may
            # resume them now. Released before the sink's command inbox has
            # wound down (up to its read's block time), which a deploy's
            # handoff would otherwise wait out.
            lease.release()
        publishing.join(timeout=5)
        log.info("service: stopped")
        return 0 if flushed and received[0] != "lease lost" else 1
    except GClusterError as err:
        log.error("service: %s", err)
        cluster.down_resumable()
        return exit_status(err)
    finally:
        if lease is not None:
            lease.close()
        sink.close()
        queue.close()
        store.close()
        if simulate is not None:
            simulate.stop()


def _start(cluster: Cluster) -> GClusterError | None:
    """`cluster.up()` in a greenlet of its own: its error is returned, not printed by gevent."""
    try:
        cluster.up()
    except GClusterError as err:
        return err
    return None


def _publish(sink: StreamSink) -> GClusterError | None:
    """`sink.run()`, returning the error that ended it: a greenlet that raised would print it."""
    try:
        sink.run()
    except GClusterError as err:
        return err
    return None


def _check_redis(url: str) -> None:
    """Fail at once, with one clear line, when the service's Redis does not answer."""
    target = make_client(url, None, connect_timeout=2.0, timeout=5.0)
    try:
        call(target.get().ping)
    finally:
        target.close()


def _announce_ready(cluster: Cluster, ids: list[int], simulate: Any, events: int) -> None:
    while not cluster.wait_until_ready(timeout=30):
        info = cluster.info()
        waiting = [sid for sid, shard in info.items() if shard.stage is not Stage.CONNECTED]
        log.warning("service: shards %s are not ready yet", shard_ranges(waiting))
    log.info("service: shards %s ready", shard_ranges(ids))
    if simulate is not None:
        for shard_id in ids:
            simulate.send_events(shard_id, events)
