"""The one helper for blocking calls: the hub keeps running, errors come back to the caller."""

from __future__ import annotations

import threading
import time

import gevent
import pytest

from gcluster._blocking import ThreadPoolCaller, call_blocking


def fail() -> None:
    raise OSError("refused")


def test_a_blocking_call_runs_in_another_thread_while_the_hub_keeps_running() -> None:
    ticks: list[float] = []

    def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    thread = call_blocking(lambda: (time.sleep(0.1), threading.get_ident())[1])
    ticker.kill()
    assert thread != threading.get_ident()
    assert len(ticks) >= 3


@pytest.mark.parametrize("caller", ["shared", "own"])
def test_an_error_in_the_pool_is_raised_in_the_caller_and_not_printed_by_the_hub(
    caller: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = ThreadPoolCaller(2)
    call = call_blocking if caller == "shared" else pool.call
    for _ in range(3):
        with pytest.raises(OSError, match="refused"):
            call(fail)
    assert call(int, "7") == 7
    pool.close()
    assert "Traceback" not in capsys.readouterr().err


def test_a_pool_of_its_own_is_made_on_first_use_and_closed() -> None:
    pool = ThreadPoolCaller(3)
    threads = {pool.call(threading.get_ident) for _ in range(3)}
    assert threading.get_ident() not in threads
    pool.close()
    pool.close()  # idempotent
    assert pool.call(lambda: 1) == 1  # a new pool after close
    pool.close()
