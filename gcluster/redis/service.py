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
exits 0 (1 if events read could not be published or sessions could not be
saved: the log says which, and what the next process will do about it). The
start-up progress and a stats line every `--stats-interval` seconds come from
`gcluster.logstats`. A gateway that closes the
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
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import gevent
import gevent.event

from gcluster._exit import ExitStatus, exit_status
from gcluster._token import Token
from gcluster.cluster import Cluster
from gcluster.errors import ConfigError, GClusterError, LeaseConflict, RedisCallError
from gcluster.http import DEFAULT_API_BASE, get_gateway_bot
from gcluster.logstats import TEXT_FORMAT, Reporter
from gcluster.protocol import ResumeSession, Stage
from gcluster.redis._calls import call
from gcluster.redis._client import hash_tag, make_client, safe_url
from gcluster.redis.inbox import default_consumer, shard_ranges
from gcluster.redis.lease import ShardLease
from gcluster.redis.queue import RedisQueue
from gcluster.redis.sessions import RedisSessionStore
from gcluster.redis.shardstate import StateBoard, state_record
from gcluster.redis.streams import StreamSink
from gcluster.scheme import ShardScheme

__all__ = ["LOG_FORMAT", "serve"]

log = logging.getLogger("gcluster.service")

LOG_FORMAT: Final = TEXT_FORMAT
# Seconds between two writes of the shards' state (`gcluster.redis.shardstate`).
STATE_INTERVAL: Final = 2.0
# Seconds a state record outlives the process's last write.
STATE_LIFE: Final = STATE_INTERVAL * 5


def serve(
    args: argparse.Namespace,
    *,
    token: str,
    intents: int,
    scheme: ShardScheme,
    options: dict[str, Any],
    simulate: Any = None,
    status_listener: socket.socket | None = None,
) -> int:
    """Run the gateway service until SIGTERM or SIGINT; the exit code.

    Args:
        args: the `run` command's options (sink, namespace, stream, ...).
        token, intents, scheme, options: the cluster's.
        simulate: a started `GatewaySimulator` to feed events to, or None.
        status_listener: a socket from `gcluster.web.listen` (``--metrics-port``)
            to serve /metrics, /healthz, /readyz and the status page on, or None.
    """
    # The log is configured by the command line (--log-level, --log-format).
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
    try:
        ids, scheme = _resolve(scheme, token, options)
    except GClusterError as err:
        log.error("service: %s", err)
        if simulate is not None:
            simulate.stop()
        return exit_status(err)
    owner = default_consumer()
    if not args.lease:
        try:
            _check_unleased(url, namespace, ids, scheme.total, owner)
        except (LeaseConflict, RedisCallError) as err:
            log.error("service: refusing to start: %s", err)
            if simulate is not None:
                simulate.stop()
            return ExitStatus.ERROR
    queue = RedisQueue(url, namespace=namespace)
    store = _SaveRecord(RedisSessionStore(url, namespace=namespace, ttl=args.session_ttl or None))
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
    reporter = Reporter(cluster, args.stats_interval, extra=lambda: _sink_line(sink))
    lease = None
    if args.lease:
        lease = ShardLease(
            url,
            name=args.scheme or "all",
            namespace=namespace,
            owner=owner,
            ttl=args.lease_ttl,
            on_lost=lambda: on_signal("lease lost"),
            shards=ids,
            total=scheme.total,
        )
    board = StateBoard(url, namespace=namespace, life=STATE_LIFE)
    keeper: gevent.Greenlet | None = None
    web = _serve_status(status_listener, cluster, sink, lease, url, args.stream)
    try:
        if lease is not None:
            log.info("service: waiting for the lease on shards %s (%s)", args.scheme, lease.key)
            acquiring = gevent.spawn(_caught, lease.acquire)
            gevent.wait([acquiring, stop], count=1)
            if isinstance(acquiring.value, LeaseConflict):
                log.error("service: refusing to start: %s", acquiring.value)
                return ExitStatus.ERROR
            if not lease.held:
                acquiring.kill()
                log.info("service: %s while waiting for the lease: stopped", received[0])
                return 0
        reporter.start()
        keeper = gevent.spawn(_keep_state, cluster, board, store, owner)
        starting = gevent.spawn(_caught, cluster.up)
        gevent.wait([starting, stop], count=1)
        if not starting.ready():
            log.info("service: %s during start: stopping", received[0])
            starting.kill()
            saved = _report_sessions(store, cluster.down_resumable(), hash_tag(namespace))
            return 0 if saved else 1
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
        publishing = gevent.spawn(_caught, sink.run)
        gevent.wait([publishing, stop], count=1)
        if publishing.ready():
            # The event stream ended by itself: every shard was fatally closed.
            error = publishing.value
            log.error("service: stopped publishing: %s", error or "the event stream ended")
            cluster.down()
            return exit_status(error) if error is not None else ExitStatus.ERROR
        log.info("service: %s received: stopping", received[0])
        reporter.stop()
        flushed = sink.stop(timeout=args.drain_timeout)
        stats = sink.stats()
        log.info(
            "service: published %d of the %d events read (%d batches, %d failed attempts)",
            stats.published,
            stats.read,
            stats.batches,
            stats.failures,
        )
        sessions = cluster.down_resumable()
        saved = _report_sessions(store, sessions, hash_tag(namespace))
        if lease is not None:
            # The shards are closed and their sessions saved: a standby may
            # resume them now. Released before the sink's command inbox has
            # wound down (up to its read's block time), which a deploy's
            # handoff would otherwise wait out.
            lease.release()
        unpublished = stats.read - stats.published
        if unpublished:
            log.error(
                "service: %d events read were not published: %s",
                unpublished,
                "the saved sessions resume before them, so the next process publishes them"
                if saved
                else "sessions that were not saved cannot bring them back; "
                "a session saved earlier resumes before them, else they are lost",
            )
        publishing.join(timeout=5)
        log.info("service: stopped")
        return 0 if flushed and saved and received[0] != "lease lost" else 1
    except GClusterError as err:
        log.error("service: %s", err)
        cluster.down_resumable()
        return exit_status(err)
    finally:
        reporter.stop()
        if keeper is not None:
            keeper.kill()
        if web is not None:
            web.stop()
            web.monitor.source.close()
        if lease is not None:
            lease.close()
        sink.close()
        board.close()
        queue.close()
        store.close()
        if simulate is not None:
            simulate.stop()


