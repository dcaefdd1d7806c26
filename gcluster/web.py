"""An HTTP endpoint for operators: /metrics, /healthz, /readyz and a live status page.

One small server per gateway process, in the cluster's hub (gevent's
`pywsgi`, no threads), so it reads the shards where that is safe::

    from gcluster import web
    server = web.serve(cluster, port=9100)   # http://127.0.0.1:9100/status
    ...
    server.stop()

Routes (GET and HEAD only; anything else is 405, any other path 404)::

    /metrics      Prometheus text (`gcluster.metrics`; needs gcluster[metrics], else 501)
    /healthz      200 while the cluster is not shut down and not every shard is closed for good
    /readyz       200 when every shard of this process is connected; else 503 naming the others
    /status       the status page: one self-contained HTML page, no CDN, no build step
    /status.json  what the page polls: shards, stages, latency, events, history, service data

Every connection is bounded: a request line of 8 KiB (gevent's limit), 16
KiB of headers, a deadline for each request from its first byte to the
response's last, and at most `max_connections` at once. Nothing of a request
is echoed into a response.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import socket
from collections.abc import Callable, Iterable
from io import BytesIO
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer, headers_factory

from gcluster.errors import ConfigError
from gcluster.status import Monitor, StatusSource

if TYPE_CHECKING:
    from gcluster.cluster import Cluster

__all__ = ["StatusServer", "listen", "make_app", "serve"]

log = logging.getLogger(__name__)

# The headers of one request, all together.
MAX_HEADER_BYTES: Final = 16 * 1024

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
App = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening socket for `serve`, bound now: a taken port fails here, before anything starts.

    Raises:
        ConfigError: a port outside 0..65535, or an address that cannot be bound
            (in use, or not this machine's), with what to do.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer from 0 to 65535 (0: a free one), not {port!r}")
    try:
        sock = gsocket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as err:
        raise ConfigError(f"cannot serve on {host}: {err}") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except (OSError, OverflowError) as err:
        sock.close()
        if isinstance(err, OSError) and err.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{host}:{port} is already in use: pick another port, or 0 for a free one"
            ) from err
        raise ConfigError(f"cannot serve on {host}:{port}: {err}") from err
    listener: socket.socket = sock
    return listener


class StatusServer:
    """The running server: `port`, `url`, `monitor`, and `stop()`.

    Made by `serve`; not constructed directly.
    """

    def __init__(self, server: WSGIServer, monitor: Monitor, host: str) -> None:
        self._server = server
        self.monitor = monitor
        self.host = host

    @property
    def port(self) -> int:
        """The port it listens on (the one picked when 0 was asked)."""
        port: int = self._server.server_port
        return port

    @property
    def url(self) -> str:
        """e.g. "http://127.0.0.1:9100" (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving and sampling (idempotent); requests in flight get `timeout` seconds."""
        self.monitor.stop()
        self._server.stop(timeout=timeout)


def serve(
    cluster: Cluster,
    port: int | socket.socket = 0,
    host: str = "127.0.0.1",
    *,
    source: StatusSource | None = None,
    interval: float = 2.0,
    history: int = 180,
    refresh: float = 2.0,
    request_timeout: float = 10.0,
    max_connections: int = 64,
    namespace: str = "gcluster",
) -> StatusServer:
    """Serve the cluster's metrics, health and status page from a greenlet in its hub.

    Args:
        cluster: the `Cluster` to show (before or after `up()`).
        port: the port (0: any free one, see `StatusServer.port`), or a
            socket from `listen`.
        host: the address to listen on; the default serves this machine only.
        source: adds deployment data (the Redis service passes its lease and
            consumer groups).
        interval: seconds between history samples.
        history: samples kept for the page's plots.
        refresh: seconds between the page's updates.
        request_timeout: seconds one request may take, first byte to last.
        max_connections: connections served at once; more wait to be accepted.
        namespace: the Prometheus metric prefix.

    Returns:
        The started `StatusServer`; `stop()` it.

    Raises:
        ConfigError: a bad number, or a port that cannot be bound.
    """
    from gcluster.cluster import Cluster

    if not isinstance(cluster, Cluster):
        raise ConfigError(
            f"serve() shows a gcluster.Cluster, not {type(cluster).__name__} "
            "(a ThreadedCluster's cluster runs in another thread's hub)"
        )
    if not 0.5 <= refresh <= 60:
        raise ConfigError(f"refresh must be 0.5 to 60 seconds, not {refresh}")
    if not request_timeout > 0:
        raise ConfigError(f"request_timeout must be positive, not {request_timeout}")
    if max_connections < 1:
        raise ConfigError(f"max_connections must be at least 1, not {max_connections}")
    monitor = Monitor(cluster, interval=interval, history=history, source=source)
    listener = port if isinstance(port, socket.socket | gsocket.socket) else listen(host, port)
    app = make_app(monitor, metrics=_metrics_app(cluster, namespace), refresh=refresh)
    server = WSGIServer(
        listener,
        app,
        spawn=Pool(max_connections),
        handler_class=_BoundedHandler,
        log=None,
        error_log=None,
    )
    server.request_timeout = request_timeout
    server.start()
    monitor.start()
    bound_host = listener.getsockname()[0]
    return StatusServer(server, monitor, bound_host)


def _metrics_app(cluster: Cluster, namespace: str) -> App | None:
    try:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        from gcluster.metrics import ClusterCollector
    except ImportError:
        return None
    registry = CollectorRegistry()
    registry.register(ClusterCollector(cluster, namespace=namespace))
    app: App = make_wsgi_app(registry)
    return app


# --- the WSGI application ---------------------------------------------------------


def make_app(monitor: Monitor, *, metrics: App | None = None, refresh: float = 2.0) -> App:
    """The WSGI application of `serve`, for mounting elsewhere (it must run in the cluster's hub).

    Args:
        monitor: the cluster's `Monitor` (started, for the history).
        metrics: prometheus_client's WSGI app for /metrics, or None (501).
        refresh: seconds between the page's updates.
    """
    page = status_page(refresh).encode()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "")
        path = environ.get("PATH_INFO", "")
        if path not in _ROUTES:
            return _reply(start_response, "404 Not Found", b"not found\n", _TEXT)
        if method not in ("GET", "HEAD"):
            return _reply(
                start_response, "405 Method Not Allowed", b"GET or HEAD only\n", _TEXT,
                [("Allow", "GET, HEAD")],
            )  # fmt: skip
        if path == "/metrics" and metrics is not None:
            # Only what prometheus_client reads: no query (it filters by name[]).
            inner = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": ""}
            inner.update({k: v for k, v in environ.items() if k.startswith("wsgi.")})
            return metrics(inner, start_response)
        try:
            return _route(path, monitor, page, start_response)
        except Exception:  # noqa: BLE001 - one bad read must not take the server down
            log.exception("status: %s failed", path)
            return _reply(start_response, "500 Internal Server Error", b"error\n", _TEXT)

    return app


_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"
_ROUTES: Final = frozenset({"/", "/metrics", "/healthz", "/readyz", "/status", "/status.json"})


def _route(path: str, monitor: Monitor, page: bytes, start_response: StartResponse) -> list[bytes]:
    if path in ("/", "/status"):
        return _reply(start_response, "200 OK", page, "text/html; charset=utf-8", _PAGE_HEADERS)
    if path == "/metrics":
        body = b"/metrics needs prometheus_client: pip install 'gcluster[metrics]'\n"
        return _reply(start_response, "501 Not Implemented", body, _TEXT)
    if path == "/healthz":
        alive = monitor.health()
        status = "200 OK" if alive.alive else "503 Service Unavailable"
        return _json(start_response, status, {"alive": alive.alive, "reason": alive.reason})
    if path == "/readyz":
        ready = monitor.readiness()
        status = "200 OK" if ready.ready else "503 Service Unavailable"
        return _json(start_response, status, ready.to_dict())
    return _json(start_response, "200 OK", monitor.snapshot())


def _json(start_response: StartResponse, status: str, data: Any) -> list[bytes]:
    body = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str).encode()
    return _reply(start_response, status, body, _JSON)


def _reply(
    start_response: StartResponse,
    status: str,
    body: bytes,
    content_type: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        *(extra or []),
    ]
    start_response(status, headers)
    return [body]


class _BoundedHandler(WSGIHandler):  # type: ignore[misc]
    """pywsgi's handler with the bounds a server facing anyone needs.

    Each request, from waiting for its first line to sending the response,
    gets the server's `request_timeout` (a slow loris is cut off); the
    headers are read up to MAX_HEADER_BYTES, and a request with more gets 400.
    """

    def handle_one_request(self) -> Any:
        deadline = gevent.Timeout(self.server.request_timeout)
        deadline.start()
        try:
            return super().handle_one_request()
        except gevent.Timeout as err:
            if err is not deadline:
                raise
            return None  # closes the connection
        finally:
            deadline.close()

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - pywsgi's name
        read = bytearray()
        while True:
            line = fp.readline(MAX_HEADER_BYTES + 1 - len(read))
            read += line
            if len(read) > MAX_HEADER_BYTES:
                message = headers_factory(BytesIO(b"\r\n"))
                message.status = "headers too large"
                return message
            if line in (b"\r\n", b"\n", b""):
                return headers_factory(BytesIO(bytes(read)))


# --- the page -----------------------------------------------------------------------

_STYLE: Final = """
body{font:13px/1.4 system-ui,sans-serif;margin:12px;background:#fafafa;color:#222}
h1{font-size:16px;margin:0 0 6px}
#summary{margin-bottom:8px}
#stale{display:none;background:#b3261e;color:#fff;padding:2px 6px;margin-bottom:6px}
#legend span{display:inline-block;margin-right:10px}
#legend i,#grid div{display:inline-block;width:9px;height:9px}
#legend i{margin-right:3px;vertical-align:-1px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,9px);gap:2px;margin:8px 0}
.connected{background:#2e9d4f}.identifying{background:#3a6fd8}.resuming{background:#8e5bd0}
.connecting{background:#e0a526}.disconnected{background:#e8622a}
.fatally_closed{background:#7a0c0c}.unknown{background:#999}
#plots{display:flex;gap:24px;flex-wrap:wrap}
#plots svg{background:#fff;border:1px solid #ddd}
#plots polyline{fill:none;stroke:#3a6fd8;stroke-width:1.5}
table{border-collapse:collapse;margin-top:4px}
td,th{border:1px solid #ddd;padding:1px 6px;text-align:left}
section{margin-top:10px}
"""

_SCRIPT: Final = r"""
const REFRESH = Number(document.body.dataset.refresh) * 1000;
const STAGES = ["connected","identifying","resuming","connecting","disconnected","fatally_closed"];
const $ = (id) => document.getElementById(id);
let lastOk = 0;
function text(el, value) { el.textContent = value; }
function legend() {
  for (const s of STAGES) {
    const span = document.createElement("span");
    const i = document.createElement("i");
    i.className = s;
    span.append(i, s.replace("_", " "));
    $("legend").append(span);
  }
}
function cells(shards) {
  const grid = $("grid");
  while (grid.children.length > shards.length) grid.lastChild.remove();
  while (grid.children.length < shards.length) grid.append(document.createElement("div"));
  shards.forEach((s, n) => {
    const cell = grid.children[n];
    const stage = STAGES.includes(s.stage) ? s.stage : "unknown";
    if (cell.className !== stage) cell.className = stage;
    cell.dataset.shard = String(s.id);
    cell.dataset.stage = stage;
    const latency = s.latency_ms === null ? "no heartbeat yet" : s.latency_ms + " ms";
    cell.title = "shard " + s.id + ": " + stage + ", " + latency + ", " + s.events + " events" +
      (s.error ? ", " + s.error : "");
  });
}
function spark(svg, values, label, unit) {
  const w = 300, h = 40, pts = [];
  const nums = values.map((v) => (typeof v === "number" ? v : null));
  const max = Math.max(1, ...nums.filter((v) => v !== null));
  nums.forEach((v, n) => {
    if (v === null) return;
    const x = nums.length > 1 ? (n / (nums.length - 1)) * w : w;
    pts.push(x.toFixed(1) + "," + (h - 2 - (v / max) * (h - 4)).toFixed(1));
  });
  svg.querySelector("polyline").setAttribute("points", pts.join(" "));
  const last = nums.length ? nums[nums.length - 1] : null;
  text(label, (last === null ? "-" : last) + " " + unit + " (max " + max.toFixed(0) + ")");
}
function row(values, span) {
  const tr = document.createElement("tr");
  for (const v of values) {
    const td = document.createElement("td");
    if (span) td.colSpan = span;
    text(td, v === null || v === undefined ? "unknown" : String(v));
    tr.append(td);
  }
  return tr;
}
function service(data) {
  const lease = $("lease"), groups = $("groups");
  groups.replaceChildren();
  if (!data) {
    text(lease, "none (no --lease, or a cluster outside the service)");
    groups.append(row(["none (not the Redis service)"], 5));
    return;
  }
  if (data.unknown) {
    text(lease, "unknown: " + data.unknown);
    groups.append(row(["unknown: " + data.unknown], 5));
    return;
  }
  const l = data.lease;
  if (!l) text(lease, "not used");
  else if (l.error) text(lease, l.key + ": unknown (" + l.error + ")");
  else text(lease, l.key + ": " + (l.holder === null ? "nobody" : l.holder) +
    (l.held ? " (this process)" : ""));
  const g = data.groups;
  if (!g) return;
  if (g.error) { groups.append(row(["unknown: " + g.error], 5)); return; }
  for (const r of g.rows) groups.append(row([r.stream, r.group, r.consumers, r.pending, r.lag]));
  if (!g.rows.length) groups.append(row(["no consumer group yet"], 5));
}
function render(d) {
  const counts = {};
  for (const s of d.shards) counts[s.stage] = (counts[s.stage] || 0) + 1;
  const parts = Object.keys(counts).sort().map((k) => counts[k] + " " + k.replace("_", " "));
  const ready = d.ready.ready ? "ready" : "not ready: " + d.ready.reason;
  text($("summary"), d.shards.length + " shards" + (d.total ? " of " + d.total : "") + ": " +
    (parts.join(", ") || "none yet") + " · " + ready +
    (d.health.alive ? "" : " · DOWN: " + d.health.reason) + " · backlog " + d.backlog);
  cells(d.shards);
  spark($("rate"), d.history.events_per_s, $("rate-now"), "events/s");
  spark($("latency"), d.history.latency_ms, $("latency-now"), "ms");
  service(d.service);
}
async function poll() {
  try {
    const r = await fetch("/status.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    lastOk = Date.now();
    $("stale").style.display = "none";
    document.body.dataset.updated = String(lastOk);
  } catch (e) {
    $("stale").style.display = "block";
    const age = lastOk ? " for " + Math.round((Date.now() - lastOk) / 1000) + " s" : "";
    text($("stale"), "not updated" + age + ": " + e.message);
  }
  setTimeout(poll, REFRESH);
}
legend();
poll();
"""


def _digest(source: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode()


# Only this page's own inline style and script run, and it talks only to this server.
_PAGE_HEADERS: Final = [
    (
        "Content-Security-Policy",
        f"default-src 'none'; style-src '{_digest(_STYLE)}'; script-src '{_digest(_SCRIPT)}'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
]


def status_page(refresh: float = 2.0) -> str:
    """The status page's HTML: one string, its CSS and JavaScript inline."""
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width'>"
        f"<title>gcluster status</title><style>{_STYLE}</style></head>"
        f"<body data-refresh='{float(refresh)}'>"
        "<h1>gcluster status</h1><div id=stale></div><div id=summary>loading…</div>"
        "<div id=legend></div><div id=grid></div>"
        "<div id=plots>"
        "<div>events: <span id=rate-now></span><br>"
        "<svg id=rate width=300 height=40><polyline points=''/></svg></div>"
        "<div>heartbeat latency, mean: <span id=latency-now></span><br>"
        "<svg id=latency width=300 height=40><polyline points=''/></svg></div></div>"
        "<section><b>Lease</b>: <span id=lease></span></section>"
        "<section><b>Consumer groups</b><table><thead><tr><th>stream<th>group<th>consumers"
        "<th>pending<th>lag</thead><tbody id=groups></tbody></table></section>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
