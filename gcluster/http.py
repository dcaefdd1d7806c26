"""The REST calls a cluster needs before it connects: GET /gateway/bot.

requests is blocking; `call_blocking` makes only the calling greenlet wait,
never the hub (and with it every shard's heartbeat). requests' exceptions stop here
and leave as `ClusterStartError` or `AuthenticationFailed`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import requests

from gcluster._blocking import call_blocking
from gcluster._token import Token
from gcluster._urls import websocket_url
from gcluster.errors import AuthenticationFailed, ClusterStartError, ClusterStartErrorType

__all__ = ["DEFAULT_API_BASE", "GatewayBot", "SessionStartLimit", "get_gateway_bot"]

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://discord.com/api/v10"


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


def get_gateway_bot(api_base: str, token: Token, *, timeout: float = 10.0) -> GatewayBot:
    """Ask Discord for the gateway URL, the recommended shard count and the identify limits.

    Raises:
        AuthenticationFailed: Discord refused the token (401).
        ClusterStartError: any other failure (kind RETRIEVING_GATEWAY_INFO).
    """
    url = api_base.rstrip("/") + "/gateway/bot"
    headers = {"Authorization": token.authorization, "User-Agent": "DiscordBot (gcluster)"}
    try:
        # Not redirected: requests would carry the Authorization header along
        # to wherever a Location pointed on the same host, plaintext included.
        response = call_blocking(
            requests.get, url, headers=headers, timeout=timeout, allow_redirects=False
        )
    except requests.RequestException as err:
        raise _start_error(f"GET {url} failed: {err}", token) from err
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


def _gateway_url_ok(value: object, api_base: str) -> bool:
    # The token goes there in IDENTIFY: a ws:// gateway only from a plain-HTTP API.
    return websocket_url(value, secure=api_base.startswith("https:")) is not None


def _start_error(message: str, token: Token) -> ClusterStartError:
    return ClusterStartError(
        token.redact(message), kind=ClusterStartErrorType.RETRIEVING_GATEWAY_INFO
    )
