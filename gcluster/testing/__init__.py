"""Test support: `GatewaySimulator`, a local Discord gateway to run clients against.

The simulator is a real server (websocket gateway and REST on one port) that
follows Discord's v10 rules and is scripted by the test: events to send,
faults to inflict, and records of everything it saw. `event_number` reads the
per-shard number `GatewaySimulator.send_events` gives each event;
`gcluster.testing.payloads` builds realistic dispatch bodies.
"""

from __future__ import annotations

from . import faults, payloads, records
from .faults import (
    CloseConnection,
    DropConnection,
    Fault,
    FaultPlan,
    InvalidateSession,
    Reconnect,
    RequestHeartbeat,
)
from .gateway import SessionInfo
from .payloads import event_number
from .records import (
    CloseRecord,
    CommandRecord,
    ConnectionRecord,
    DispatchRecord,
    FaultRecord,
    HeartbeatRecord,
    IdentifyRecord,
    Records,
    RequestRecord,
    ResumeRecord,
)
from .simulator import GatewaySimulator
from .streams import STREAM_KINDS

__all__ = [
    "STREAM_KINDS",
    "CloseConnection",
    "CloseRecord",
    "CommandRecord",
    "ConnectionRecord",
    "DispatchRecord",
    "DropConnection",
    "Fault",
    "FaultPlan",
    "FaultRecord",
    "GatewaySimulator",
    "HeartbeatRecord",
    "IdentifyRecord",
    "InvalidateSession",
    "Reconnect",
    "Records",
    "RequestHeartbeat",
    "RequestRecord",
    "ResumeRecord",
    "SessionInfo",
    "event_number",
    "faults",
    "payloads",
    "records",
]
