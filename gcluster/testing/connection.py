"""One client's gateway connection: decode each message and decide what it may do.

Discord answers a client by opcode and by where the connection stands (not
yet authenticated, identified or resumed); a broken rule closes the connection
with a specific code. This module is that dispatch table, per connection;
what an accepted IDENTIFY or RESUME does to sessions is the `Gateway`'s.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING

import ujson

from .rules import (
    CLIENT_COMMAND_OPS,
    COMMAND_LIMIT,
    COMMAND_WINDOW,
    MAX_PAYLOAD_BYTES,
    Close,
    Op,
    Rejection,
)

if TYPE_CHECKING:
    from .gateway import Gateway, Session
    from .wire import WebSocket

__all__ = ["GatewayConnection"]

_DECODE_ERROR = Rejection(Close.DECODE_ERROR, "Error while decoding payload.")
_UNKNOWN_OPCODE = Rejection(Close.UNKNOWN_OPCODE, "Unknown opcode.")
_NOT_AUTHENTICATED = Rejection(Close.NOT_AUTHENTICATED, "Not authenticated.")
_ALREADY_AUTHENTICATED = Rejection(Close.ALREADY_AUTHENTICATED, "Already authenticated.")
_RATE_LIMITED = Rejection(Close.RATE_LIMITED, "You are being rate limited.")


class GatewayConnection:
    """A websocket a client opened to the gateway, and where it stands.

    Attributes:
        id: the connection's id in the records.
        wire: its websocket.
        shard_id: the shard it identified or resumed as (None before).
        session: the session it serves, if any.
        authenticated: True after an accepted IDENTIFY or RESUME.
        acks_heartbeats: False after a `StopHeartbeatAcks` fault: heartbeats
            are recorded but never answered.
    """

    def __init__(self, connection_id: int, wire: WebSocket, gateway: Gateway) -> None:
        self.id = connection_id
        self.wire = wire
        self.shard_id: int | None = None
        self.session: Session | None = None
        self.authenticated = False
        self.acks_heartbeats = True
        self._gateway = gateway
        # Arrival times of the last COMMAND_LIMIT payloads: the oldest tells
        # whether one more would exceed the limit within the window.
        self._recent: deque[float] = deque(maxlen=COMMAND_LIMIT)

    def __repr__(self) -> str:
        return f"<GatewayConnection id={self.id} shard_id={self.shard_id}>"

    def on_message(self, message: str | bytes) -> None:
        """Handle one complete client message."""
        gateway = self._gateway
        now = time.monotonic()
        recent = self._recent
        if len(recent) == COMMAND_LIMIT and now - recent[0] < COMMAND_WINDOW:
            gateway.violation(self, "ratelimit", shard_id=self.shard_id)
            gateway.reject(self, _RATE_LIMITED)
            return
        recent.append(now)
        size = len(message) if isinstance(message, bytes) else len(message.encode())
        if size > MAX_PAYLOAD_BYTES:
            gateway.reject(self, _DECODE_ERROR)
            return
        try:
            payload = ujson.loads(message)
        except ValueError:
            gateway.reject(self, _DECODE_ERROR)
            return
        if not isinstance(payload, dict) or type(payload.get("op")) is not int:
            gateway.reject(self, _DECODE_ERROR)
            return
        op = payload["op"]
        data = payload.get("d")
        if op == Op.HEARTBEAT:
            # Allowed at any stage: clients start heartbeating right after HELLO.
            gateway.heartbeat(self, data)
        elif op == Op.IDENTIFY or op == Op.RESUME:
            if self.authenticated:
                gateway.reject(self, _ALREADY_AUTHENTICATED)
            elif op == Op.IDENTIFY:
                gateway.identify(self, data)
            else:
                gateway.resume(self, data)
        elif op in CLIENT_COMMAND_OPS:
            if not self.authenticated:
                gateway.reject(self, _NOT_AUTHENTICATED)
            else:
                gateway.command(self, op, data)
        else:
            gateway.reject(self, _UNKNOWN_OPCODE)
