"""Shard schemes at their edges, and the messages that say what is wrong."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gcluster.errors import ShardSchemeError
from gcluster.scheme import ShardScheme


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ShardScheme.range(range(2), total=0), "total must be a positive int, not 0"),
        (lambda: ShardScheme.range(range(2), total=-3), "total must be a positive int, not -3"),
        (lambda: ShardScheme.range([0], total=True), "total must be a positive int, not True"),
        (lambda: ShardScheme.range([0], total="4"), "total must be a positive int, not '4'"),
        (lambda: ShardScheme.range([0], total=2.0), "total must be a positive int, not 2.0"),
        (lambda: ShardScheme.range(7, total=10), "ids must be an iterable of ints, not int"),
        (lambda: ShardScheme.range([], total=10), "the scheme holds no shard ids"),
        (lambda: ShardScheme.range([0, True], total=10), "shard id True is not an int"),
        (lambda: ShardScheme.range([1.0], total=10), "shard id 1.0 is not an int"),
        (lambda: ShardScheme.range([-1], total=10), "shard id -1 is outside 0..9 (total 10)"),
        (lambda: ShardScheme.range([10], total=10), "shard id 10 is outside 0..9 (total 10)"),
        (lambda: ShardScheme.range([3, 1, 3], total=10), "shard ids repeat"),
        (lambda: ShardScheme.bucket(0, 0, 10), "concurrency must be at least 1, not 0"),
        (lambda: ShardScheme.bucket(-1, 4, 10), "bucket_id -1 is outside 0..3"),
        (lambda: ShardScheme.bucket(4, 4, 10), "bucket_id 4 is outside 0..3"),
        (lambda: ShardScheme.bucket(4, 8, 4), "bucket 4 holds no shard of 4"),
        (lambda: ShardScheme.bucket(0, 1, 0), "total must be a positive int, not 0"),
        (lambda: ShardScheme.process(0, 0, 10), "count must be at least 1, not 0"),
        (lambda: ShardScheme.process(0, 11, 10), "11 processes cannot share 10 shards"),
        (lambda: ShardScheme.process(-1, 3, 10), "index -1 is outside 0..2"),
        (lambda: ShardScheme.process(3, 3, 10), "index 3 is outside 0..2"),
        (lambda: ShardScheme.process(0, 1, 0), "total must be a positive int, not 0"),
        (lambda: ShardScheme.auto().resolve(0), "total must be a positive int, not 0"),
    ],
)
def test_each_invalid_scheme_says_what_is_wrong(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ShardSchemeError) as caught:
        build()
    assert str(caught.value) == message


def test_the_smallest_schemes() -> None:
    assert ShardScheme.range([0], total=1) == ShardScheme((0,), 1)
    assert ShardScheme.bucket(0, 1, 1) == ShardScheme((0,), 1)
    assert ShardScheme.process(0, 1, 1) == ShardScheme((0,), 1)
    assert ShardScheme.auto().resolve(1) == ((0,), 1)


def test_range_takes_any_iterable_and_sorts_it() -> None:
    scheme = ShardScheme.range(iter([9, 0, 4]), total=10)
    assert (scheme.ids, scheme.total) == ((0, 4, 9), 10)
    assert scheme.resolve(99) == ((0, 4, 9), 10)


def test_buckets_at_their_edges() -> None:
    assert ShardScheme.bucket(0, 1, 3) == ShardScheme((0, 1, 2), 3)  # one bucket: every shard
    assert ShardScheme.bucket(0, 4, 10) == ShardScheme((0, 4, 8), 10)
    assert ShardScheme.bucket(3, 4, 10) == ShardScheme((3, 7), 10)
    assert ShardScheme.bucket(3, 4, 4) == ShardScheme((3,), 4)  # the last shard alone


def test_processes_at_their_edges() -> None:
    assert ShardScheme.process(0, 1, 5) == ShardScheme((0, 1, 2, 3, 4), 5)
    # As many processes as shards: one shard each.
    assert [ShardScheme.process(i, 3, 3) for i in range(3)] == [
        ShardScheme((0,), 3),
        ShardScheme((1,), 3),
        ShardScheme((2,), 3),
    ]


def test_auto_is_resolved_with_the_recommended_count() -> None:
    scheme = ShardScheme.auto()
    assert scheme.is_auto and (scheme.ids, scheme.total) == (None, None)
    assert scheme.resolve(3) == ((0, 1, 2), 3)
    assert not ShardScheme.range([0], total=1).is_auto
