"""gcluster.web over HTTP: each route, the bounds on hostile requests, health and readiness."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import requests
from conftest import TIMEOUT, wait_for
from gevent import socket as gsocket

from gcluster import Cluster, web
from gcluster.errors import ConfigError
from gcluster.testing import STREAM_INTENTS, GatewaySimulator

MakeSim = Callable[..., GatewaySimulator]


def get(url: str, method: str = "GET", **kwargs: Any) -> requests.Response:
    """An HTTP request from gevent's thread pool, so the hub keeps serving it."""
    pool = gevent.get_hub().threadpool
    return pool.apply(lambda: requests.request(method, url, timeout=10, **kwargs))


def raw(port: int, data: bytes, read_timeout: float = TIMEOUT) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it."""
    sock = gsocket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        sock.close()


@pytest.fixture
def running(make_sim: MakeSim) -> Iterator[tuple[GatewaySimulator, Cluster, web.StatusServer]]:
    sim = make_sim(shards=3, max_concurrency=3, heartbeat_interval=0.2)
    cluster = Cluster(sim.token, STREAM_INTENTS, api_base=sim.api_base, proxy=False)
    server = web.serve(cluster, port=0, interval=0.2, request_timeout=1.0)
    yield sim, cluster, server
    server.stop()
    cluster.down()


def test_readyz_is_503_naming_shards_until_every_one_is_connected(
    running: tuple[GatewaySimulator, Cluster, web.StatusServer],
) -> None:
    sim, cluster, server = running
    before = get(server.url + "/readyz")
    assert before.status_code == 503
    assert before.json()["reason"] == "the shards have not started yet"
    assert get(server.url + "/healthz").json() == {"alive": True, "reason": "starting"}
    cluster.up(timeout=TIMEOUT)
    ready = get(server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "reason": "ready", "not_ready": []}
    # Shard 1 cannot come back: the gateway refuses its reconnects for a while.
    sim.refuse_connections(1000)
    sim.drop_shard(1)
    wait_for(lambda: get(server.url + "/readyz").status_code == 503)
    body = get(server.url + "/readyz").json()
    assert [entry["shard"] for entry in body["not_ready"]] == [1]
    assert body["not_ready"][0]["stage"] != "connected"
    assert get(server.url + "/healthz").status_code == 200


def test_healthz_is_503_after_down_and_status_json_lists_every_shard(
    running: tuple[GatewaySimulator, Cluster, web.StatusServer],
) -> None:
    sim, cluster, server = running
    cluster.up(timeout=TIMEOUT)
    for shard_id in range(3):
        sim.send_events(shard_id, 20)
    wait_for(lambda: all(s.stats.delivered >= 21 for s in cluster.shards()))
    # A sample after the events: the history shows their rate.
    wait_for(lambda: any(rate > 0 for rate in server.monitor.history.events_per_s))
    status = get(server.url + "/status.json")
    assert status.status_code == 200
    assert status.headers["Cache-Control"] == "no-store"
    data = status.json()
    assert [row["id"] for row in data["shards"]] == [0, 1, 2]
    assert {row["stage"] for row in data["shards"]} == {"connected"}
    # The stream itself: READY is not counted.
    assert [row["events"] for row in data["shards"]] == [20, 20, 20]
    assert data["total"] == 3
    assert data["service"] is None
    assert len(data["history"]["t"]) == len(data["history"]["events_per_s"]) >= 1
    cluster.down()
    after = get(server.url + "/healthz")
    assert after.status_code == 503
    assert after.json() == {"alive": False, "reason": "the cluster was shut down"}
    assert get(server.url + "/readyz").status_code == 503


def test_page_is_self_contained_and_locked_down(
    running: tuple[GatewaySimulator, Cluster, web.StatusServer],
) -> None:
    _, _, server = running
    page = get(server.url + "/status")
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert 'fetch("/status.json"' in page.text
    # Nothing loaded from elsewhere: no src= or href= at all, and the CSP forbids it.
    assert "src=" not in page.text and "href=" not in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert get(server.url + "/").text == page.text


def test_unknown_path_404_and_other_methods_405_without_echoing_the_request(
    running: tuple[GatewaySimulator, Cluster, web.StatusServer],
) -> None:
    _, _, server = running
    missing = get(server.url + "/<script>alert(1)</script>")
    assert missing.status_code == 404
    assert "script" not in missing.text
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        refused = get(server.url + "/status.json", method=method, data=b"x")
        assert refused.status_code == 405, method
        assert refused.headers["Allow"] == "GET, HEAD"
    head = get(server.url + "/healthz", method="HEAD")
    assert head.status_code == 200
    assert head.content == b""


def test_huge_headers_are_refused_and_the_server_goes_on(
    running: tuple[GatewaySimulator, Cluster, web.StatusServer],
) -> None:
    _, _, server = running
    header = b"X-Filler: " + b"a" * 4000 + b"\r\n"
    answer = raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header * 8 + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    long_line = raw(server.port, b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
    assert long_line.startswith(b"HTTP/1.1 414")
    assert get(server.url + "/healthz").status_code == 200


def test_a_slow_loris_is_cut_off_at_the_request_deadline(
    running: tuple[GatewaySimulator, Cluster, web.StatusServer],
) -> None:
    _, _, server = running  # request_timeout=1.0
    sock = gsocket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

        def trickle() -> None:
            # A header byte every 0.1 s, never ending the headers.
            while True:
                sock.sendall(b"X")
                gevent.sleep(0.1)

        dripping = gevent.spawn(trickle)
        try:
            # The server closes the connection, though the client still sends.
            with gevent.Timeout(TIMEOUT, AssertionError("the connection was never closed")):
                while sock.recv(65536):
                    pass
        finally:
            dripping.kill()
    finally:
        sock.close()
    assert get(server.url + "/healthz").status_code == 200


def test_metrics_route_is_501_naming_the_extra_or_prometheus_text() -> None:
    app = web.make_app(_FakeMonitor(), metrics=None)  # type: ignore[arg-type]
    status, body = _call(app, "GET", "/metrics")
    assert status.startswith("501")
    assert b"gcluster[metrics]" in body


def test_listen_refuses_a_taken_port_and_a_bad_one() -> None:
    first = web.listen("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(ConfigError, match="already in use"):
            web.listen("127.0.0.1", port)
    finally:
        first.close()
    for bad in (-1, 65536, "80", True):
        with pytest.raises(ConfigError, match="0 to 65535"):
            web.listen("127.0.0.1", bad)  # type: ignore[arg-type]


def test_serve_refuses_what_it_cannot_show() -> None:
    with pytest.raises(ConfigError, match="gcluster.Cluster"):
        web.serve(object(), port=0)  # type: ignore[arg-type]


class _FakeMonitor:
    pass


def _call(app: web.App, method: str, path: str) -> tuple[str, bytes]:
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.append(status)

    body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": path}, start_response))
    return seen[0], body


def test_status_json_is_strict_json(
    running: tuple[GatewaySimulator, Cluster, web.StatusServer],
) -> None:
    _, _, server = running
    # No NaN or Infinity, which JavaScript's JSON.parse refuses.
    text = get(server.url + "/status.json").text
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sink", "redis://127.0.0.1:1/0", "--metrics-port", "65536"], "a port, 0 to 65535"),
        (["--sink", "redis://127.0.0.1:1/0", "--metrics-port", "-1"], "a port, 0 to 65535"),
        (["--sink", "redis://127.0.0.1:1/0", "--metrics-port", "http"], "a port, 0 to 65535"),
        (["--simulate", "--metrics-port", "0"], "--metrics-port serves the service mode's"),
    ],
)
def test_metrics_port_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gcluster.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["run", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
