"""The REST calls a cluster needs before it connects: GET /gateway/bot.

requests is blocking; `call_blocking` makes only the calling greenlet wait,
never the hub (and with it every shard's heartbeat). requests' exceptions stop here
and leave as `ClusterStartError` or `AuthenticationFailed`.

The proxy is chosen by `proxy.resolve_proxy`, as the websocket's is, and
handed to requests explicitly, with the environment's proxies switched off,
so the two never disagree (``proxy=False`` means no proxy here too). An
https:// API is reached through the proxy's CONNECT tunnel; a plain http://
one would be forwarded with the token in its headers, in clear, to the proxy,
so that is refused.

The gateway's answer is a few hundred bytes, and a server that sends more,
or sends it slowly, is not Discord's: the whole call (connect, headers, body)
has one deadline, `timeout`, and the body is read raw (never decompressed)
up to `MAX_BODY` bytes.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

import gevent
import requests

from gcluster._blocking import call_blocking
from gcluster._token import Token
from gcluster._urls import websocket_url
from gcluster.errors import AuthenticationFailed, ClusterStartError, ClusterStartErrorType
from gcluster.proxy import Proxy, refusal, resolve_proxy

__all__ = ["DEFAULT_API_BASE", "GatewayBot", "SessionStartLimit", "get_gateway_bot"]

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://discord.com/api/v10"
_TUNNEL_REFUSED: Final = re.compile(r"Tunnel connection failed: (\d{3})\b")
# Discord's answer is under 300 bytes; a body past this is refused unread.
MAX_BODY: Final = 64 * 1024


class _BodyTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Answer:
    """What `_fetch` read: the status, the headers and the body, whole and bounded."""

    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _fetch(url: str, **options: Any) -> _Answer:
    """GET `url` with requests' `options`, reading at most `MAX_BODY` bytes of the body.

    The body is taken as sent: asked for uncompressed (Accept-Encoding:
    identity), a compressed one fails as JSON rather than being inflated.

    Raises:
        requests.RequestException: the request failed.
        _BodyTooLarge: the body is longer than `MAX_BODY`.
    """
    with requests.get(url, stream=True, **options) as response:
        body = bytearray()
        for chunk in response.raw.stream(16 * 1024, decode_content=False):
            body += chunk
            if len(body) > MAX_BODY:
                raise _BodyTooLarge
        return _Answer(response.status_code, dict(response.headers), bytes(body))


@dataclass(frozen=True, slots=True)
class SessionStartLimit:
    """How many IDENTIFYs the bot may still spend today, and how fast.

    Attributes:
        total: session starts allowed per day.
        remaining: session starts left.
        reset_after: seconds until `remaining` is refilled.
        max_concurrency: identify buckets that may start in parallel.
    """

    total: int
    remaining: int
    reset_after: float
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class GatewayBot:
    """The answer of GET /gateway/bot."""

    url: str
    shards: int
    session_start_limit: SessionStartLimit


def get_gateway_bot(
    api_base: str, token: Token, *, timeout: float = 10.0, proxy: Proxy | str | bool | None = None
) -> GatewayBot:
    """Ask Discord for the gateway URL, the recommended shard count and the identify limits.

    Args:
        proxy: a `Proxy`, False for none, or None to follow HTTPS_PROXY/NO_PROXY.

    Raises:
        AuthenticationFailed: Discord refused the token (401).
        ClusterStartError: any other failure (kind RETRIEVING_GATEWAY_INFO),
            a proxy's refusal included, or a proxy chosen for an http:// API.
    """
    url = api_base.rstrip("/") + "/gateway/bot"
    headers = {
        "Authorization": token.authorization,
        "User-Agent": "DiscordBot (gcluster)",
        "Accept-Encoding": "identity",
    }
    try:
        chosen = resolve_proxy(proxy, url)
    except ValueError as err:  # a bad proxy in the environment; never the credentials
        raise _start_error(f"GET {url}: {err}", token) from None
    where = url
    if chosen is not None:
        if not url.startswith("https://"):
            raise _start_error(
                f"GET {url} through the proxy {chosen.display} would show the token to the "
                "proxy in clear (a plain http:// request is forwarded, not tunnelled): use an "
                "https:// api_base, or reach it directly with proxy=False or NO_PROXY",
                token,
            )
        where = f"{url} through the proxy {chosen.display}"
    try:
        # Not redirected: requests would carry the Authorization header along
        # to wherever a Location pointed on the same host, plaintext included.
        # One deadline for the whole call: requests' timeout bounds each socket
        # operation only, so a server dripping a byte at a time would never end it.
        response: _Answer | None = None
        with gevent.Timeout(timeout, False):
            response = call_blocking(
                _fetch,
                url,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                proxies=_proxies(chosen),
            )
        if response is None:
            raise _start_error(f"GET {where} gave no whole answer within {timeout:g} s", token)
    except _BodyTooLarge:
        raise _start_error(
            f"GET {where} answered with a body over {MAX_BODY} bytes", token
        ) from None
    except requests.RequestException as err:
        if chosen is None:
            raise _start_error(f"GET {where} failed: {err}", token) from err
        # Without the cause, on purpose: requests' text may quote the proxy URL.
        raise _start_error(
            chosen.redact(f"GET {where} failed: {_through(err, chosen)}"), token
        ) from None
    if response.status_code == 401:
        raise AuthenticationFailed(None, reason=f"GET {url} answered 401: the token was refused")
    if response.status_code != 200:
        location = response.headers.get("Location")
        where = f" (Location: {location}; not followed)" if location else ""
        raise _start_error(f"GET {url} answered {response.status_code}{where}", token)
    try:
        body = response.json()
        limit = body["session_start_limit"]
        gateway = body["url"]
        if not _gateway_url_ok(gateway, api_base):
            raise _start_error(f"GET {url} gave an unusable gateway url {gateway!r}", token)
        return GatewayBot(
            url=gateway,
            shards=int(body["shards"]),
            session_start_limit=SessionStartLimit(
                total=int(limit["total"]),
                remaining=int(limit["remaining"]),
                reset_after=float(limit["reset_after"]) / 1000.0,
                max_concurrency=int(limit.get("max_concurrency", 1)),
            ),
        )
    except (ValueError, KeyError, TypeError) as err:
        # Without the cause, on purpose: it would quote the body's values
        # unredacted (a proxy may echo the Authorization header); the message
        # carries it through Token.redact.
        raise _start_error(f"GET {url} gave an unexpected body ({err!r})", token) from None


def _through(err: requests.RequestException, chosen: Proxy) -> str:
    """What went wrong through the proxy, worded as the websocket's failures are."""
    # urllib3 reports a refused CONNECT only in text ("Tunnel connection failed: 407 ...").
    found = _TUNNEL_REFUSED.search(str(err))
    if isinstance(err, requests.exceptions.ProxyError) and found is not None:
        return str(refusal(int(found.group(1)), chosen))
    return str(err)


def _proxies(chosen: Proxy | None) -> dict[str, str | None]:
    """requests' `proxies` for the one proxy chosen, or for none.

    requests merges the environment's proxies into the keys left unset, and
    drops the keys set to None after that merge: so None for every key a
    proxy variable can fill turns the environment's proxies off.
    """
    if chosen is None:
        return {"http": None, "https": None, "all": None}
    return {"http": chosen.url, "https": chosen.url}


def _gateway_url_ok(value: object, api_base: str) -> bool:
    # The token goes there in IDENTIFY: a ws:// gateway only from a plain-HTTP API.
    return websocket_url(value, secure=api_base.startswith("https:")) is not None


def _start_error(message: str, token: Token) -> ClusterStartError:
    return ClusterStartError(
        token.redact(message), kind=ClusterStartErrorType.RETRIEVING_GATEWAY_INFO
    )
