"""Throwaway TLS certificates, so tests can run the simulator as ``wss://``.

Discord's gateway and API are only reachable over TLS, so a client's TLS
path (contexts, hostname checks, gevent's SSL sockets) deserves a loopback
test too. `make_certificates` creates a private certificate authority and a
server certificate for ``127.0.0.1`` and ``localhost`` in a directory, and
hands out matching server and client contexts. It uses the ``trustme``
package when it is installed, and the ``openssl`` command otherwise.

The contexts are `gevent.ssl.SSLContext` objects (subclasses of
`ssl.SSLContext`): wrapping a gevent socket with them gives a cooperative
SSL socket, which is what a client running in the simulator's hub needs.
"""

from __future__ import annotations

import importlib
import importlib.util
import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gevent.ssl
import gevent.subprocess

from gcluster.errors import ConfigError, GClusterError

__all__ = ["CertificateError", "TestCertificates", "make_certificates"]

# Names the server certificate is valid for.
_HOSTS = ("127.0.0.1", "localhost")
_DAYS = 7

# A self-contained configuration, so the system's openssl.cnf does not matter.
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = placeholder

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class CertificateError(GClusterError, RuntimeError):
    """The certificates could not be made (no trustme and no working openssl)."""


@dataclass(frozen=True, slots=True)
class TestCertificates:
    """A private CA and a server certificate signed by it, as PEM files."""

    __test__ = False  # Not a pytest test class, despite its name.

    ca_path: Path
    """The CA certificate: what a client must trust."""
    cert_path: Path
    """The server certificate (valid for 127.0.0.1 and localhost)."""
    key_path: Path
    """The server certificate's private key."""

    def server_context(self) -> ssl.SSLContext:
        """A new server-side context presenting the server certificate."""
        context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context  # type: ignore[no-any-return]

    def client_context(self) -> ssl.SSLContext:
        """A new client-side context that trusts only the CA and checks host names."""
        context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=self.ca_path)
        return context  # type: ignore[no-any-return]


def make_certificates(
    directory: str | Path, *, backend: Literal["auto", "trustme", "openssl"] = "auto"
) -> TestCertificates:
    """Create a throwaway CA and a server certificate for 127.0.0.1/localhost.

    The files are written to ``directory`` (created if missing) as ``ca.pem``,
    ``server.pem`` and ``server.key``; they are valid for a week and are for
    tests only.

    Args:
        directory: where to write them (e.g. pytest's ``tmp_path``).
        backend: ``"trustme"``, ``"openssl"`` (the command line tool), or
            ``"auto"``: trustme if it is installed, else openssl.

    Raises:
        ConfigError: an unknown backend.
        CertificateError: when the chosen backend is unavailable or fails.
    """
    if backend not in ("auto", "trustme", "openssl"):
        raise ConfigError(f"backend must be 'auto', 'trustme' or 'openssl', not {backend!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    certificates = TestCertificates(
        ca_path=directory / "ca.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server.key",
    )
    if backend == "auto":
        backend = "trustme" if importlib.util.find_spec("trustme") is not None else "openssl"
    if backend == "trustme":
        _with_trustme(certificates)
    else:
        _with_openssl(certificates, directory)
    return certificates


def _with_trustme(certificates: TestCertificates) -> None:
    try:
        # Imported by name: an optional test dependency, without type stubs.
        trustme = importlib.import_module("trustme")
    except ImportError as err:
        raise CertificateError("the trustme package is not installed") from err
    ca: Any = trustme.CA()
    issued: Any = ca.issue_cert(*_HOSTS)
    ca.cert_pem.write_to_path(str(certificates.ca_path))
    issued.cert_chain_pems[0].write_to_path(str(certificates.cert_path))
    issued.private_key_pem.write_to_path(str(certificates.key_path))


def _with_openssl(certificates: TestCertificates, directory: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CertificateError("neither trustme nor the openssl command is available")
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)
    ca_key = directory / "ca.key"
    request = directory / "server.csr"
    new_ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    days = ["-days", str(_DAYS)]
    steps = [
        [openssl, "req", "-x509", "-config", str(config), "-extensions", "ca_ext",
         *new_ec_key, *days, "-subj", "/CN=gcluster test CA",
         "-keyout", str(ca_key), "-out", str(certificates.ca_path)],
        [openssl, "req", "-new", "-config", str(config), *new_ec_key,
         "-subj", "/CN=localhost",
         "-keyout", str(certificates.key_path), "-out", str(request)],
        [openssl, "x509", "-req", "-in", str(request),
         "-CA", str(certificates.ca_path), "-CAkey", str(ca_key),
         "-set_serial", str(secrets.randbits(63)), *days,
         "-extfile", str(config), "-extensions", "server_ext",
         "-out", str(certificates.cert_path)],
    ]  # fmt: skip
    for step in steps:
        try:
            # gevent's subprocess, so a caller in a running hub does not block it.
            gevent.subprocess.run(step, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", b"") or b""
            raise CertificateError(
                f"openssl failed: {err}: {detail.decode(errors='replace').strip()}"
            ) from err
