"""HTTP proxies: which one a URL goes through, and the CONNECT that opens a tunnel, without sockets.

Corporate networks often reach the internet only through an HTTP proxy. A
connection through one is a plain-HTTP ``CONNECT host:port`` to the proxy;
after its 2xx answer the socket is a byte tunnel to the gateway, and TLS to
the gateway (certificate and host name checked) runs inside it, so the proxy
relays ciphertext and never sees the token. `ProxyConnect` makes the request
and reads the answer with h11, bounded like the websocket upgrade
(`handshake.py`); `transport.py` does the I/O.

`resolve_proxy` decides which proxy, if any, a URL goes through: the one the
application gave, none (``proxy=False``), or the environment's
``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY`` read by
requests' own functions, so the websocket and GET /gateway/bot agree with
each other and with requests. Credentials never leave this module in text:
`Proxy`'s repr and `display` hide them, and the proxy's answers are reported
by status code with the standard phrase, never with the proxy's own words.
"""

from __future__ import annotations

import base64
import http
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote, urlsplit

import h11
import requests.utils

from gcluster.errors import ConfigError

__all__ = [
    "Proxy",
    "ProxyConnect",
    "ProxyError",
    "check_proxy_option",
    "refusal",
    "parse_proxy",
    "resolve_proxy",
]

