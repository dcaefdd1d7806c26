"""Which websocket URLs the client connects to.

The token goes to a gateway URL in IDENTIFY or RESUME, so a URL learnt from
the network (GET /gateway/bot, READY's resume_gateway_url) must be a websocket
URL with a host and never weaker than what it came from. One check for all of
them, and for the URL the transport is asked to open.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

__all__ = ["websocket_url"]


def websocket_url(url: object, *, secure: bool) -> SplitResult | None:
    """`url` split, if it is a ws:// or wss:// URL with a host (wss:// when `secure`)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # an unparsable host, e.g. "[::1"
        return None
    if parts.scheme not in ("ws", "wss") or not host:
        return None
    if secure and parts.scheme != "wss":
        return None
    return parts
