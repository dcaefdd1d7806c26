"""Applying faults: what each `faults` value does to a shard's connections and session.

A fault is a value (`faults`); doing it is a few frames sent, connections
closed or dropped and sessions ended, on the sessions `gateway` keeps. It
lives here, apart from that bookkeeping, so the rules of a session read
without the ways a test breaks one; a new kind of fault is a new value in
`faults` and one branch in `_apply_to_shard`. A plan due after a number of
dispatches is counted by `Gateway.after_dispatches`; one due after a delay
is the simulator's timer.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

from . import faults, payloads
from .gateway import INVALID_SESSION, encode
from .records import FaultRecord

if TYPE_CHECKING:
    from .connection import GatewayConnection
    from .gateway import Gateway, ShardState

__all__ = ["apply_fault", "arm"]

HEARTBEAT_REQUEST = '{"t":null,"s":null,"op":1,"d":null}'
RECONNECT = '{"t":null,"s":null,"op":7,"d":null}'
# Not JSON, however it is decoded.
GARBAGE_TEXT = '{"t":"MESSAGE_CREATE","s":'
# After a sync flush the deflate stream is byte-aligned at a block header; 0xff
# there is a block of the reserved type 3, which every inflater rejects. The
# suffix makes it look like a complete zlib-stream message.
GARBAGE_ZLIB = b"\xff" * 8 + b"\x00\x00\xff\xff"


def apply_fault(gateway: Gateway, shard_id: int | None, fault: faults.Fault) -> int:
    """Do ``fault`` to the shard now; returns how many live connections it reached.

    ``shard_id`` may be None only for `faults.RefuseConnections` (the
    simulator refuses a missing shard id before it gets here).
    """
    if isinstance(fault, faults.RefuseConnections):
        gateway.refuse_connections(fault.count)
        connections: list[GatewayConnection] = []
    else:
        assert shard_id is not None
        connections = gateway.live(shard_id)
        _apply_to_shard(gateway, gateway.shard(shard_id), connections, fault)
    gateway.record(
        gateway.records.faults,
        FaultRecord(
            time=time.monotonic(),
            shard_id=shard_id,
            fault=fault,
            connections=len(connections),
        ),
    )
    return len(connections)


def _apply_to_shard(
    gateway: Gateway, shard: ShardState, connections: list[GatewayConnection], fault: faults.Fault
) -> None:
    if isinstance(fault, faults.CloseConnection):
        for conn in connections:
            gateway.server_close(conn, fault.code, fault.reason)
    elif isinstance(fault, faults.DropConnection):
        for conn in connections:
            gateway.detach(conn, end_session=False)
            conn.wire.drop()
    elif isinstance(fault, faults.Reconnect):
        for conn in connections:
            conn.wire.send(RECONNECT)
            # Discord sends nothing more on a connection it asked to leave:
            # later dispatches wait in the session for the RESUME.
            gateway.detach(conn, end_session=False)
    elif isinstance(fault, faults.InvalidateSession):
        if not fault.resumable and shard.session is not None:
            gateway.end_session(shard.session)
        for conn in connections:
            if not fault.resumable:
                # The connection may IDENTIFY again, as after a failed RESUME.
                conn.authenticated = False
            conn.wire.send(INVALID_SESSION[fault.resumable])
    elif isinstance(fault, faults.RequestHeartbeat):
        for conn in connections:
            conn.wire.send(HEARTBEAT_REQUEST)
    elif isinstance(fault, faults.StopHeartbeatAcks):
        for conn in connections:
            conn.acks_heartbeats = False
    elif isinstance(fault, faults.GarbageFrame):
        for conn in connections:
            if fault.kind == "zlib" and conn.wire.compressed:
                conn.wire.send_raw(GARBAGE_ZLIB)
            else:
                conn.wire.send(GARBAGE_TEXT)
    elif isinstance(fault, faults.UnknownOpcode):
        frame = encode({"t": None, "s": None, "op": fault.op, "d": None})
        for conn in connections:
            conn.wire.send(frame)
    elif isinstance(fault, faults.HugeDispatch):
        number = shard.stream.claim_number()
        guild = shard.guilds[number % len(shard.guilds)]
        data = payloads.guild_create(guild, size_bytes=fault.size_bytes)
        data[payloads.NUMBER_KEY] = number
        intents = gateway.intents_for("GUILD_CREATE", data)
        gateway.deliver(shard.id, "GUILD_CREATE", encode(data), number, intents)
    elif isinstance(fault, faults.Stall):
        for conn in connections:
            conn.wire.stall(fault.seconds)
    elif isinstance(fault, faults.ExpireSession):
        if shard.session is not None:
            gateway.end_session(shard.session)
        for conn in connections:
            if fault.code is None:
                conn.wire.drop()
            else:
                conn.wire.close(fault.code, fault.reason)
    else:  # pragma: no cover - the Fault union is closed
        raise TypeError(f"not a fault: {fault!r}")


def arm(gateway: Gateway, plan: faults.FaultPlan) -> None:
    """Apply ``plan``'s fault once its ``after_dispatches`` more dispatches were sent."""
    assert plan.after_dispatches is not None and plan.shard_id is not None
    if plan.after_dispatches == 0:
        apply_fault(gateway, plan.shard_id, plan.fault)
    else:
        gateway.after_dispatches(
            plan.shard_id,
            plan.after_dispatches,
            functools.partial(apply_fault, gateway, plan.shard_id, plan.fault),
        )
