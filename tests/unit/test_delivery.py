"""The queue between readers and iterators: order, decoding on the way out, waking."""

from __future__ import annotations

import logging

import gevent
import pytest

from gcluster.delivery import EventQueue, RawDispatch
from gcluster.events import Event, EventType
from gcluster.protocol import ResumeSession
from gcluster.sessions import SessionMark


def raw(name: str, sequence: int, data: str) -> bytes:
    return f'{{"t":"{name}","s":{sequence},"op":0,"d":{data}}}'.encode()


def test_dispatches_are_decoded_as_they_are_taken_in_the_order_put() -> None:
    queue = EventQueue()
    mark = SessionMark(ResumeSession("abc", 1, "ws://x"))
    lifecycle = Event(EventType.SHARD_CONNECTED, "SHARD_CONNECTED", 1, None, {"resumed": False})
    queue.put((1, mark))
    queue.put((1, lifecycle))
    queue.put(
        RawDispatch(
            1, EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 2, raw("MESSAGE_CREATE", 2, '{"id":"7"}')
        )
    )
    queue.close()
    assert len(queue) == 3

    assert queue.next_event() == (1, mark)
    assert queue.next_event() == (1, lifecycle)
    assert queue.next_event() == (
        1,
        Event(EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 1, 2, {"id": "7"}),
    )
    assert queue.next_event() is None
    assert queue.next_event() is None  # and for every iterator after it
    assert len(queue) == 0


def test_a_dispatch_that_is_not_json_is_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = EventQueue()
    queue.put(
        RawDispatch(
            3,
            EventType.MESSAGE_CREATE,
            "MESSAGE_CREATE",
            5,
            b'{"t":"MESSAGE_CREATE","s":5,"op":0,"d":{',
        )
    )
    queue.put(
        RawDispatch(
            3, EventType.MESSAGE_DELETE, "MESSAGE_DELETE", 6, raw("MESSAGE_DELETE", 6, "{}")
        )
    )
    with caplog.at_level(logging.ERROR, logger="gcluster.shard"):
        item = queue.next_event()
    assert item is not None
    shard_id, event = item
    assert (shard_id, event.sequence, event.kind) == (3, 6, EventType.MESSAGE_DELETE)
    (record,) = caplog.records
    assert record.getMessage().startswith("shard 3: dispatch MESSAGE_CREATE s=5 is not valid JSON")


def test_a_waiting_iterator_wakes_for_the_next_item() -> None:
    queue = EventQueue()
    taker = gevent.spawn(queue.next_event)
    gevent.sleep(0)  # the taker is waiting now
    assert not taker.ready()
    queue.put((1, "item"))
    assert taker.get(timeout=5) == (1, "item")


def test_closing_ends_every_waiting_iterator_and_an_error_is_raised_to_each() -> None:
    queue = EventQueue()
    takers = [gevent.spawn(queue.next_event) for _ in range(3)]
    gevent.sleep(0)
    queue.close()
    assert [taker.get(timeout=5) for taker in takers] == [None, None, None]
    failing = EventQueue()
    takers = [gevent.spawn(failing.next_event) for _ in range(2)]
    gevent.sleep(0)
    failing.close(KeyError("every shard failed"))
    for taker in takers:
        taker.join(timeout=5)
        assert isinstance(taker.exception, KeyError)
    # reopen() undoes a close with an error: events flow again.
    failing.reopen()
    failing.put((2, "again"))
    assert failing.next_event() == (2, "again")


def test_every_waiting_iterator_gets_an_item_and_none_gets_one_twice() -> None:
    queue = EventQueue()
    takers = [gevent.spawn(queue.next_event) for _ in range(3)]
    gevent.sleep(0)
    for n in range(3):
        queue.put((n, "item"))
    got = sorted(taker.get(timeout=5)[0] for taker in takers)
    assert got == [0, 1, 2]
    assert len(queue) == 0


def test_an_iterator_killed_while_waiting_leaves_the_items_to_the_others() -> None:
    queue = EventQueue()
    first = gevent.spawn(queue.next_event)
    second = gevent.spawn(queue.next_event)
    gevent.sleep(0)  # both wait, the first in front
    first.kill(block=True)
    queue.put((7, "item"))
    assert second.get(timeout=5) == (7, "item")


def test_skipped_dispatches_are_logged_once_per_shard_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = EventQueue()
    broken = b'{"t":"MESSAGE_CREATE","s":5,"op":0,"d":{'
    for shard_id in (3, 3, 3, 4):
        queue.put(RawDispatch(shard_id, EventType.MESSAGE_CREATE, "MESSAGE_CREATE", 5, broken))
    queue.close()
    with caplog.at_level(logging.ERROR, logger="gcluster.shard"):
        assert queue.next_event() is None
        # A reader's skip goes through the same limit (Shard uses queue.skips).
        queue.skips.error(3, "a message that is not valid JSON")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # one for shard 3, one for shard 4
    assert lines[0].startswith("shard 3: dispatch MESSAGE_CREATE s=5 is not valid JSON")
    assert lines[1].startswith("shard 4: ")


def test_the_next_line_after_the_interval_says_how_many_were_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gcluster.delivery import SkipLog

    now = [100.0]
    skips = SkipLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="gcluster.shard"):
        for _ in range(4):
            skips.error(1, "bad")
        now[0] += 10.0
        skips.error(1, "bad")
    assert [r.getMessage() for r in caplog.records] == [
        "shard 1: bad; skipped",
        "shard 1: bad; skipped (3 more since the last line)",
    ]
