"""The one backoff rule: a run's retry delay and the consumer's wait through an outage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.backoff import Backoff, backoff_seconds


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    ceilings = [backoff_seconds(n, base=10, cap=600, rand=lambda: 1.0) for n in range(1, 9)]
    assert ceilings == [10, 20, 40, 80, 160, 320, 600, 600]
    assert backoff_seconds(3, base=10, cap=600, rand=lambda: 0.0) == 0


def test_jitter_is_the_random_share_of_the_ceiling() -> None:
    assert backoff_seconds(3, base=10, cap=600, jitter=0.5, rand=lambda: 0.0) == 20
    assert backoff_seconds(3, base=10, cap=600, jitter=0.5, rand=lambda: 1.0) == 40
    assert backoff_seconds(3, base=10, cap=600, jitter=0.0, rand=lambda: 0.3) == 40


@given(
    attempt=st.integers(1, 10_000),
    base=st.floats(0.01, 100),
    cap=st.floats(0.01, 10_000),
    jitter=st.floats(0, 1),
)
def test_backoff_is_always_within_the_jitter_floor_and_the_cap(
    attempt: int, base: float, cap: float, jitter: float
) -> None:
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    delay = backoff_seconds(attempt, base=base, cap=cap, jitter=jitter)
    assert ceiling * (1 - jitter) * (1 - 1e-12) <= delay <= cap


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        backoff_seconds(0, base=1, cap=1)
    with pytest.raises(ValueError):
        backoff_seconds(1, base=1, cap=1, jitter=1.5)


def test_consumer_backoff_doubles_per_failure_and_resets() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    delays = [backoff.next() for _ in range(6)]
    for delay, ceiling in zip(delays, [0.5, 1, 2, 4, 4, 4], strict=True):
        assert ceiling / 2 <= delay <= ceiling  # never at once, never past the ceiling
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.failures == 0 and 0.25 <= backoff.next() <= 0.5


def test_consumer_backoff_stays_at_the_cap_however_long_the_outage() -> None:
    backoff = Backoff(base=0.5, cap=30.0)
    for _ in range(100):
        backoff.next()
    assert backoff.failures == 32  # the counter is bounded too
    assert all(15.0 <= backoff.next() <= 30.0 for _ in range(100))
