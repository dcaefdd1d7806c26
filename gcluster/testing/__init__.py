"""Test support: `GatewaySimulator`, a local Discord gateway to run clients against.

The simulator is a real server (websocket gateway and REST on one port) that
follows Discord's v10 rules and is scripted by the test: events to send,
faults to inflict, and records of everything it saw. `event_number` reads the
per-shard number `GatewaySimulator.send_events` gives each event;
`gcluster.testing.payloads` builds realistic dispatch bodies;
`make_certificates` makes a throwaway CA and server certificate for running
the simulator over TLS.
"""

from __future__ import annotations

from . import faults, payloads, records, tls
from .faults import (
    CloseConnection,
    DropConnection,
    ExpireSession,
    Fault,
    FaultPlan,
    GarbageFrame,
    HugeDispatch,
    InvalidateSession,
    Reconnect,
    RefuseConnections,
    RequestHeartbeat,
    Stall,
    StopHeartbeatAcks,
    UnknownOpcode,
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
    RefusalRecord,
    RequestRecord,
    ResumeRecord,
    ViolationRecord,
)
from .simulator import GatewaySimulator
from .streams import STREAM_KINDS
from .tls import CertificateError, TestCertificates, make_certificates

__all__ = [
    "STREAM_KINDS",
    "CertificateError",
    "CloseConnection",
    "CloseRecord",
    "CommandRecord",
    "ConnectionRecord",
    "DispatchRecord",
    "DropConnection",
    "ExpireSession",
    "Fault",
    "FaultPlan",
    "FaultRecord",
    "GarbageFrame",
    "GatewaySimulator",
    "HeartbeatRecord",
    "HugeDispatch",
    "IdentifyRecord",
    "InvalidateSession",
    "Reconnect",
    "Records",
    "RefusalRecord",
    "RefuseConnections",
    "RequestHeartbeat",
    "RequestRecord",
    "ResumeRecord",
    "SessionInfo",
    "Stall",
    "StopHeartbeatAcks",
    "TestCertificates",
    "UnknownOpcode",
    "ViolationRecord",
    "event_number",
    "faults",
    "make_certificates",
    "payloads",
    "records",
    "tls",
]
