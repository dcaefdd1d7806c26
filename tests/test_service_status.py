"""`run --sink ... --metrics-port`: health, readiness, metrics and status of the gateway service.

The service runs as a subprocess with its embedded simulator, as an operator
runs it; the test reads it over HTTP as Kubernetes probes, Prometheus and the
status page would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
import requests
from _ports import free_port
from redis_server import raw_client, redis_server_fixture, redis_url_fixture  # noqa: F401
from test_service import Service, services  # noqa: F401 - the fixture

from gcluster.redis.status import RedisStatus, group_rows

pytestmark = pytest.mark.extras

TIMEOUT = 20.0


def get(url: str) -> requests.Response:
    pool = gevent.get_hub().threadpool
    return pool.apply(lambda: requests.get(url, timeout=10))


def wait_for(predicate: Callable[[], Any], service: Service) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {TIMEOUT} s:\n{service.log}")
        gevent.sleep(0.1)


def test_service_serves_probes_metrics_lease_and_consumer_lag(
    redis_url: str,
    services: list[Service],  # noqa: F811 - the fixture
) -> None:
    client = raw_client(redis_url)
    # A worker group made before the service publishes: every event is lag.
    client.xgroup_create("ops:events", "workers", id="0", mkstream=True)
    service = Service(
        "--sink", redis_url,
        "--namespace", "ops",
        "--stream", "ops:events",
        "--scheme", "process:0/2",
        "--shards", "4",
        "--lease",
        "--simulate",
        "--simulate-events", "5",
        "--metrics-port", "0",
    )  # fmt: skip
    services.append(service)
    service.wait_for_line("service: status page at http://127.0.0.1:")
    url = re.search(r"status page at (http://127\.0\.0\.1:\d+)/status", service.log)
    assert url is not None
    base = url.group(1)
    assert get(base + "/healthz").status_code == 200
    wait_for(lambda: get(base + "/readyz").status_code == 200, service)
    assert get(base + "/readyz").json()["ready"] is True

    def lagging() -> dict[str, Any] | None:
        data: dict[str, Any] = get(base + "/status.json").json()
        rows = (data["service"] or {}).get("groups", {}).get("rows", [])
        # Shards 0 and 1 (process 0 of 2), five events each and the sessions'
        # own; none read by a worker, so the lag is the whole stream.
        published = client.xlen("ops:events")
        return data if published >= 10 and rows and rows[0]["lag"] == published else None

    data = wait_for(lagging, service)
    assert [row["id"] for row in data["shards"]] == [0, 1]
    assert data["service"]["groups"]["rows"] == [
        {
            "stream": "ops:events",
            "group": "workers",
            "consumers": 0,
            "pending": 0,
            "lag": client.xlen("ops:events"),
        }
    ]
    lease = data["service"]["lease"]
    assert lease["key"] == "{ops}:lease:process:0/2"
    assert lease["held"] is True
    assert lease["holder"] == client.get("{ops}:lease:process:0/2").decode()
    metrics = get(base + "/metrics")
    assert metrics.status_code == 200
    assert 'gcluster_shard_stage{shard="1",stage="connected"} 1.0' in metrics.text
    assert service.stop() == 0
    client.close()


def test_a_standby_is_alive_and_not_ready_and_names_the_holder(
    redis_url: str,
    services: list[Service],  # noqa: F811 - the fixture
) -> None:
    options = (
        "--sink", redis_url, "--namespace", "hs", "--stream", "hs:events",
        "--scheme", "process:0/1", "--shards", "1", "--lease", "--simulate",
        "--metrics-port", "0",
    )  # fmt: skip
    active = Service(*options)
    services.append(active)
    active.wait_for_line("service: shards 0 ready")
    standby = Service(*options)
    services.append(standby)
    standby.wait_for_line("lease {hs}:lease:process:0/1: held by")
    url = re.search(r"status page at (http://127\.0\.0\.1:\d+)/status", standby.log)
    assert url is not None
    base = url.group(1)
    assert get(base + "/healthz").status_code == 200
    ready = get(base + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["reason"] == "standby: waiting for the lease {hs}:lease:process:0/1"

    def lease() -> dict[str, Any] | None:
        service = get(base + "/status.json").json()["service"]
        return service["lease"] if service and service["lease"]["holder"] else None

    seen = wait_for(lease, standby)
    assert seen["held"] is False
    holder = raw_client(redis_url).get("{hs}:lease:process:0/1")
    assert holder is not None and seen["holder"] == holder.decode()
    assert standby.stop() == 0
    assert active.stop() == 0


def test_a_taken_metrics_port_is_a_usage_error_before_anything_starts(
    redis_url: str,
    services: list[Service],  # noqa: F811 - the fixture
) -> None:
    from gcluster.web import listen

    taken = listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        service = Service(
            "--sink", redis_url, "--simulate", "--shards", "1", "--metrics-port", str(port)
        )  # fmt: skip
        services.append(service)
        assert service.process.wait(timeout=TIMEOUT) == 2
        service._reader.join(timeout=5)
        assert f"--metrics-port {port}: 127.0.0.1:{port} is already in use" in service.log
    finally:
        taken.close()


def test_redis_down_shows_as_unknown_not_as_an_error() -> None:
    source = RedisStatus(f"redis://127.0.0.1:{free_port()}/0", streams=lambda: ["x:events"])
    try:
        data = source.sample()
    finally:
        source.close()
    assert data["lease"] is None
    assert "error" in data["groups"]
    assert source.waiting_for() is None


def test_group_rows_take_only_what_they_understand() -> None:
    reply = [
        {"name": b"workers", "consumers": 2, "pending": 1, "lag": 5, "last-delivered-id": b"0-0"},
        {b"name": "old", "consumers": -1, "pending": "x"},  # no lag before Redis 7
        "not a group",
    ]
    assert group_rows("s", reply) == [
        {"stream": "s", "group": "workers", "consumers": 2, "pending": 1, "lag": 5},
        {"stream": "s", "group": "old", "consumers": None, "pending": None, "lag": None},
    ]
    assert group_rows("s", None) == []
