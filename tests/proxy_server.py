"""A real HTTP proxy for the tests: tinyproxy on a free port with a generated config.

`TinyProxy` writes a config file (Basic credentials, or the CONNECT ports it
allows, when asked), starts ``tinyproxy -d`` and waits until it accepts
connections. `kill()` ends it abruptly (SIGKILL: every tunnel dies with it)
and `start()` brings it back on the same port. There is no skipping: without
a tinyproxy binary the tests fail (CI installs it with apt-get).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _ports import free_port

__all__ = ["TinyProxy"]

_START_TIMEOUT = 10.0


def _binary() -> str:
    found = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    if not os.access(found, os.X_OK):
        raise RuntimeError("tinyproxy is not installed (apt-get install tinyproxy)")
    return found


class TinyProxy:
    """One tinyproxy on 127.0.0.1, allowing only 127.0.0.1 as a client.

    Args:
        credentials: (user, password) the proxy demands (BasicAuth).
        connect_ports: the only ports CONNECT may reach; by default any.
    """

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        connect_ports: Sequence[int] | None = None,
    ) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="gcluster-tinyproxy-")
        self._process: subprocess.Popen[bytes] | None = None
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "MaxClients 50",
            "Allow 127.0.0.1",
            "LogLevel Connect",
            f'LogFile "{Path(self._dir.name) / "tinyproxy.log"}"',
            "DisableViaHeader Yes",
        ]
        if credentials is not None:
            lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
        # Without ConnectPort lines tinyproxy lets CONNECT reach any port.
        lines += [f"ConnectPort {port}" for port in connect_ports or ()]
        self.log = Path(self._dir.name) / "tinyproxy.log"
        self.config = Path(self._dir.name) / "tinyproxy.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def start(self) -> TinyProxy:
        self._process = subprocess.Popen(
            [_binary(), "-d", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                err = self._process.stderr.read() if self._process.stderr else b""
                raise RuntimeError(f"tinyproxy exited: {err.decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def connects_to(self, port: int) -> int:
        """How many CONNECTs to 127.0.0.1:`port` the proxy has logged (its own record)."""
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count(f": CONNECT 127.0.0.1:{port} HTTP/")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """End it at once, with every tunnel through it."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            if process.stderr is not None:
                process.stderr.close()

    def stop(self) -> None:
        self.kill()
        self._dir.cleanup()
