"""The REST endpoints a gateway client needs, answered the way Discord answers them.

A client asks ``GET /gateway/bot`` for the URL, the recommended shard count
and its session start budget before it connects. This module maps a request
(method, path, Authorization header) to a status and a JSON body; the server
module does the HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["API_PREFIX", "route"]

API_PREFIX = "/api/v10"
# What other client libraries (discord.py) ask for when they log in.
_LOGIN_PATHS = frozenset({f"{API_PREFIX}/users/@me", f"{API_PREFIX}/oauth2/applications/@me"})


def _error(status: int, phrase: str) -> tuple[int, dict[str, Any]]:
    return status, {"message": f"{status}: {phrase}", "code": 0}


def route(
    method: str, path: str, authorization: str | None, gateway: Gateway
) -> tuple[int, dict[str, Any]]:
    """Answer one REST request.

    Args:
        method: the HTTP method.
        path: the request path without the query string.
        authorization: the Authorization header, if sent.
        gateway: whose URL and session start budget to report.

    Returns:
        ``(status, body)``; errors have Discord's ``{"message", "code"}`` shape.
    """
    path = path.rstrip("/")
    if path == f"{API_PREFIX}/gateway/bot":
        if method != "GET":
            return _error(405, "Method Not Allowed")
        # Discord wants "Bot <token>" here; a bare token is a user token and fails.
        if authorization is None or not authorization.startswith("Bot "):
            return _error(401, "Unauthorized")
        if not gateway.token_ok(authorization):
            return _error(401, "Unauthorized")
        return 200, {
            "url": gateway.url,
            "shards": gateway.config.recommended_shards,
            "session_start_limit": gateway.session_start_limit(),
        }
    if path == f"{API_PREFIX}/gateway":
        if method != "GET":
            return _error(405, "Method Not Allowed")
        return 200, {"url": gateway.url}
    if gateway.config.login_endpoints and path in _LOGIN_PATHS:
        if method != "GET":
            return _error(405, "Method Not Allowed")
        if authorization is None or not gateway.token_ok(authorization):
            return _error(401, "Unauthorized")
        if path == f"{API_PREFIX}/users/@me":
            return 200, gateway.bot_user()
        return 200, gateway.application()
    return _error(404, "Not Found")
