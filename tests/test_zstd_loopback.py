"""zstd-stream transport compression: what it adds to zlib-stream's guarantees.

Those guarantees (every event exactly once, in order, and a RESUME that loses
nothing) are tested once for both transports in test_cluster_loopback.py
(`each_transport`); here is what the switch is for, fewer bytes on the wire,
and its bounded inflation.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TIMEOUT, collect, has_numbers, numbers

from gcluster import Cluster, Intents, ShardScheme
from gcluster.backends import Backend
from gcluster.testing import STREAM_INTENTS, GatewaySimulator
from gcluster.testing.wire import compressor_for

pytestmark = pytest.mark.extras  # the zstd extra; `zstd` runs each library in turn

MakeSim = Callable[..., GatewaySimulator]
SHARDS = 4


def make_cluster(sim: GatewaySimulator, **options: object) -> Cluster:
    options.setdefault("compression", "zstd-stream")
    return Cluster(sim.token, Intents.GUILDS | STREAM_INTENTS, api_base=sim.api_base, **options)


def test_zstd_puts_fewer_bytes_on_the_wire_than_zlib(make_sim: MakeSim, zstd: Backend) -> None:
    # The same shard's same varied traffic, once over each transport.
    per_event: dict[str, float] = {}
    for compression in ("zlib-stream", "zstd-stream"):
        sim = make_sim(shards=1)
        cluster = make_cluster(sim, compression=compression, shard_scheme=ShardScheme.range([0], 1))
        try:
            cluster.up(timeout=TIMEOUT)
            assert cluster.wait_until_ready(TIMEOUT)
            blast = sim.blast(0, 2_000)
            received = collect(cluster.events(), has_numbers([0], 2_000))
            assert numbers(received, 0) == list(range(1, 2_001))
            record = blast.wait(TIMEOUT)
            assert record is not None and record.written == 2_000
            (connection,) = sim.records.connections
            assert connection.compression == compression
            traffic = sim.records.traffic[connection.id]
            assert traffic.wire_bytes >= record.wire_bytes
            per_event[compression] = record.wire_bytes / record.events
            # Compressed, but not implausibly: real gateway traffic shrinks 3-6x.
            assert 3.0 < record.payload_bytes / record.wire_bytes < 7.0
        finally:
            cluster.down()
    assert per_event["zstd-stream"] < per_event["zlib-stream"], per_event


def test_a_zstd_bomb_is_refused_while_inflating_not_after(zstd: Backend) -> None:
    from gcluster.inflate import MessageTooLarge, ZstdStreamInflater

    limit = 1 << 20
    compress = compressor_for("zstd-stream")
    assert compress is not None
    normal = compress(b'{"op":11}')
    bomb = compress(b"\x00" * (256 << 20))
    inflater = ZstdStreamInflater(max_size=limit)
    assert inflater.backend == zstd
    assert inflater.feed(normal) == b'{"op":11}'
    with pytest.raises(MessageTooLarge):
        inflater.feed(bomb)
    # It stopped within a slice of the limit, not after inflating 256 MiB.
    assert inflater.decompressed_bytes < 4 * limit
