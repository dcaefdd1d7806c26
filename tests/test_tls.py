"""wss: a certificate the client does not trust is refused; a trusted one works."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import TIMEOUT

from gcluster import Cluster, ConfigError, Intents, NoOpQueue, ShardScheme, Stage
from gcluster.testing import STREAM_INTENTS, GatewaySimulator
from gcluster.testing.tls import make_certificates


def tls_cluster(sim: GatewaySimulator, **options: object) -> Cluster:
    # gateway_url skips REST, so only the websocket's TLS is under test here.
    return Cluster(
        sim.token,
        Intents.GUILDS | STREAM_INTENTS,
        gateway_url=sim.url,
        shard_scheme=ShardScheme.range([0], 1),
        queue=NoOpQueue(),
        connect_timeout=2.0,
        **options,
    )


def test_an_untrusted_certificate_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gcluster.shard")
    certs = make_certificates(tmp_path, backend="openssl")
    with GatewaySimulator(ssl_context=certs.server_context()) as sim:
        assert sim.url.startswith("wss://")
        cluster = tls_cluster(sim)  # default context: the system's CAs, which never signed this
        try:
            cluster.up(block=False)
            assert sim.wait_until(
                lambda: any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records),
                TIMEOUT,
            )
            assert sim.records.connections == []  # no websocket was ever opened
            assert cluster.info()[0].stage is not Stage.CONNECTED
        finally:
            cluster.down()


def test_a_trusted_certificate_is_accepted(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path, backend="openssl")
    with GatewaySimulator(ssl_context=certs.server_context()) as sim:
        cluster = tls_cluster(sim, ssl_context=certs.client_context())
        try:
            cluster.up(timeout=TIMEOUT)
            assert cluster.wait_until_ready(TIMEOUT)
            sim.send_events(0, 5)
            assert sim.wait_until(lambda: cluster.info()[0].sequence == 6, TIMEOUT)
        finally:
            cluster.down()


def test_a_standard_library_context_with_the_ca_works_too(tmp_path: Path) -> None:
    import ssl

    certs = make_certificates(tmp_path, backend="openssl")
    context = ssl.create_default_context(cafile=str(certs.ca_path))
    with GatewaySimulator(ssl_context=certs.server_context()) as sim:
        cluster = tls_cluster(sim, ssl_context=context)
        try:
            cluster.up(timeout=TIMEOUT)
            assert cluster.wait_until_ready(TIMEOUT)
        finally:
            cluster.down()
    with pytest.raises(ConfigError, match="SSLContext"):
        Cluster("token", Intents.GUILDS, ssl_context="/path/to/ca.pem")
