"""zstd-stream transport compression, end to end: a cluster against the simulator.

The same guarantees as zlib-stream (every event exactly once, in order, and a
RESUME that loses nothing), over one zstd stream per connection flushed after
each message, plus what the switch is for: fewer bytes on the wire.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import TIMEOUT, assert_exactly_once_in_order, collect, has_numbers, numbers

from gcluster import Cluster, Intents, ShardScheme
from gcluster.testing import STREAM_INTENTS, CloseConnection, GatewaySimulator

pytestmark = pytest.mark.extras  # zstandard is the zstd extra

MakeSim = Callable[..., GatewaySimulator]
SHARDS = 4


def make_cluster(sim: GatewaySimulator, **options: object) -> Cluster:
    options.setdefault("compression", "zstd-stream")
    return Cluster(sim.token, Intents.GUILDS | STREAM_INTENTS, api_base=sim.api_base, **options)


@pytest.fixture
def sim(make_sim: MakeSim) -> GatewaySimulator:
    return make_sim(shards=SHARDS, max_concurrency=SHARDS)


@pytest.fixture
def cluster(sim: GatewaySimulator) -> Cluster:
    cluster = make_cluster(sim)
    cluster.up(timeout=TIMEOUT)
    assert cluster.wait_until_ready(TIMEOUT)
    yield cluster
    cluster.down()


def test_every_event_of_every_shard_exactly_once_in_order(
    sim: GatewaySimulator, cluster: Cluster
) -> None:
    for shard_id in range(SHARDS):
        sim.send_events(shard_id, 300)
    received = collect(cluster.events(), has_numbers(range(SHARDS), 300))
    assert_exactly_once_in_order(received, range(SHARDS), 300)
    assert [c.compression for c in sim.records.connections] == ["zstd-stream"] * SHARDS
    assert [c.query["compress"] for c in sim.records.connections] == ["zstd-stream"] * SHARDS


def test_close_4000_resumes_on_a_new_zstd_stream_and_loses_nothing(
    sim: GatewaySimulator, cluster: Cluster
) -> None:
    sim.send_events(1, 100)
    collect(cluster.events(), has_numbers([1], 100))
    assert sim.apply_fault(1, CloseConnection(code=4000, reason="testing")) == 1
    # Sent while the shard is away: kept in the session and replayed on RESUME,
    # compressed by the new connection's own zstd stream.
    sim.send_events(1, 100)
    received = collect(cluster.events(), has_numbers([1], 200))
    assert numbers(received, 1) == list(range(101, 201))
    assert sim.wait_until(lambda: any(r.ok for r in sim.records.resumes), timeout=TIMEOUT)
    (resume,) = sim.records.resumes
    assert resume.shard_id == 1 and resume.ok and resume.replayed >= 1
    assert len(sim.records.identifies) == SHARDS  # no new session
    (resumed_on,) = [c for c in sim.records.connections if c.id == resume.connection_id]
    assert resumed_on.path.startswith("/resume") and resumed_on.compression == "zstd-stream"
    assert [c.code for c in sim.records.closes if c.initiator == "server"] == [4000]


def test_zstd_puts_fewer_bytes_on_the_wire_than_zlib(make_sim: MakeSim) -> None:
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


def test_a_zstd_bomb_is_refused_while_inflating_not_after() -> None:
    import zstandard

    from gcluster.inflate import MessageTooLarge, ZstdStreamInflater

    limit = 1 << 20
    compressor = zstandard.ZstdCompressor().compressobj()
    normal = compressor.compress(b'{"op":11}') + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    bomb = compressor.compress(b"\x00" * (256 << 20))
    bomb += compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    inflater = ZstdStreamInflater(max_size=limit)
    assert inflater.feed(normal) == b'{"op":11}'
    with pytest.raises(MessageTooLarge):
        inflater.feed(bomb)
    # It stopped within a slice of the limit, not after inflating 256 MiB.
    assert inflater.decompressed_bytes < 4 * limit