# A CONNECT answer is a status line and a few headers; h11 refuses more than this.
MAX_HEADERS: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy, reached with CONNECT; credentials hidden from every repr.

    Build one with `parse_proxy` (or give the ``proxy`` option a URL).

    Attributes:
        host: the proxy's host name or IP address (IPv6 without brackets).
        port: its port.
        username, password: Basic credentials, percent-decoded; None for none.
    """

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Built by hand as well as by parse_proxy: a mistake is said here, not
        # as a failed DNS lookup or a 407 at the first connection. No message
        # quotes the credentials.
        host = self.host
        if not isinstance(host, str) or not host or any(c in host for c in "/@[] \t\r\n"):
            raise ConfigError(
                f"Proxy's host must be a host name or IP address alone, not {host!r}: "
                "for a URL, use parse_proxy('http://host:port') or pass the URL as the option"
            )
        port = self.port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"Proxy's port must be an int within 1..65535, not {port!r}")
        for name in ("username", "password"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(
                    f"Proxy's {name} must be a str or None, not {type(value).__name__}"
                )
        if self.password is not None and self.username is None:
            raise ConfigError("Proxy has a password but no username: give both (or neither)")

    def __repr__(self) -> str:
        return f"Proxy({self.display!r})"

    @property
    def display(self) -> str:
        """The proxy's URL with any credentials shown as ``***``: safe to log."""
        auth = "***@" if self.username is not None else ""
        return f"http://{auth}{_netloc(self.host, self.port)}"

    @property
    def url(self) -> str:
        """The full URL, credentials percent-encoded, for requests. Never log it."""
        auth = ""
        if self.username is not None:
            auth = quote(self.username, safe="") + ":" + quote(self.password or "", safe="") + "@"
        return f"http://{auth}{_netloc(self.host, self.port)}"

    def authorization(self) -> str | None:
        """The Proxy-Authorization header's value (Basic), None without credentials."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    def redact(self, text: str) -> str:
        """`text` with the password (as given or percent-encoded) replaced by ``***``."""
        if self.username is None:
            return text  # nothing secret: its URL is its display
        for secret in (self.url, self.password):
            if secret:
                text = text.replace(secret, "***")
                text = text.replace(quote(secret, safe=""), "***")
        return text


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_proxy(text: str, *, default_scheme: bool = False) -> Proxy:
    """``http://[user:password@]host:port`` as a `Proxy`.

    Args:
        text: the URL. A trailing "/" is allowed; any other path, a query or
            a fragment is not.
        default_scheme: take a URL without ``scheme://`` as http, as requests
            does with the environment's proxy variables.

    Raises:
        ValueError: not such a URL; the message never holds the credentials.
    """
    if not isinstance(text, str):
        raise ValueError(f"a proxy must be an http://host:port URL, not {type(text).__name__}")
    if default_scheme and "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        host = parts.hostname
        port = parts.port
    except ValueError:
        # The text may hold credentials, so it is not quoted.
        raise ValueError("the proxy URL cannot be parsed (a bad host or port)") from None
    shown = _shown(parts.scheme, host, parts.username is not None)
    if parts.scheme == "https":
        raise ValueError(
            f"{shown}: https:// proxies (TLS to the proxy itself) are not supported; use "
            "http:// (the gateway traffic is still TLS end to end, inside the tunnel)"
        )
    if parts.scheme != "http":
        raise ValueError(f"{shown}: a proxy URL must start with http://")
    if not host:
        raise ValueError(f"{shown}: the proxy URL has no host")
    if port is None:
        raise ValueError(f"{shown}: give the proxy's port, e.g. http://{host}:3128")
    if port == 0:
        raise ValueError(f"{shown}: the proxy's port must be within 1..65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{shown}: a proxy URL has no path, query or fragment")
    username = password = None
    if parts.username is not None:
        username = unquote(parts.username)
        password = unquote(parts.password) if parts.password is not None else ""
    return Proxy(host, port, username, password)


def _shown(scheme: str, host: str | None, has_auth: bool) -> str:
    return f"proxy {scheme or '?'}://{'***@' if has_auth else ''}{host or ''}"


def check_proxy_option(value: object) -> Proxy | bool | None:
    """The ``proxy`` option as a `Proxy`, False or None.

    Raises:
        ValueError: anything else, with a message saying what is accepted.
    """
    if value is None or value is False or isinstance(value, Proxy):
        return value
    if value is True:
        raise ValueError(
            "proxy=True means nothing: give an http://host:port URL, None to follow "
            "HTTPS_PROXY/NO_PROXY (the default), or False for no proxy at all"
        )
    if isinstance(value, str):
        return parse_proxy(value)
    raise ValueError(
        f"proxy must be an http://host:port URL, a Proxy, None or False, not {type(value).__name__}"
    )


def resolve_proxy(option: Proxy | str | bool | None, url: str) -> Proxy | None:
    """The proxy to reach `url` (ws, wss, http or https) through, or None to go direct.

    Args:
        option: a `Proxy` (always used, ``NO_PROXY`` notwithstanding, as
            requests uses explicit proxies), False (never a proxy), or None:
            the environment decides, as it does for requests: ``HTTPS_PROXY``
            for wss:// and https://, ``HTTP_PROXY`` for ws:// and http://,
            ``ALL_PROXY`` for both, unless ``NO_PROXY`` names the host.

            A string is parsed as by `parse_proxy`.

    Raises:
        ValueError: `option`, or the environment's proxy for `url`, is not a
            usable proxy; the message never holds the credentials.
    """
    option = check_proxy_option(option)
    if isinstance(option, Proxy):
        return option
    if option is False:
        return None
    # requests' own rules, on the URL as an HTTP URL of the same security.
    scheme, sep, rest = url.partition("://")
    as_http = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower()) + sep + rest
    found = requests.utils.get_environ_proxies(as_http)
    chosen = requests.utils.select_proxy(as_http, found)
    if not chosen:
        return None
    try:
        return parse_proxy(chosen, default_scheme=True)
    except ValueError as err:
        kind = "HTTPS_PROXY" if as_http.startswith("https") else "HTTP_PROXY"
        raise ValueError(
            f"the environment's proxy ({kind} or ALL_PROXY) is unusable: {err}; fix it, "
            "or pass proxy=False to ignore the environment"
        ) from None


class ProxyError(Exception):
    """The proxy did not open the tunnel.

    Attributes:
        status: the HTTP status it answered, None when it answered no HTTP
            (garbage, oversized headers, or a closed connection).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProxyConnect:
    """One CONNECT request to a proxy and the reading of its answer.

    Args:
        proxy: the proxy (its credentials go in Proxy-Authorization).
        host, port: the tunnel's far end.
    """

    def __init__(self, proxy: Proxy, host: str, port: int) -> None:
        self._proxy = proxy
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADERS)
        target = _netloc(host, port)
        headers = [("Host", target), ("User-Agent", "gcluster")]
        authorization = proxy.authorization()
        if authorization is not None:
            headers.append(("Proxy-Authorization", authorization))
        request = h11.Request(method="CONNECT", target=target, headers=headers)
        self.request: bytes = self._conn.send(request) + self._conn.send(h11.EndOfMessage())

    def receive(self, data: bytes) -> bool:
        """Feed what the socket read (b"" at end of stream).

        Returns:
            False while the answer is incomplete, True once the tunnel is open.

        Raises:
            ProxyError: any answer but a 2xx, none at all, or bytes after the
                2xx: neither wss nor ws lets the server speak first, so the
                proxy made them up.
        """
        conn = self._conn
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return False
                if isinstance(event, h11.InformationalResponse):
                    continue  # 100 Continue and the like come before the answer
                if isinstance(event, h11.Response):
                    if not 200 <= event.status_code < 300:
                        raise refusal(event.status_code, self._proxy)
                    leftover, _closed = conn.trailing_data
                    if leftover:
                        raise ProxyError(
                            "the proxy sent data into the tunnel before the server could",
                            event.status_code,
                        )
                    return True
                raise ProxyError(f"unexpected answer to CONNECT: {type(event).__name__}")
        except h11.RemoteProtocolError as err:
            if not data:
                raise ProxyError("the proxy closed the connection before answering") from None
            # Without h11's text: it may quote what the proxy sent.
            raise ProxyError(f"the proxy answered no valid HTTP ({_kind(err)})") from None


def refusal(status: int, proxy: Proxy) -> ProxyError:
    """The error for a proxy that answered CONNECT with `status` (not 2xx).

    Named by the status and its standard phrase, with what to do about
    credentials when it asks for them.
    """
    phrase = _phrase(status)
    # 407 is the standard answer; some proxies (tinyproxy) answer CONNECT with 401.
    if status in (401, 407):
        if proxy.username is None:
            return ProxyError(
                f"the proxy answered {status} {phrase}: it needs credentials, "
                "give them as http://user:password@host:port",
                status,
            )
        return ProxyError(
            f"the proxy answered {status} {phrase}: it refused the credentials", status
        )
    return ProxyError(f"the proxy answered {status} {phrase}".rstrip(), status)


def _phrase(status: int) -> str:
    # The standard phrase, not the proxy's: its reason text is not ours to repeat.
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _kind(err: h11.RemoteProtocolError) -> str:
    if err.error_status_hint == 431:
        return f"its headers exceed {MAX_HEADERS} bytes"
    return "malformed"