class _SaveRecord:
    """The session store, remembering how each shard's last save went.

    What the shutdown line says comes from here: a shard's session is
    "saved" only when Redis took it, not when the cluster tried.
    """

    def __init__(self, store: RedisSessionStore) -> None:
        self.store = store
        self.saved: set[int] = set()  # the last save of these shards succeeded
        self.failed: dict[int, str] = {}  # and of these failed: why
        self.saved_at: dict[int, float] = {}  # when the last save of each succeeded

    def load(self, shard_ids: Iterable[int]) -> dict[int, ResumeSession]:
        sessions = self.store.load(shard_ids)
        # Redis holds these already: a session resumed and left unchanged is saved.
        self.saved.update(sessions)
        return sessions

    def save(self, shard_id: int, session: ResumeSession | None) -> None:
        try:
            self.store.save(shard_id, session)
        except GClusterError as err:
            self.saved.discard(shard_id)
            self.failed[shard_id] = str(err)
            raise
        self.failed.pop(shard_id, None)
        self.saved_at[shard_id] = time.time()
        if session is None:
            self.saved.discard(shard_id)
        else:
            self.saved.add(shard_id)

    def close(self) -> None:
        self.store.close()

    def __repr__(self) -> str:
        return repr(self.store)


def _report_sessions(store: _SaveRecord, sessions: dict[int, ResumeSession], where: str) -> bool:
    """Log which shards' sessions Redis holds for the next process; False when some are not."""
    saved = sorted(shard_id for shard_id in sessions if shard_id in store.saved)
    unsaved = sorted(shard_id for shard_id in sessions if shard_id not in store.saved)
    if saved:
        log.info(
            "service: sessions of shards %s saved for resuming (%s:session:<shard>)",
            shard_ranges(saved),
            where,
        )
    if unsaved:
        why = next((store.failed[s] for s in unsaved if s in store.failed), "never saved")
        log.error(
            "service: sessions of shards %s not saved (%s); the next process resumes "
            "the session saved for them before, if any (replaying the events since), "
            "or identifies",
            shard_ranges(unsaved),
            why,
        )
    if not sessions:
        log.info("service: no shard had a session to save")
    return not unsaved


