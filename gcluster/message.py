"""Raw websocket messages for `Cluster.send`: close frames, text and binary.

Most code sends gateway commands with `Cluster.command`; `Message` is the
escape hatch twilight offers for the rest, chiefly closing a shard's
connection with a chosen code (1000/1001 end the session, others keep it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gcluster.errors import ConfigError

__all__ = ["Message", "MessageKind"]


class MessageKind(enum.Enum):
    CLOSE = "close"
    TEXT = "text"
    BINARY = "binary"


@dataclass(frozen=True, slots=True)
class Message:
    """One websocket message; build it with `close()`, `text()` or `binary()`."""

    kind: MessageKind
    payload: bytes = b""
    code: int | None = None
    reason: str = ""

    @classmethod
    def close(cls, code: int = 1000, reason: str = "") -> Message:
        """A close frame; the shard reconnects, resuming unless the code is 1000 or 1001."""
        if not (code in (1000, 1001) or 3000 <= code <= 4999):
            raise ConfigError(
                f"close code {code} is not one a client may send (1000, 1001, 3000-4999)"
            )
        if len(reason.encode()) > 123:
            raise ConfigError("a close reason is at most 123 bytes")
        return cls(MessageKind.CLOSE, code=code, reason=reason)

    @classmethod
    def text(cls, text: str) -> Message:
        return cls(MessageKind.TEXT, payload=text.encode())

    @classmethod
    def binary(cls, data: bytes) -> Message:
        return cls(MessageKind.BINARY, payload=bytes(data))
