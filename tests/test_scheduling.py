"""Next-run computation with an injected clock: daily, weekly, DST gaps and overlaps, odd offsets."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.scheduling import ScheduleError, latest_slot, next_run_at, parse_schedule


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def daily(at: str) -> dict[str, str]:
    return {"frequency": "daily", "preferred_time": at}


def test_daily_later_today_and_tomorrow() -> None:
    # 07:00 EST: today's 06:00 is gone, tomorrow's is next; today's 08:00 is still ahead.
    now = utc(2026, 1, 10, 12, 0)
    assert next_run_at(daily("06:00"), "America/New_York", after=now) == utc(2026, 1, 11, 11, 0)
    assert next_run_at(daily("08:00"), "America/New_York", after=now) == utc(2026, 1, 10, 13, 0)


def test_strictly_after() -> None:
    slot = utc(2026, 1, 11, 11, 0)
    assert next_run_at(daily("06:00"), "America/New_York", after=slot) == slot + timedelta(days=1)


def test_weekly() -> None:
    settings = {"frequency": "weekly", "weekday": "wednesday", "preferred_time": "09:30"}
    # Monday 2026-01-12 in Berlin -> Wednesday 2026-01-14 09:30 CET = 08:30 UTC
    assert next_run_at(settings, "Europe/Berlin", after=utc(2026, 1, 12, 10)) == utc(2026, 1, 14, 8, 30)
    # Just after that slot -> a week later
    assert next_run_at(settings, "Europe/Berlin", after=utc(2026, 1, 14, 8, 30)) == utc(2026, 1, 21, 8, 30)


def test_new_york_spring_forward_gap_runs_at_first_valid_minute() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist; run at 03:00 EDT (07:00 UTC).
    assert next_run_at(daily("02:30"), "America/New_York", after=utc(2026, 3, 7, 12)) == utc(2026, 3, 8, 7, 0)
    # The day after, 02:30 exists again (EDT, 06:30 UTC).
    assert next_run_at(daily("02:30"), "America/New_York", after=utc(2026, 3, 8, 7, 0)) == utc(
        2026, 3, 9, 6, 30
    )


def test_new_york_fall_back_ambiguous_runs_once() -> None:
    # 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 happens twice; run at the first (EDT, 05:30 UTC).
    first = next_run_at(daily("01:30"), "America/New_York", after=utc(2026, 10, 31, 12))
    assert first == utc(2026, 11, 1, 5, 30)
    # Not again at the second 01:30 (06:30 UTC) but the next day, 01:30 EST.
    assert next_run_at(daily("01:30"), "America/New_York", after=first) == utc(2026, 11, 2, 6, 30)


def test_berlin_both_transitions() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 runs at 03:00 CEST = 01:00 UTC.
    assert next_run_at(daily("02:30"), "Europe/Berlin", after=utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1, 0)
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 twice; first is CEST = 00:30 UTC.
    first = next_run_at(daily("02:30"), "Europe/Berlin", after=utc(2026, 10, 24, 12))
    assert first == utc(2026, 10, 25, 0, 30)
    assert next_run_at(daily("02:30"), "Europe/Berlin", after=first) == utc(2026, 10, 26, 1, 30)


def test_chatham_quarter_hour_offsets() -> None:
    # January is Chatham daylight time, UTC+13:45: 06:00 local = 16:15 UTC the day before.
    assert next_run_at(daily("06:00"), "Pacific/Chatham", after=utc(2026, 1, 10, 0)) == utc(
        2026, 1, 10, 16, 15
    )
    # July is standard time, UTC+12:45.
    assert next_run_at(daily("06:00"), "Pacific/Chatham", after=utc(2026, 7, 10, 0)) == utc(
        2026, 7, 10, 17, 15
    )


def test_time_zone_change_moves_the_slot() -> None:
    now = utc(2026, 6, 1, 0, 0)
    ny = next_run_at(daily("06:00"), "America/New_York", after=now)
    tokyo = next_run_at(daily("06:00"), "Asia/Tokyo", after=now)
    assert ny == utc(2026, 6, 1, 10, 0) and tokyo == utc(2026, 6, 1, 21, 0)


def test_latest_slot_coalesces_three_days_of_downtime() -> None:
    schedule = parse_schedule(daily("06:00"), "UTC")
    due = utc(2026, 5, 1, 6, 0)
    slot, skipped = latest_slot(schedule, due=due, now=utc(2026, 5, 4, 7, 0))
    assert slot == utc(2026, 5, 4, 6, 0) and skipped == 3


def test_latest_slot_after_long_downtime_is_cheap_and_exact() -> None:
    schedule = parse_schedule({"frequency": "weekly", "weekday": "friday", "preferred_time": "06:00"}, "UTC")
    due = utc(2025, 1, 3, 6, 0)  # a Friday
    slot, skipped = latest_slot(schedule, due=due, now=utc(2026, 1, 3, 12, 0))  # a Saturday
    assert slot == utc(2026, 1, 2, 6, 0)
    assert skipped == 52


def test_latest_slot_when_only_due_slot() -> None:
    schedule = parse_schedule(daily("06:00"), "UTC")
    due = utc(2026, 5, 1, 6, 0)
    assert latest_slot(schedule, due=due, now=due + timedelta(minutes=1)) == (due, 0)


@pytest.mark.parametrize(
    "settings, tz, fragment",
    [
        ({"frequency": "hourly"}, "UTC", "frequency"),
        ({"preferred_time": "25:00"}, "UTC", "preferred_time"),
        ({"preferred_time": "noon"}, "UTC", "preferred_time"),
        ({"frequency": "weekly", "weekday": "funday"}, "UTC", "weekday"),
        ({}, "Mars/Olympus", "unknown time zone"),
    ],
)
def test_invalid_schedules(settings: dict[str, str], tz: str, fragment: str) -> None:
    with pytest.raises(ScheduleError, match=fragment):
        next_run_at(settings, tz, after=utc(2026, 1, 1))


def test_naive_now_rejected() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        next_run_at(daily("06:00"), "UTC", after=datetime(2026, 1, 1))


ZONES = ["America/New_York", "Europe/Berlin", "Pacific/Chatham", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]


@given(
    zone_name=st.sampled_from(ZONES),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    start=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 1, 1)),
)
def test_daily_slots_are_increasing_and_one_per_local_day(
    zone_name: str, hour: int, minute: int, start: datetime
) -> None:
    settings = daily(f"{hour:02d}:{minute:02d}")
    after = start.replace(tzinfo=UTC)
    slots = []
    for _ in range(4):
        after = next_run_at(settings, zone_name, after=after)
        slots.append(after)
    assert all(a < b for a, b in itertools.pairwise(slots))
    from zoneinfo import ZoneInfo

    days = [s.astimezone(ZoneInfo(zone_name)).date() for s in slots]
    assert all((b - a).days == 1 for a, b in itertools.pairwise(days))
