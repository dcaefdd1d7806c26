"""Shards and GET /gateway/bot through a real HTTP proxy (tinyproxy), and through hostile ones.

tinyproxy is started per module on free ports, as an open proxy, one that
asks for credentials, and one that lets CONNECT reach port 443 only. Which
way a connection went is read from the proxy's own log of CONNECT requests
and from the simulator's records (a proxy that refuses leaves none). The
hostile proxies are scripted gevent servers that answer CONNECT with what
no proxy should: garbage, endless headers, silence, bytes after the 200.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.socket
import pytest
from conftest import TIMEOUT, collect, has_numbers, numbers
from gevent.event import Event as Flag
from gevent.server import StreamServer
from proxy_server import TinyProxy
from test_cli import gcluster_cli

from gcluster import (
    Cluster,
    ClusterStartError,
    Intents,
    NoOpQueue,
    ShardScheme,
    Stage,
)
from gcluster.errors import ConnectionFailed
from gcluster.testing import STREAM_INTENTS, GatewaySimulator, event_number
from gcluster.testing.tls import TestCertificates, make_certificates
from gcluster.threaded import HubThread, ThreadedCluster
from gcluster.transport import Connection

MakeSim = Callable[..., GatewaySimulator]
USER, PASSWORD = "gcluster", "pr0xy-s3cret"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("proxy-tls"), backend="openssl")


def running(proxy: TinyProxy) -> Iterator[TinyProxy]:
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def open_proxy() -> Iterator[TinyProxy]:
    yield from running(TinyProxy())


@pytest.fixture(scope="module")
def auth_proxy() -> Iterator[TinyProxy]:
    yield from running(TinyProxy(credentials=(USER, PASSWORD)))


@pytest.fixture(scope="module")
def refusing_proxy() -> Iterator[TinyProxy]:
    yield from running(TinyProxy(connect_ports=[443]))


def ws_cluster(sim: GatewaySimulator, **options: Any) -> Cluster:
    # gateway_url and a fixed scheme skip REST: only the websocket goes through the proxy.
    options.setdefault("connect_timeout", 2.0)
    return Cluster(
        sim.token,
        Intents.GUILDS | STREAM_INTENTS,
        gateway_url=sim.url,
        shard_scheme=ShardScheme.range([0], 1),
        queue=NoOpQueue(),
        **options,
    )


def failure_of(cluster: Cluster, sim: GatewaySimulator) -> str:
    """The shard's first connection failure, waited for."""
    shard = cluster.shard(0)
    assert shard is not None
    assert sim.wait_until(lambda: shard.last_failure is not None, TIMEOUT)
    return str(shard.last_failure)


# --- through tinyproxy ----------------------------------------------------------


def test_a_cluster_reaches_a_tls_gateway_and_its_api_through_the_proxy(
    make_sim: MakeSim,
    certificates: TestCertificates,
    open_proxy: TinyProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificates.ca_path))  # requests' own CA setting
    sim = make_sim(shards=2, max_concurrency=2, ssl_context=certificates.server_context())
    before = open_proxy.connects_to(sim.port)
    cluster = Cluster(
        sim.token,
        Intents.GUILDS | STREAM_INTENTS,
        api_base=sim.api_base,
        ssl_context=certificates.client_context(),
        proxy=open_proxy.url,
        connect_timeout=2.0,
    )
    try:
        cluster.up(timeout=TIMEOUT)
        assert cluster.wait_until_ready(TIMEOUT)
        sim.send_events(0, 3)
        sim.send_events(1, 3)
        received = collect(cluster.events(), has_numbers([0, 1], 3))
        assert numbers(received, 0) == numbers(received, 1) == [1, 2, 3]
    finally:
        cluster.down()
    assert [r.path for r in sim.records.requests] == ["/api/v10/gateway/bot"]
    assert len(sim.records.identifies) == 2
    # GET /gateway/bot and both shards' websockets were tunnelled.
    assert open_proxy.connects_to(sim.port) - before == 3


def test_tls_through_the_tunnel_is_verified_against_the_gateway(
    make_sim: MakeSim, certificates: TestCertificates, open_proxy: TinyProxy
) -> None:
    sim = make_sim(ssl_context=certificates.server_context())
    before = open_proxy.connects_to(sim.port)
    cluster = ws_cluster(sim, proxy=open_proxy.url)  # the system's CAs never signed it
    try:
        cluster.up(block=False)
        failure = failure_of(cluster, sim)
    finally:
        cluster.down()
    assert "through the proxy http://127.0.0.1" in failure
    assert "CERTIFICATE_VERIFY_FAILED" in failure
    assert open_proxy.connects_to(sim.port) > before  # the tunnel opened; TLS refused
    assert sim.records.connections == []


