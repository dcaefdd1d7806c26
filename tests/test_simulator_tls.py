"""The simulator over TLS: wss:// and https:// with a throwaway certificate authority.

Clients connect the way gcluster does: a gevent socket wrapped by a
`gevent.ssl` context, handed to websocket-client. A client that trusts the
test CA completes the handshake; one that does not fails certificate
verification.
"""

from __future__ import annotations

import http.client
import json
import ssl
from pathlib import Path
from typing import Any

import gevent.socket
import gevent.ssl
import pytest
import websocket
from test_simulator import TIMEOUT, TOKEN, Client

from gcluster.testing import GatewaySimulator, TestCertificates, event_number, make_certificates


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def tls_socket(sim: GatewaySimulator, context: ssl.SSLContext, host: str) -> Any:
    raw = gevent.socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT)
    return context.wrap_socket(raw, server_hostname=host)


def tls_connect(
    sim: GatewaySimulator, context: ssl.SSLContext, *, host: str = "127.0.0.1"
) -> Client:
    sock = tls_socket(sim, context, host)
    url = sim.url.replace("127.0.0.1", host)
    ws = websocket.create_connection(
        f"{url}/?v=10&encoding=json", socket=sock, enable_multithread=False
    )
    ws.settimeout(TIMEOUT)
    return Client(ws, compress=False)


def https_get(sim: GatewaySimulator, context: ssl.SSLContext, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPSConnection("127.0.0.1", sim.port, timeout=TIMEOUT, context=context)
    conn.sock = tls_socket(sim, context, "127.0.0.1")
    try:
        conn.request("GET", path, headers={"Authorization": f"Bot {TOKEN}"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_simulator_speaks_wss_and_https(certificates: TestCertificates) -> None:
    with GatewaySimulator(token=TOKEN, ssl_context=certificates.server_context()) as sim:
        assert sim.tls
        assert sim.url == f"wss://127.0.0.1:{sim.port}"
        assert sim.resume_url == f"wss://127.0.0.1:{sim.port}/resume"
        assert sim.api_base == f"https://127.0.0.1:{sim.port}/api/v10"

        trusting = certificates.client_context()
        status, body = https_get(sim, trusting, "/api/v10/gateway/bot")
        assert status == 200 and body["url"] == sim.url

        client = tls_connect(sim, trusting)
        ready = client.ready()
        assert ready["d"]["resume_gateway_url"] == sim.resume_url
        sim.send_events(0, 3)
        assert [event_number(m["d"]) for m in client.recv_dispatches(3)] == [1, 2, 3]
        client.close()

        by_name = tls_connect(sim, trusting, host="localhost")
        assert by_name.recv()["op"] == 10
        by_name.close()


def test_a_client_that_does_not_trust_the_ca_fails_verification(
    certificates: TestCertificates, tmp_path: Path
) -> None:
    stranger = make_certificates(tmp_path / "other-ca")
    with GatewaySimulator(token=TOKEN, ssl_context=certificates.server_context()) as sim:
        system_only = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        system_only.load_default_certs()
        for untrusting in (stranger.client_context(), system_only):
            with pytest.raises(ssl.SSLCertVerificationError):
                tls_socket(sim, untrusting, "127.0.0.1")
        assert sim.records.connections == []
        # The failed handshakes did not hurt the server.
        client = tls_connect(sim, certificates.client_context())
        assert client.recv()["op"] == 10
        client.close()


def test_a_plain_client_gets_nothing_from_a_tls_simulator(
    certificates: TestCertificates,
) -> None:
    with GatewaySimulator(token=TOKEN, ssl_context=certificates.server_context()) as sim:
        sock = gevent.socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT)
        plain_url = sim.url.replace("wss://", "ws://")
        with pytest.raises((OSError, websocket.WebSocketException)):
            websocket.create_connection(plain_url, socket=sock, enable_multithread=False)
        assert sim.records.connections == []


# trustme comes with the test extra; the core run (no extras) deselects it.
@pytest.mark.parametrize("backend", ["openssl", pytest.param("trustme", marks=pytest.mark.extras)])
def test_certificate_backends(tmp_path: Path, backend: str) -> None:
    made = make_certificates(tmp_path, backend=backend)  # type: ignore[arg-type]
    assert made.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    with GatewaySimulator(token=TOKEN, ssl_context=made.server_context()) as sim:
        client = tls_connect(sim, made.client_context())
        assert client.recv()["op"] == 10
        client.close()
    with pytest.raises(ValueError):
        make_certificates(tmp_path, backend="gnutls")  # type: ignore[arg-type]
