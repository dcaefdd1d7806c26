"""gcluster: Discord gateway shards for synchronous Python, on gevent.

The twilight-gateway `Cluster` API with greenlets in place of async tasks::

    cluster = Cluster(token, Intents.GUILD_MESSAGES)
    cluster.up()
    for shard_id, event in cluster.events():
        ...
"""

from __future__ import annotations

import logging

from gcluster.cluster import Cluster
from gcluster.commands import (
    Activity,
    ActivityType,
    Command,
    RequestChannelInfo,
    RequestGuildMembers,
    RequestSoundboardSounds,
    Status,
    UpdatePresence,
    UpdateVoiceState,
    shard_for_guild,
)
from gcluster.config import ClusterBuilder, ClusterConfig, ClusterOptions
from gcluster.dispatch import Dispatcher, DispatcherStats
from gcluster.errors import (
    AuthenticationFailed,
    ClusterCommandError,
    ClusterCommandErrorType,
    ClusterNotUp,
    ClusterStartError,
    ClusterStartErrorType,
    CommandSendingError,
    ConfigError,
    ConnectionFailed,
    DisallowedIntents,
    EventStreamBusy,
    GatewayClosedError,
    GClusterError,
    HubThreadStopped,
    InvalidApiVersion,
    InvalidCommand,
    InvalidIntents,
    InvalidShard,
    InvalidState,
    MembersRateLimited,
    MembersRequestError,
    MembersRequestLost,
    MembersTimeout,
    PayloadTooLarge,
    QueueError,
    SessionStartLimitExhausted,
    SessionStoreError,
    ShardingRequired,
    ShardNonexistent,
    ShardSchemeError,
    ThreadedClusterTimeout,
)
from gcluster.events import Event, EventType, EventTypeFlags
from gcluster.intents import Intents
from gcluster.interface import GatewayCluster, GatewayShard
from gcluster.members import GuildMembers
from gcluster.message import Message
from gcluster.protocol import Latency, ResumeSession, Stage
from gcluster.proxy import Proxy
from gcluster.queue import ConfigurableQueue, HttpQueue, LocalQueue, NoOpQueue, Queue
from gcluster.scheme import ShardScheme
from gcluster.sessions import MemorySessionStore, SessionStore
from gcluster.shard import Information, Shard
from gcluster.threaded import ThreadedCluster, ThreadedClusterBuilder, ThreadedShard

__version__ = "0.2.0"

__all__ = [
    "Activity",
    "ActivityType",
    "AuthenticationFailed",
    "Cluster",
    "ClusterBuilder",
    "ClusterCommandError",
    "ClusterCommandErrorType",
    "ClusterConfig",
    "ClusterNotUp",
    "ClusterOptions",
    "ClusterStartError",
    "ClusterStartErrorType",
    "Command",
    "CommandSendingError",
    "ConfigError",
    "ConfigurableQueue",
    "ConnectionFailed",
    "DisallowedIntents",
    "Dispatcher",
    "DispatcherStats",
    "Event",
    "EventStreamBusy",
    "EventType",
    "EventTypeFlags",
    "GClusterError",
    "GatewayClosedError",
    "GatewayCluster",
    "GatewayShard",
    "GuildMembers",
    "HttpQueue",
    "HubThreadStopped",
    "Information",
    "Intents",
    "InvalidApiVersion",
    "InvalidCommand",
    "InvalidIntents",
    "InvalidShard",
    "InvalidState",
    "Latency",
    "LocalQueue",
    "MembersRateLimited",
    "MembersRequestError",
    "MembersRequestLost",
    "MembersTimeout",
    "MemorySessionStore",
    "Message",
    "NoOpQueue",
    "PayloadTooLarge",
    "Proxy",
    "Queue",
    "QueueError",
    "RequestChannelInfo",
    "RequestGuildMembers",
    "RequestSoundboardSounds",
    "ResumeSession",
    "SessionStartLimitExhausted",
    "SessionStore",
    "SessionStoreError",
    "Shard",
    "ShardNonexistent",
    "ShardScheme",
    "ShardSchemeError",
    "ShardingRequired",
    "Stage",
    "Status",
    "ThreadedCluster",
    "ThreadedClusterBuilder",
    "ThreadedClusterTimeout",
    "ThreadedShard",
    "UpdatePresence",
    "UpdateVoiceState",
    "shard_for_guild",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
