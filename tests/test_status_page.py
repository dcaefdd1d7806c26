"""The status page in a real browser (headless Chromium): it loads, shows every shard, follows them.

Marked `extras`: it needs Debian's chromium package, and fails (never skips)
without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from browser import Browser, browser  # noqa: F401 - the fixture
from conftest import TIMEOUT
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from gcluster import Cluster, web
from gcluster.status import Health, History, Readiness
from gcluster.testing import STREAM_INTENTS, GatewaySimulator

pytestmark = pytest.mark.extras

MakeSim = Callable[..., GatewaySimulator]

CELLS = "Array.from(document.querySelectorAll('#grid > div'))"


def stages(page: Browser) -> dict[str, str]:
    value: dict[str, str] = page.evaluate(
        f"Object.fromEntries({CELLS}.map(c => [c.dataset.shard, c.dataset.stage]))"
    )
    return value


def colour(page: Browser, shard_id: int) -> str:
    value: str = page.evaluate(
        f"getComputedStyle(document.querySelector('#grid > div[data-shard=\"{shard_id}\"]'))"
        ".backgroundColor"
    )
    return value


def test_page_shows_every_shard_and_a_disconnected_one_changes_colour(
    make_sim: MakeSim,
    browser: Browser,  # noqa: F811 - the fixture
) -> None:
    sim = make_sim(shards=4, max_concurrency=4, heartbeat_interval=0.2)
    cluster = Cluster(sim.token, STREAM_INTENTS, api_base=sim.api_base, proxy=False)
    server = web.serve(cluster, port=0, interval=0.5, refresh=0.5)
    try:
        cluster.up(timeout=TIMEOUT)
        browser.open(server.url + "/status")
        browser.wait_for(
            f"{CELLS}.length === 4 && {CELLS}.every(c => c.dataset.stage === 'connected')"
        )
        assert stages(browser) == {str(sid): "connected" for sid in range(4)}
        connected = colour(browser, 2)
        assert connected == colour(browser, 0)
        # Every cell has a tooltip naming its shard and stage.
        assert browser.evaluate(f"{CELLS}[2].title").startswith("shard 2: connected")
        # Shard 2 loses its connection and cannot get another for now.
        sim.refuse_connections(1000)
        sim.drop_shard(2)
        browser.wait_for(
            "document.querySelector('#grid > div[data-shard=\"2\"]').dataset.stage !== 'connected'"
        )
        assert colour(browser, 2) != connected
        assert {sid: stage for sid, stage in stages(browser).items() if sid != "2"} == {
            "0": "connected", "1": "connected", "3": "connected"
        }  # fmt: skip
        assert "not ready" in browser.evaluate("document.getElementById('summary').textContent")
    finally:
        server.stop()
        cluster.down()


class _Synthetic:
    """A monitor's answers for 1000 shards in every stage, without a cluster."""

    def __init__(self, count: int) -> None:
        names = ["connected", "identifying", "resuming", "connecting", "disconnected"]
        self.rows = [
            {
                "id": sid,
                "stage": "fatally_closed" if sid == 999 else names[sid % 7 % 5],
                "latency_ms": 40.0,
                "events": sid,
                "sequence": sid,
                "error": None,
            }
            for sid in range(count)
        ]
        self.history = History(60)
        for n in range(60):
            self.history.add(float(n), 1000.0 + 10 * n, 40.0 + n % 5)

    def health(self) -> Health:
        return Health(True, "running")

    def readiness(self) -> Readiness:
        return Readiness(False, "synthetic")

    def snapshot(self) -> dict[str, Any]:
        lease = {"key": "{bot}:lease:process:0/2", "held": True, "holder": "gw-1"}
        groups = {"rows": [{"stream": "bot:events", "group": "workers", "consumers": 2,
                            "pending": 3, "lag": 7}]}  # fmt: skip
        return {
            "time": 0,
            "total": len(self.rows),
            "interval": 2.0,
            "health": {"alive": True, "reason": "running"},
            "ready": {"ready": False, "reason": "synthetic"},
            "backlog": 0,
            "shards": self.rows,
            "history": self.history.to_dict(),
            "service": {"lease": lease, "groups": groups},
        }


@pytest.fixture
def synthetic() -> Iterator[str]:
    app = web.make_app(_Synthetic(1000), refresh=0.5)  # type: ignore[arg-type]
    server = WSGIServer(("127.0.0.1", 0), app, spawn=Pool(8), log=None, error_log=None)
    server.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.stop()


def test_a_thousand_shards_fit_on_a_1280x800_screen(
    synthetic: str,
    browser: Browser,  # noqa: F811 - the fixture
) -> None:
    browser.open(synthetic + "/status")
    browser.wait_for(f"{CELLS}.length === 1000")
    boxes = browser.evaluate(
        f"{CELLS}.map(c => {{ const r = c.getBoundingClientRect();"
        " return [Number(c.dataset.shard), r.left, r.top, r.right, r.bottom]; })"
    )
    assert sorted(box[0] for box in boxes) == list(range(1000))
    for _, left, top, right, bottom in boxes:
        assert 0 <= left and right <= 1280 and 0 <= top and bottom <= 800
        assert right - left >= 8 and bottom - top >= 8  # big enough to see and point at
    # So does the rest: plots, lease and consumer groups, without scrolling.
    assert browser.evaluate("document.documentElement.scrollHeight") <= 800
    assert browser.evaluate("document.documentElement.scrollWidth") <= 1280
    assert "gw-1 (this process)" in browser.evaluate("document.getElementById('lease').textContent")
    cells = browser.evaluate(
        "Array.from(document.querySelectorAll('#groups td'), td => td.textContent)"
    )
    assert cells == ["bot:events", "workers", "2", "3", "7"]
    points = browser.evaluate("document.querySelector('#rate polyline').getAttribute('points')")
    assert len(points.split()) == 60
    # Each stage has its own colour, and the legend shows them all.
    colours = browser.evaluate(
        f"new Set({CELLS}.map(c => getComputedStyle(c).backgroundColor)).size"
    )
    assert colours == 6
    assert browser.evaluate("document.querySelectorAll('#legend span').length") == 6