def _sink_line(sink: StreamSink) -> str:
    """The sink's part of a stats line."""
    stats = sink.stats()
    text = f"published {stats.published}, buffered {stats.buffered}"
    if stats.paused:
        text += ", paused (buffer full)"
    if stats.last_error is not None and stats.buffered:
        text += f", Redis failing: {stats.last_error}"
    return text


def _serve_status(
    listener: socket.socket | None,
    cluster: Cluster,
    sink: StreamSink,
    lease: ShardLease | None,
    url: str,
    stream: str,
) -> Any:
    """Serve the status page on `listener` (``--metrics-port``), or do nothing without one."""
    if listener is None:
        return None
    from gcluster import web
    from gcluster.redis.status import RedisStatus

    def streams() -> list[str]:
        # Per-event streams: the keys the sink has published to so far.
        return list(sink._keys.values()) if sink.per_event_streams else [stream]

    server = web.serve(cluster, listener, source=RedisStatus(url, streams=streams, lease=lease))
    log.info(
        "service: status page at %s/status, metrics at /metrics, health at /healthz and /readyz",
        server.url,
    )
    return server


def _caught(func: Callable[[], object]) -> GClusterError | None:
    """`func()` in a greenlet of its own: its error is returned, not printed by gevent."""
    try:
        func()
    except GClusterError as err:
        return err
    return None


def _resolve(
    scheme: ShardScheme, token: str, options: dict[str, Any]
) -> tuple[list[int], ShardScheme]:
    """The slice's shard ids, and its scheme with the total known.

    The lease and the namespace's checks need the shard count before any
    shard starts; with ``--scheme auto`` that is Discord's recommendation,
    asked here (the cluster asks again for the gateway's URL and limits).

    Raises:
        GClusterError: GET /gateway/bot failed (AuthenticationFailed: the token).
    """
    if scheme.is_auto:
        gateway = get_gateway_bot(
            options.get("api_base", DEFAULT_API_BASE), Token(token), proxy=options.get("proxy")
        )
        scheme = ShardScheme.range(range(gateway.shards), gateway.shards)
    ids, _ = scheme.resolve(0)
    return list(ids), scheme


def _check_unleased(
    url: str, namespace: str, ids: list[int], total: int | None, owner: str
) -> None:
    """With ``--no-lease``: refuse shards another process runs, or a count live holders dispute.

    Without a lease nothing keeps a second process off these shards once both
    run; this keeps one from starting on shards a lease holder runs, or that
    another process wrote a state record for in the last `STATE_LIFE` seconds.

    Raises:
        LeaseConflict: why it must not start.
        RedisCallError: Redis could not answer.
    """
    probe = ShardLease(url, name="check", namespace=namespace, shards=ids, total=total)
    board = StateBoard(url, namespace=namespace, life=STATE_LIFE)
    try:
        probe.check()
        running = {
            shard_id: record["holder"]
            for shard_id, record in board.read(ids).items()
            if record["holder"] not in (None, owner)
        }
    finally:
        probe.close()
        board.close()
    if running:
        holder = next(iter(running.values()))
        raise LeaseConflict(
            f"shards {shard_ranges(sorted(running))} are run by {holder} (its state records "
            f"are fresh): two processes on one shard take each other's sessions. Stop it "
            f"first; its records expire {STATE_LIFE:g} s after it stops"
        )


def _keep_state(cluster: Cluster, board: StateBoard, store: _SaveRecord, owner: str) -> None:
    """Every `STATE_INTERVAL` seconds: the shards' records for the status command, and
    their sessions' expiry pushed back (a session outlives its process by --session-ttl)."""
    failing = False
    while True:
        now = time.time()
        records = {
            shard_id: state_record(info, owner, store.saved_at.get(shard_id), now)
            for shard_id, info in cluster.info().items()
        }
        try:
            board.write(records)
            store.store.refresh(records)
        except GClusterError as err:
            if not failing:
                log.warning("service: could not record the shards' state in Redis: %s", err)
            failing = True
        else:
            if failing:
                log.info("service: recording the shards' state in Redis again")
            failing = False
        gevent.sleep(STATE_INTERVAL)


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