def test_a_threaded_cluster_through_a_proxy_that_asks_for_credentials(
    auth_proxy: TinyProxy,
) -> None:
    hub = HubThread("proxy-simulator").start()
    sim = hub.call(lambda: GatewaySimulator(heartbeat_interval=0.5).start(), timeout=TIMEOUT)
    before = auth_proxy.connects_to(sim.port)
    cluster = (
        ThreadedCluster.builder(sim.token, Intents.GUILDS | STREAM_INTENTS)
        .gateway_url(sim.url)  # ws://: a plain gateway is still reached by CONNECT
        .shard_scheme(ShardScheme.range([0], 1))
        .queue(NoOpQueue())
        .proxy(auth_proxy.url_with(USER, PASSWORD))
        .call_timeout(TIMEOUT)
        .build()
    )
    try:
        cluster.up(timeout=TIMEOUT)
        assert cluster.wait_until_ready(TIMEOUT)
        hub.call(sim.send_events, 0, 3, timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while cluster.info()[0].sequence != 4:  # READY and the three events
            assert time.monotonic() < deadline, "the events never arrived"
            time.sleep(0.02)
        got: list[int] = []
        for _shard_id, event in cluster.events():  # buffered by now: no waiting
            number = event_number(event.data) if isinstance(event.data, dict) else None
            if event.sequence is not None and number is not None:
                got.append(number)
            if len(got) == 3:
                break
        assert got == [1, 2, 3]
    finally:
        cluster.down()
        hub.call(sim.stop, timeout=TIMEOUT)
        hub.stop()
    assert auth_proxy.connects_to(sim.port) - before == 1


def test_wrong_or_missing_credentials_are_named_and_the_password_never_shown(
    make_sim: MakeSim,
    certificates: TestCertificates,
    auth_proxy: TinyProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = make_sim()
    wrong = "wr0ng-s3cret"
    with pytest.raises(ConnectionFailed, match="refused the credentials") as caught:
        Connection.open(sim.url, timeout=2.0, proxy=auth_proxy.url_with(USER, wrong))
    assert wrong not in str(caught.value) and "http://***@127.0.0.1" in str(caught.value)
    with pytest.raises(ConnectionFailed, match="needs credentials"):
        Connection.open(sim.url, timeout=2.0, proxy=auth_proxy.url)
    assert sim.records.connections == []

    # The REST call, tunnelled by requests, fails as clearly.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificates.ca_path))
    tls_sim = make_sim(ssl_context=certificates.server_context())
    cluster = Cluster(
        tls_sim.token,
        Intents.GUILDS,
        api_base=tls_sim.api_base,
        proxy=auth_proxy.url_with(USER, wrong),
    )
    with pytest.raises(ClusterStartError) as start_error:
        cluster.up(timeout=TIMEOUT)
    cluster.down()
    message = str(start_error.value)
    assert "through the proxy http://***@127.0.0.1" in message and wrong not in message
    assert "failed: the proxy answered 401 Unauthorized: it refused the credentials" in message
    assert tls_sim.records.requests == []


def test_a_proxy_that_refuses_the_port_is_named_with_its_status(
    make_sim: MakeSim, refusing_proxy: TinyProxy
) -> None:
    sim = make_sim()
    with pytest.raises(ConnectionFailed, match="the proxy answered 403 Forbidden"):
        Connection.open(sim.url, timeout=2.0, proxy=refusing_proxy.url)
    assert refusing_proxy.connects_to(sim.port) >= 1
    assert sim.records.connections == []


def test_the_environment_chooses_the_proxy_unless_no_proxy_or_proxy_false(
    make_sim: MakeSim, refusing_proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim(identify_interval=0)  # two clusters identify shard 0 in turn
    # ws:// goes where http:// goes: HTTP_PROXY. This proxy refuses the port,
    # so a shard that followed it fails and one that did not gets through.
    monkeypatch.setenv("HTTP_PROXY", refusing_proxy.url)
    cluster = ws_cluster(sim)
    try:
        cluster.up(block=False)
        assert "answered 403" in failure_of(cluster, sim)
        assert sim.records.connections == []
    finally:
        cluster.down()

    for ignoring in ({"proxy": False}, {}):
        if not ignoring:
            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        cluster = ws_cluster(sim, **ignoring)
        try:
            cluster.up(timeout=TIMEOUT)
            assert cluster.wait_until_ready(TIMEOUT)
        finally:
            cluster.down()
    assert len(sim.records.identifies) == 2


def test_a_proxy_dying_mid_stream_and_coming_back_resumes_the_session(
    make_sim: MakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gcluster")
    sim = make_sim()
    proxy = TinyProxy(credentials=(USER, PASSWORD)).start()
    cluster = ws_cluster(sim, proxy=proxy.url_with(USER, PASSWORD))
    try:
        cluster.up(timeout=TIMEOUT)
        assert cluster.wait_until_ready(TIMEOUT)
        events = cluster.events()
        sim.send_events(0, 3)
        received = collect(events, has_numbers([0], 3))
        proxy.kill()  # every tunnel dies with it
        assert sim.wait_until(lambda: len(sim.records.closes) == 1, TIMEOUT)
        assert sim.records.closes[0].dropped
        proxy.start()  # the same port
        assert sim.wait_until(lambda: any(r.ok for r in sim.records.resumes), TIMEOUT)
        sim.send_events(0, 3)
        received += collect(events, has_numbers([0], 6))
        assert numbers(received, 0) == [1, 2, 3, 4, 5, 6]
        assert cluster.info()[0].stage is Stage.CONNECTED
    finally:
        cluster.down()
        proxy.stop()
    assert len(sim.records.identifies) == 1  # resumed, not re-identified
    assert [r.ok for r in sim.records.resumes] == [True]
    assert len(sim.records.connections) == 2
    assert caplog.records and PASSWORD not in caplog.text  # the reconnects logged, no password


# --- hostile proxies ------------------------------------------------------------


class ScriptedProxy:
    """A 'proxy' that reads the CONNECT request's head and then runs `answer(sock)`."""

    def __init__(self, answer: Callable[[Any], None]) -> None:
        self.requests: list[bytes] = []
        self.client_left = Flag()
        self._answer = answer
        self._server = StreamServer(("127.0.0.1", 0), self._handle)

    def __enter__(self) -> ScriptedProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(timeout=1)

    @property
    def url(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self._server.server_port}"

    def _handle(self, sock: Any, _address: Any) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                return
            head += chunk
        self.requests.append(head)
        try:
            self._answer(sock)
        except OSError:
            self.client_left.set()  # the client hung up on it


def endless_headers(sock: Any) -> None:
    sock.sendall(b"HTTP/1.1 200 Connection established\r\n")
    while True:  # the client must stop reading, or this never ends
        sock.sendall(b"X-Padding: " + b"a" * 1000 + b"\r\n")


def silence(sock: Any) -> None:
    while sock.recv(4096):
        pass
    raise OSError("client left")


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (lambda s: s.sendall(b"HTTP/1.1 407 Who\r\nContent-Length: 0\r\n\r\n"), "refused the cred"),
        (lambda s: s.sendall(b"\x00\xffnot http at all\r\n\r\n"), "no valid HTTP"),
        (endless_headers, "headers exceed 16384 bytes"),
        (silence, "timed out"),
        (lambda s: s.close(), "closed the connection before answering"),
        (lambda s: s.sendall(b"HTTP/1.1 200 OK\r\n\r\n{}"), "sent data into the tunnel"),
        (lambda s: s.sendall(b"HTTP/1.1 301 Moved\r\nLocation: http://evil/\r\n\r\n"), "301"),
    ],
    ids=["407", "garbage", "giant-header", "never-answers", "closes", "early-data", "redirect"],
)
def test_a_hostile_proxy_fails_the_attempt_within_the_connect_timeout(
    make_sim: MakeSim, answer: Callable[[Any], None], complaint: str
) -> None:
    sim = make_sim()
    with ScriptedProxy(answer) as proxy, gevent.Timeout(TIMEOUT):
        with pytest.raises(ConnectionFailed, match=complaint) as caught:
            Connection.open(sim.url, timeout=1.0, proxy=proxy.url)
        assert len(proxy.requests) == 1
        assert proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{sim.port} HTTP/1.1".encode())
        if answer in (endless_headers, silence):
            assert proxy.client_left.wait(TIMEOUT)  # the socket was closed, not left open
    assert PASSWORD not in str(caught.value)
    assert sim.records.connections == []


def test_the_token_never_reaches_the_proxy_in_clear(
    make_sim: MakeSim, certificates: TestCertificates
) -> None:
    # A tunnelling proxy that keeps every byte it relays: only the CONNECT is readable.
    sim = make_sim(ssl_context=certificates.server_context())
    relayed: list[bytes] = []

    def relay(sock: Any) -> None:
        upstream = gevent.socket.create_connection(("127.0.0.1", sim.port))
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(src: Any, dst: Any) -> None:
            while data := src.recv(65536):
                relayed.append(data)
                dst.sendall(data)

        gevent.joinall([gevent.spawn(pump, sock, upstream), gevent.spawn(pump, upstream, sock)])

    with ScriptedProxy(relay) as proxy:
        cluster = ws_cluster(sim, proxy=proxy.url, ssl_context=certificates.client_context())
        try:
            cluster.up(timeout=TIMEOUT)
            assert cluster.wait_until_ready(TIMEOUT)
        finally:
            cluster.down()
    seen = b"".join(proxy.requests) + b"".join(relayed)
    secret = sim.token.encode()
    assert relayed and secret not in seen
    assert sim.records.identifies  # the token did reach the gateway, inside TLS


def test_a_proxy_that_is_not_listening_is_named(make_sim: MakeSim) -> None:
    sim = make_sim()
    server = StreamServer(("127.0.0.1", 0), lambda s, a: None)
    server.start()
    port = server.server_port
    server.stop()  # the port is free: nothing listens there now
    with pytest.raises(ConnectionFailed, match=f"through the proxy http://127.0.0.1:{port} failed"):
        Connection.open(sim.url, timeout=2.0, proxy=f"http://127.0.0.1:{port}")


# --- the command line -------------------------------------------------------------


def cli_run(sim: GatewaySimulator, *args: str) -> Any:
    return gcluster_cli(
        "run",
        "--api-base",
        sim.api_base,
        "--shards",
        "1",
        "--events",
        "READY",
        "--limit",
        "1",
        *args,
        token=sim.token,
        timeout=60,
    )


def test_run_goes_through_the_proxy_given_or_the_environments_unless_no_proxy(
    make_sim: MakeSim,
    certificates: TestCertificates,
    auth_proxy: TinyProxy,
    refusing_proxy: TinyProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The child trusts the test CA: requests through REQUESTS_CA_BUNDLE, the
    # websocket's default context through OpenSSL's SSL_CERT_FILE.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificates.ca_path))
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca_path))
    sim = make_sim(identify_interval=0, ssl_context=certificates.server_context())
    before = auth_proxy.connects_to(sim.port)
    given = cli_run(sim, "--proxy", auth_proxy.url_with(USER, PASSWORD))
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout)["t"] == "READY"
    assert auth_proxy.connects_to(sim.port) - before == 2  # REST and the websocket

    monkeypatch.setenv("HTTPS_PROXY", auth_proxy.url_with(USER, PASSWORD))
    from_environment = cli_run(sim)
    assert from_environment.returncode == 0, from_environment.stderr
    assert auth_proxy.connects_to(sim.port) - before == 4

    monkeypatch.setenv("HTTPS_PROXY", refusing_proxy.url)
    refused = cli_run(sim)
    assert refused.returncode == 1 and "answered 403" in refused.stderr, refused.stderr
    direct = cli_run(sim, "--no-proxy")
    assert direct.returncode == 0, direct.stderr
    assert refusing_proxy.connects_to(sim.port) == 1
    assert len(sim.records.identifies) == 3


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--proxy", f"https://{USER}:{PASSWORD}@proxy:3128"), "argument --proxy: proxy https"),
        (("--proxy", f"http://{USER}:{PASSWORD}@proxy"), "give the proxy's port"),
        (("--proxy", "http://proxy:3128", "--no-proxy"), "not allowed with argument --proxy"),
        (("--simulate", "--proxy", "http://proxy:3128"), "leave out --proxy"),
    ],
)
def test_a_bad_proxy_on_the_command_line_gets_one_line_and_status_2(
    args: tuple[str, ...], complaint: str
) -> None:
    result = gcluster_cli("run", *args, token="a-token", timeout=30)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert complaint in line and PASSWORD not in line, line
