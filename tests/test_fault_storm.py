"""A short fault storm; `benchmarks/fault_storm.py` runs the long one (50,000+ events)."""

from __future__ import annotations

from gcluster.testing.storm import run_storm


def test_eight_shards_through_a_storm_of_resumable_faults_lose_and_repeat_nothing() -> None:
    result = run_storm(shards=8, events_per_shard=1500, fault_every=300, seed=7)
    assert result.struck >= 20
    # Faults that hit a live connection make the shard resume (a zombie or a
    # stall may be overtaken by another fault first).
    assert result.resumes >= result.struck // 2
    assert result.identifies == 8  # never a new session
    assert result.lost == {shard_id: [] for shard_id in range(8)}
    assert result.duplicated == {shard_id: [] for shard_id in range(8)}
    assert result.out_of_order == dict.fromkeys(range(8), 0)
    assert result.exactly_once and result.delivered == 8 * 1500
