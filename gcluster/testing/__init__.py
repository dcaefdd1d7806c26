"""Test support: `GatewaySimulator`, a local Discord gateway to run clients against.

The simulator is a real server (websocket gateway and REST on one port) that
follows Discord's v10 rules and is scripted by the test: events to send,
faults to inflict, and records of everything it saw. `event_number` reads the
per-shard number `GatewaySimulator.send_events` gives each event;
`gcluster.testing.payloads` builds realistic dispatch bodies;
`make_certificates` makes a throwaway CA and server certificate for running
the simulator over TLS. For benchmarks, `GatewaySimulator.blast` and
`send_paced` send pre-encoded varied traffic (`gcluster.testing.traffic`), and
``python -m gcluster.testing serve`` runs a simulator in its own process,
driven by `SimulatorProcess`, so it has a core of its own (and so a
`gcluster.ThreadedCluster` can be tested against it). docs/testing.rst ("Testing your
bot") shows both in use.
"""

from __future__ import annotations

from . import faults, payloads, records, tls, traffic
from .blast import Blast
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
from .payloads import due_offset, event_number
from .process import SimulatorProcess
from .records import (
    BlastRecord,
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
    Traffic,
    ViolationRecord,
    WithheldRecord,
)
from .simulator import GatewaySimulator, PacedSend
from .streams import STREAM_INTENTS, STREAM_KINDS
from .tls import CertificateError, TestCertificates, make_certificates

__all__ = [
    "STREAM_INTENTS",
    "STREAM_KINDS",
    "Blast",
    "BlastRecord",
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
    "PacedSend",
    "Reconnect",
    "Records",
    "RefusalRecord",
    "RefuseConnections",
    "RequestHeartbeat",
    "RequestRecord",
    "ResumeRecord",
    "SessionInfo",
    "SimulatorProcess",
    "Stall",
    "StopHeartbeatAcks",
    "TestCertificates",
    "Traffic",
    "UnknownOpcode",
    "ViolationRecord",
    "WithheldRecord",
    "due_offset",
    "event_number",
    "faults",
    "make_certificates",
    "payloads",
    "records",
    "tls",
    "traffic",
]
