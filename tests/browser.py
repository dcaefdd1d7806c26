"""Headless Chromium for the tests, driven over the DevTools protocol with websocket-client.

Debian's `chromium` package (``apt-get install chromium``); a machine without
it fails these tests, naming the package. Everything runs on gevent sockets,
so the page can load from a server in the test's own hub while the test waits
for the browser's answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import websocket
from gevent import socket as gsocket

TIMEOUT = 20.0


def _binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "the browser tests need Chromium: apt-get install chromium (Debian's package)"
    )


class Browser:
    """One headless Chromium process and one page of it."""

    def __init__(self, width: int = 1280, height: int = 800) -> None:
        # Chromium's helper processes may still be writing to the profile
        # when the browser itself has exited: the profile is removed after
        # the whole process group is gone, and a straggler's file is no error.
        self._dir = tempfile.TemporaryDirectory(
            prefix="gcluster-chromium-", ignore_cleanup_errors=True
        )
        profile = Path(self._dir.name)
        self._process = subprocess.Popen(  # its own group: close() ends every helper
            [
                _binary(),
                "--headless=new",
                "--no-sandbox",  # CI runs as root
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._next_id = 0
        self._ws: Any = None
        try:
            port = self._devtools_port(profile / "DevToolsActivePort")
            target = self._page_target(port)
            sock = gsocket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            self._ws = websocket.create_connection(
                target, socket=sock, suppress_origin=True, enable_multithread=False
            )
            self._ws.settimeout(TIMEOUT)
            self.call("Page.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, path: Path) -> int:
        deadline = time.monotonic() + TIMEOUT
        while True:
            if path.exists():
                first = path.read_text().split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            gevent.sleep(0.05)

    def _page_target(self, port: int) -> str:
        sock = gsocket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        try:
            sock.sendall(b"GET /json/list HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536) or _closed()
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += sock.recv(65536) or _closed()
        finally:
            sock.close()
        targets = json.loads(body)
        pages = [t for t in targets if t.get("type") == "page"]
        assert pages, f"chromium has no page: {targets}"
        url: str = pages[0]["webSocketDebuggerUrl"]
        return url

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events are skipped)."""
        self._next_id += 1
        mine = self._next_id
        self._ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if message.get("id") == mine:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
        raise AssertionError(f"no answer to {method} within {TIMEOUT} s")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def wait_for(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """Poll the page until `expression` is truthy; its value. Fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression!r} still false after {timeout} s")
            gevent.sleep(0.05)

    def screenshot(self, path: str) -> None:
        """A PNG of the page, for a person to look at."""
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close(timeout=1)
            self._ws = None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)  # helpers left behind
        self._dir.cleanup()


def _closed() -> bytes:
    raise AssertionError("chromium closed its DevTools connection early")


@pytest.fixture
def browser() -> Iterator[Browser]:
    page = Browser()
    try:
        yield page
    finally:
        page.close()


__all__ = ["Browser", "browser"]
