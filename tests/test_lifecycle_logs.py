"""The operator's log against the simulator: one line per step the gateway saw happen.

These log lines are the feature (an operator verifies a deploy from them),
so they are read with caplog; what really happened comes from the
simulator's records: one "identifying" and one "ready" line per IDENTIFY it
accepted, one "resumed" line per RESUME it answered with RESUMED.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
from conftest import TIMEOUT, wait_for

from gcluster import Cluster, Intents, Shard, ShardScheme
from gcluster.logstats import Reporter
from gcluster.testing import STREAM_INTENTS, GatewaySimulator

MakeSim = Callable[..., GatewaySimulator]


def steps(caplog: pytest.LogCaptureFixture, step: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "step", None) == step]


def test_each_step_of_a_shards_sessions_is_one_line_with_its_facts(
    make_sim: MakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gcluster")
    # No identify spacing: every IDENTIFY sent is one the simulator accepts.
    sim = make_sim(shards=1, identify_interval=0)
    shard = Shard(0, 1, sim.token, STREAM_INTENTS, gateway_url=sim.url)
    shard.start()
    records = sim.records
    try:
        assert shard.wait_until_ready(TIMEOUT)
        sim.send_events(0, 5)
        wait_for(lambda: shard.info().sequence == 6)

        # op 7, then a resumable close: each a RESUME the gateway answers.
        sim.reconnect_shard(0)
        wait_for(lambda: len([r for r in records.resumes if r.ok]) == 1)
        assert shard.wait_until_ready(TIMEOUT)
        wait_for(lambda: len(steps(caplog, "resumed")) == 1)
        sim.close_shard(0, 4000, "test close")
        wait_for(lambda: len([r for r in records.resumes if r.ok]) == 2)
        wait_for(lambda: len(steps(caplog, "resumed")) == 2)
        # op 9 not resumable: the session ends, a new IDENTIFY follows.
        sim.invalidate_session(0, resumable=False)
        wait_for(lambda: len(records.identifies) == 2)
        wait_for(lambda: len(steps(caplog, "ready")) == 2)
    finally:
        shard.down()

    identifies = records.identifies
    resumed = [r for r in records.resumes if r.ok]
    assert len(steps(caplog, "identifying")) == len(identifies) == 2
    assert len(steps(caplog, "ready")) == len(identifies)
    assert len(steps(caplog, "resuming")) == len(records.resumes) == 2
    assert len(steps(caplog, "resumed")) == len(resumed) == 2
    # A resumed line names the sequence the RESUME carried.
    assert [r.sequence for r in steps(caplog, "resumed")] == [r.seq for r in resumed]
    (invalidated,) = steps(caplog, "invalidated")
    assert invalidated.resumable is False  # type: ignore[attr-defined]
    assert "session invalidated (op 9, not resumable)" in invalidated.getMessage()

    disconnected = steps(caplog, "disconnected")
    facts = [(r.code, r.by, r.cause) for r in disconnected]  # type: ignore[attr-defined]
    assert (4000, "gateway", "gateway_close") in facts
    assert (4000, "client", "reconnect_requested") in facts  # op 7: this side closes
    assert facts[-1] == (1000, "client", "shutdown")
    assert disconnected[-1].getMessage().endswith("; stopped")
    assert re.search(r"; will resume in \d+\.\d s$", disconnected[0].getMessage())

    # Every line carries the shard, and neither the token nor a whole session id.
    lifecycle = [r for r in caplog.records if hasattr(r, "step")]
    assert all(r.shard == 0 for r in lifecycle)  # type: ignore[attr-defined]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert sim.token not in text
    for identify in identifies:
        assert identify.session_id not in text
        assert identify.session_id[:6] + "…" in text
    assert all(r.exc_info is None for r in caplog.records)


def test_a_refused_connection_is_one_warning_without_a_traceback(
    make_sim: MakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gcluster")
    sim = make_sim(shards=1)
    sim.refuse_connections(1)
    shard = Shard(0, 1, sim.token, STREAM_INTENTS, gateway_url=sim.url, rng=lambda: 0.0)
    shard.start()
    try:
        assert shard.wait_until_ready(TIMEOUT)
    finally:
        shard.down()
    failed = steps(caplog, "connect_failed")
    assert len(failed) == 1
    assert failed[0].levelno == logging.WARNING
    assert failed[0].exc_info is None
    assert "retrying in" in failed[0].getMessage()
    assert len(steps(caplog, "ready")) == len(sim.records.identifies) == 1


def test_start_up_progress_then_stats_lines(
    make_sim: MakeSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gcluster")
    sim = make_sim(shards=3, max_concurrency=3)
    cluster = Cluster(
        sim.token,
        Intents.GUILDS | STREAM_INTENTS,
        api_base=sim.api_base,
        shard_scheme=ShardScheme.range(range(3), 3),
        proxy=False,
    )
    reporter = Reporter(cluster, 0.2, extra=lambda: "extra part").start()
    try:
        cluster.up(timeout=TIMEOUT)
        wait_for(lambda: steps(caplog, "stats"))
    finally:
        reporter.stop()
        cluster.down()
    progress = steps(caplog, "progress")
    # One line per change of the count, the last one with every shard ready.
    counts = [r.ready for r in progress]  # type: ignore[attr-defined]
    assert counts == sorted(set(counts))
    assert progress[-1].getMessage().startswith("3/3 shards ready after ")
    assert all(r.shards == 3 for r in progress)  # type: ignore[attr-defined]
    stats = steps(caplog, "stats")[0].getMessage()
    assert stats.startswith("stats: ")
    assert "shards: 3 connected; backlog " in stats
    assert stats.endswith("; 0 reconnects; extra part")
