"""A Flask app that shows the shards and sends gateway commands, in either concurrency model.

    DISCORD_TOKEN=... python examples/flask_app.py --mode gevent --port 5000
    DISCORD_TOKEN=... python examples/flask_app.py --mode thread --port 5000
    python examples/flask_app.py --mode thread --simulate

Routes:

    GET  /shards                  every shard's id, stage, latency, sequence, session
    POST /presence                {"status": "idle", "activity": "with Flask"} to every shard
    POST /guilds/<id>/members     {"query": "", "limit": 0} (or "user_ids") to the guild's shard

``--mode gevent`` serves the app with gevent's WSGIServer and runs the
`Cluster` in the same hub: each request is a greenlet, and the views call the
cluster directly. It needs no monkey-patching, because nothing here blocks
outside gevent: the server's sockets are gevent's, and gcluster uses gevent's
sockets itself. A view that called blocking libraries (requests, a database
driver) would stall the hub and every shard's heartbeat with it; then make
``from gevent import monkey; monkey.patch_all()`` the first lines of the
program, before any other import.

``--mode thread`` serves it with werkzeug's threaded server (a thread per
request) and runs the shards in a `ThreadedCluster`, whose methods may be
called from any thread; gevent is neither imported here nor patched in.

With ``--simulate`` the script starts the embedded gateway simulator, serves
on a free port, calls each route once over HTTP, prints the answers and exits.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import threading
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import _needs
import _simulate

from gcluster import (
    Activity,
    ClusterCommandError,
    CommandSendingError,
    GatewayCluster,
    Intents,
    InvalidCommand,
    RequestGuildMembers,
    ShardNonexistent,
    UpdatePresence,
)

if TYPE_CHECKING:
    from flask import Flask

INTENTS = Intents.GUILDS | Intents.GUILD_MEMBERS


def create_app(cluster: GatewayCluster) -> Flask:
    """The app, for a `Cluster` (gevent mode) or a `ThreadedCluster` (thread mode).

    Args:
        cluster: either; the views use only what both offer (`GatewayCluster`).
    """
    from flask import Flask, jsonify, request

    app = Flask(__name__)

    @app.get("/shards")
    def shards() -> Any:
        return jsonify(
            [
                {
                    "id": info.id,
                    "stage": info.stage.value,
                    "latency": info.latency.average,
                    "sequence": info.sequence,
                    "session": info.session_id,
                }
                for info in cluster.info().values()
            ]
        )

    @app.post("/presence")
    def presence() -> Any:
        body = request.get_json(silent=True) or {}
        try:
            activity = body.get("activity")
            command = UpdatePresence(
                status=body.get("status", "online"),
                activities=[Activity(name=activity)] if activity else [],
            )
        except InvalidCommand as err:
            return jsonify(error=str(err)), 400
        sent, failed = [], {}
        for shard_id in cluster.info():
            try:
                cluster.command(shard_id, command, timeout=5)
                sent.append(shard_id)
            except CommandSendingError as err:
                failed[shard_id] = str(err)
        return jsonify(sent=sent, failed=failed), 200 if not failed else 503

    @app.post("/guilds/<int:guild_id>/members")
    def members(guild_id: int) -> Any:
        body = request.get_json(silent=True) or {}
        try:
            command = RequestGuildMembers(
                guild_id=guild_id,
                query=body.get("query", "" if "user_ids" not in body else None),
                limit=body.get("limit", 0),
                user_ids=body.get("user_ids"),
                presences=body.get("presences", False),
                nonce=body.get("nonce"),
            )
        except InvalidCommand as err:
            return jsonify(error=str(err)), 400
        shard_id = cluster.shard_for(guild_id)
        try:
            cluster.command(shard_id, command, timeout=5)
        except ShardNonexistent:
            return jsonify(error=f"shard {shard_id} does not run in this process"), 404
        except ClusterCommandError as err:
            return jsonify(error=str(err)), 503
        return jsonify(shard=shard_id), 202

    return app


def main(argv: list[str] | None = None) -> int:
    top = _simulate.parser(__doc__)
    top.add_argument("--mode", choices=("gevent", "thread"), default="gevent")
    top.add_argument("--host", default="127.0.0.1")
    top.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    args = top.parse_args(argv)
    _needs.package("flask", "pip install flask")
    if args.simulate:
        args.port = 0
    run = run_gevent if args.mode == "gevent" else run_threaded
    with _simulate.gateway(args, threads=args.mode == "thread") as gateway:
        check = None
        if args.simulate:
            # A guild of the last shard, to see the request routed there.
            guild_id = gateway.guild_ids(args.shards - 1)[0]
            check = functools.partial(self_check, guild_id=guild_id)
        return run(args, gateway, check)


def run_gevent(args: argparse.Namespace, gateway: Any, check: Checker | None) -> int:
    import gevent
    import gevent.event
    from gevent.pywsgi import WSGIServer

    from gcluster import Cluster

    cluster = Cluster(gateway.token, INTENTS, **gateway.options)
    cluster.up()
    cluster.wait_until_ready(timeout=60)
    server = WSGIServer((args.host, args.port), create_app(cluster))
    server.start()
    url = f"http://{args.host}:{server.server_port}"
    print(f"listening on {url} (gevent)", flush=True)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    drain = gevent.spawn(_drain, cluster)
    try:
        if check is not None:
            # urllib blocks its thread: run it in gevent's thread pool, not in the hub.
            gevent.get_hub().threadpool.apply(check, (url,))
        else:
            stop.wait()
    finally:
        server.stop(timeout=5)
        cluster.down()
        drain.join(5)
    return 0


def run_threaded(args: argparse.Namespace, gateway: Any, check: Checker | None) -> int:
    from werkzeug.serving import make_server

    from gcluster.threaded import ThreadedCluster

    cluster = ThreadedCluster(gateway.token, INTENTS, **gateway.options)
    cluster.up()
    cluster.wait_until_ready(timeout=60)
    server = make_server(args.host, args.port, create_app(cluster), threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    serving.start()
    url = f"http://{args.host}:{server.server_port}"
    print(f"listening on {url} (threads)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    drain = threading.Thread(target=_drain, args=(cluster,), name="events", daemon=True)
    drain.start()
    try:
        if check is not None:
            check(url)
        else:
            while not stop.wait(1.0):
                pass
    finally:
        server.shutdown()
        cluster.down()
        drain.join(5)
    return 0


def _drain(cluster: GatewayCluster) -> None:
    # This app only sends commands; a real bot would handle its events here.
    for _ in cluster.events():
        pass


Checker = Callable[[str], None]


def self_check(url: str, guild_id: int) -> None:
    """--simulate: call every route once over HTTP and print what came back."""
    shards = _http("GET", f"{url}/shards")
    stages = ", ".join(f"{shard['id']}:{shard['stage']}" for shard in shards)
    print(f"GET /shards -> {len(shards)} shards: {stages}")
    sent = _http("POST", f"{url}/presence", {"status": "idle", "activity": "with Flask"})
    print(f"POST /presence -> sent to shards {sent['sent']}")
    answer = _http("POST", f"{url}/guilds/{guild_id}/members", {"query": "", "limit": 0})
    print(f"POST /guilds/{guild_id}/members -> shard {answer['shard']}")


def _http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.load(response)


if __name__ == "__main__":
    sys.exit(main())
