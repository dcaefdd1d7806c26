"""Stream replies in one shape, and the re-export of `call` (see gcluster._blocking)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gcluster._blocking import call_blocking as call

__all__ = ["call", "stream_reply"]


def stream_reply(reply: Any) -> Iterable[tuple[Any, Any]]:
    """`(key, entries)` pairs of an XREAD/XREADGROUP reply, whichever shape redis-py gave it."""
    if not reply:
        return ()
    if isinstance(reply, dict):
        return reply.items()
    return [(item[0], item[1]) for item in reply]
