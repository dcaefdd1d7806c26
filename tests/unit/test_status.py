"""The status rules without a cluster: health, readiness, rates, history, page."""

from __future__ import annotations

import pytest

from gcluster.errors import ConfigError
from gcluster.protocol import Latency, Stage
from gcluster.shard import Information
from gcluster.status import History, events_rate, health, readiness, shard_row
from gcluster.web import status_page

C, D, F = Stage.CONNECTED, Stage.DISCONNECTED, Stage.FATALLY_CLOSED


def test_health_fails_only_when_down_or_every_shard_is_closed_for_good() -> None:
    assert health(started=False, stopped=False, stages=[]).reason == "starting"
    assert health(started=True, stopped=False, stages=[C, D, F]).alive
    assert not health(started=True, stopped=False, stages=[F, F]).alive
    assert health(started=True, stopped=True, stages=[C]).reason == "the cluster was shut down"


def test_readiness_names_every_shard_not_connected() -> None:
    ready = readiness(started=True, stopped=False, stages={2: D, 0: C, 1: F})
    assert not ready.ready
    assert ready.not_ready == ((1, "fatally_closed"), (2, "disconnected"))
    assert ready.to_dict()["not_ready"] == [
        {"shard": 1, "stage": "fatally_closed"},
        {"shard": 2, "stage": "disconnected"},
    ]
    assert readiness(started=True, stopped=False, stages={0: C, 1: C}).ready
    # All shards removed: ready, as wait_until_ready says.
    assert readiness(started=True, stopped=False, stages={}).ready
    assert not readiness(started=False, stopped=False, stages={}).ready
    assert not readiness(started=True, stopped=True, stages={0: C}).ready
    standby = readiness(started=False, stopped=False, stages={}, waiting_for="standby")
    assert standby.reason == "standby"


def test_events_rate_never_goes_negative() -> None:
    assert events_rate({0: 10, 1: 10}, {0: 30, 1: 20}, 2.0) == 15.0
    # Shard 2 added since (counts from 0); shard 1 removed and added again.
    assert events_rate({0: 10, 1: 50}, {0: 10, 1: 4, 2: 6}, 1.0) == 10.0
    assert events_rate({0: 10}, {}, 1.0) == 0.0
    assert events_rate({}, {0: 5}, 0.0) == 0.0


def test_history_is_a_bounded_ring() -> None:
    history = History(3)
    for n in range(5):
        history.add(float(n), n * 1.25, None if n == 4 else n * 10.0)
    assert history.to_dict() == {
        "t": [2.0, 3.0, 4.0],
        "events_per_s": [2.5, 3.8, 5.0],
        "latency_ms": [20.0, 30.0, None],
    }
    with pytest.raises(ConfigError):
        History(1)


def test_shard_row_takes_the_latest_round_trip() -> None:
    info = Information(
        id=3,
        stage=C,
        latency=Latency(average=0.05, heartbeats=2, recent=(0.04, 0.0421)),
        session_id="s",
        sequence=9,
        resume_url=None,
        ratelimit=None,
        error=None,
    )
    assert shard_row(info, 7) == {
        "id": 3,
        "stage": "connected",
        "latency_ms": 42.1,
        "events": 7,
        "sequence": 9,
        "error": None,
    }


def test_page_is_one_string_with_nothing_loaded_from_elsewhere() -> None:
    page = status_page(2.0)
    assert "src=" not in page and "href=" not in page and "@import" not in page
    assert "data-refresh='2.0'" in page
    # The page never puts data into HTML: only textContent.
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page
