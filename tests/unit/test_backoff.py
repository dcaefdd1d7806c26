"""Backoff's rules at their edges: which policies are valid, and the delay's bounds."""

from __future__ import annotations

import pytest

from gcluster.backoff import Backoff

MESSAGE = "backoff needs base > 0, factor >= 1, cap >= base, attempt >= 0"


@pytest.mark.parametrize(
    "options",
    [
        {"base": 0.0},
        {"base": -1.0},
        {"factor": 0.5},
        {"factor": 0.0},
        {"base": 2.0, "cap": 1.0},
        {"attempt": -1},
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_each_invalid_setting_alone_is_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError) as caught:
        Backoff(**options)  # type: ignore[arg-type]
    assert str(caught.value) == MESSAGE


@pytest.mark.parametrize(
    "options",
    [
        {"base": 0.001},
        {"factor": 1.0},
        {"factor": 1.5},
        {"base": 3.0, "cap": 3.0},
        {"attempt": 0},
        {"attempt": 5},
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_settings_at_the_edge_are_valid(options: dict[str, float]) -> None:
    Backoff(**options)  # type: ignore[arg-type]


def test_a_factor_of_one_backs_off_by_the_same_delay_every_time() -> None:
    policy = Backoff(base=2.0, factor=1.0, cap=10.0, attempt=7)
    assert policy.delay(lambda: 0.0) == 1.0
    assert policy.delay(lambda: 1.0) == 2.0


def test_the_delay_is_half_fixed_half_random() -> None:
    policy = Backoff(base=1.0, factor=3.0, cap=100.0, attempt=3)  # ceiling 9
    assert [policy.delay(lambda r=r: r) for r in (0.0, 0.25, 0.5, 1.0)] == [4.5, 5.625, 6.75, 9.0]


def test_increment_and_reset_keep_the_other_settings() -> None:
    policy = Backoff(base=0.25, factor=4.0, cap=7.0)
    later = policy.increment().increment()
    assert later == Backoff(base=0.25, factor=4.0, cap=7.0, attempt=2)
    assert later.reset() == policy
    assert policy.attempt == 0  # the original is untouched
