"""The beat tick fires on the clock's boundaries (:00 and :30 for 30 s), with an injected clock."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from celery.beat import Scheduler

from app.aligned_schedule import DEFAULT_OFFSET_SECONDS, AlignedSchedule
from app.errors import ConfigurationError

T0 = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)
OFFSET = timedelta(seconds=DEFAULT_OFFSET_SECONDS)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _schedule(clock: Clock, every: float = 30) -> AlignedSchedule:
    return AlignedSchedule(every, nowfun=clock)


def test_fresh_beat_waits_for_the_next_boundary_then_fires_on_each() -> None:
    clock = Clock(T0 + timedelta(seconds=12))  # beat started at 06:00:12
    sched = _schedule(clock)
    last_run = clock.now  # a new entry's last_run_at is its creation time
    due, wait = sched.is_due(last_run)
    assert not due and wait == pytest.approx(18 + DEFAULT_OFFSET_SECONDS)
    fired = []
    for _ in range(4):  # beat sleeps exactly what it was told, then asks again
        clock.now += timedelta(seconds=wait)
        due, wait = sched.is_due(last_run)
        assert due
        fired.append(clock.now)
        last_run = clock.now
    assert fired == [T0 + timedelta(seconds=30 * k) + OFFSET for k in (1, 2, 3, 4)]


def test_an_early_wake_counts_as_on_time_and_never_fires_twice() -> None:
    # Celery's loop wakes ~10 ms before the time it computed (Scheduler.adjust).
    clock = Clock(T0 + timedelta(seconds=30) + OFFSET - timedelta(milliseconds=10))
    sched = _schedule(clock)
    due, wait = sched.is_due(T0 + timedelta(seconds=5))
    assert due and wait == pytest.approx(30.01)
    last_run = clock.now  # beat records the firing at the early wake-up time
    clock.now += timedelta(milliseconds=20)  # now just past the boundary
    due, wait = sched.is_due(last_run)
    assert not due and wait == pytest.approx(29.99)


def test_a_late_wake_fires_at_once_and_realigns() -> None:
    clock = Clock(T0 + timedelta(seconds=37))  # the machine stalled 7 s past the boundary
    sched = _schedule(clock)
    due, wait = sched.is_due(T0 + OFFSET)
    assert due and wait == pytest.approx(23 + DEFAULT_OFFSET_SECONDS)


def test_downtime_across_many_boundaries_fires_once() -> None:
    clock = Clock(T0 + timedelta(minutes=10, seconds=3))
    sched = _schedule(clock)
    due, wait = sched.is_due(T0 + OFFSET)  # last fired ten minutes ago
    assert due
    last_run = clock.now
    assert not sched.is_due(last_run)[0]
    clock.now += timedelta(seconds=wait)
    assert sched.is_due(last_run)[0] and clock.now == T0 + timedelta(minutes=10, seconds=30) + OFFSET


@pytest.mark.parametrize(("every", "boundaries"), [(60, (0,)), (15, (0, 15, 30, 45)), (1, range(60))])
def test_intervals_dividing_a_minute_put_a_tick_on_every_whole_minute(
    every: float, boundaries: range
) -> None:
    clock = Clock(T0 + timedelta(seconds=0.5))
    sched = _schedule(clock, every)
    seen: set[int] = set()
    last_run = clock.now
    for _ in range(int(120 / every)):
        fire = sched.fire_time_after(last_run)
        boundary = fire - timedelta(seconds=sched.offset)
        assert boundary.microsecond == 0
        seen.add(boundary.second)
        last_run = fire
    assert seen == set(boundaries)


def test_short_intervals_get_a_short_offset_and_bad_values_are_refused() -> None:
    assert AlignedSchedule(0.4).offset == pytest.approx(0.1)
    assert AlignedSchedule(30).offset == DEFAULT_OFFSET_SECONDS
    with pytest.raises(ConfigurationError, match="offset"):
        AlignedSchedule(30, offset=30)
    with pytest.raises(ConfigurationError, match="positive"):
        AlignedSchedule(0)


def test_pickles_with_its_offset_and_compares_by_value() -> None:
    # Beat's persistent scheduler stores each entry's schedule in its schedule file.
    sched = AlignedSchedule(30, offset=0.5)
    copy = pickle.loads(pickle.dumps(sched))
    assert isinstance(copy, AlignedSchedule) and copy.offset == 0.5 and copy == sched
    assert sched != AlignedSchedule(30) and sched != AlignedSchedule(60, offset=0.5)


def test_beat_computes_the_configured_tick_on_boundaries(monkeypatch: pytest.MonkeyPatch, setenv) -> None:  # type: ignore[no-untyped-def]
    """Celery's own scheduler, fed the app's beat_schedule, puts the tick on :00/:30 + offset."""
    setenv(SCHEDULER_TICK_SECONDS="30")
    from app.celery_app import celery_app

    clock = Clock(T0 + timedelta(seconds=41, microseconds=123456))
    monkeypatch.setattr(celery_app, "now", clock)
    scheduler = Scheduler(app=celery_app, lazy=True)
    scheduler.setup_schedule()
    entry = scheduler.schedule["schedule-due-runs"]
    assert isinstance(entry.schedule, AlignedSchedule) and entry.schedule.seconds == 30
    scheduler.populate_heap()
    (event,) = [e for e in scheduler._heap if e[2].name == "schedule-due-runs"]
    # The heap holds beat's wake-up time (Celery subtracts its 10 ms drift allowance).
    wake = datetime.fromtimestamp(event[0] + 0.010, tz=UTC)
    assert abs((wake - (T0 + timedelta(minutes=1) + OFFSET)).total_seconds()) < 1e-3
