"""When a schedule is next due: pure functions over settings, a time zone and ``now``.

A schedule is read from a config's effective settings: ``frequency``
(``daily`` | ``weekly``), ``weekday`` (for weekly; default monday) and
``preferred_time`` (``HH:MM``, local to the user's IANA time zone).

Guarantees (all results are aware UTC datetimes, strictly after ``after``):

* A local time that does not exist (DST gap) runs at the first valid minute
  after it (02:30 on a spring-forward night in New York runs at 03:00 EDT).
* An ambiguous local time (DST overlap) runs once, at its first occurrence.
* :func:`latest_slot` coalesces downtime: of all the slots missed, only the
  most recent is returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.errors import FirstSipError

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MAX_GAP_MINUTES = 24 * 60  # no zone has skipped a whole day since 2011 (Samoa); stop there


class ScheduleError(FirstSipError, ValueError):
    """Settings or time zone do not describe a valid schedule (a ``ValueError``: bad input)."""


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: every ``days`` at ``at`` local time, on ``weekday`` if weekly."""

    frequency: str
    at: time
    weekday: int | None
    zone: ZoneInfo


#: What an IANA zone name looks like (``Europe/Berlin``, ``Etc/GMT+5``); at most the column's 64.
_ZONE_NAME = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*")


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises :class:`ScheduleError` if unknown.

    Names that cannot be zones (too long, odd characters, a folder such as
    ``Europe``) are refused the same way, never with an ``OSError``.
    """
    if not isinstance(name, str) or len(name) > 64 or not _ZONE_NAME.fullmatch(name):
        shown = repr(name[:40]) + ("..." if isinstance(name, str) and len(name) > 40 else "")
        raise ScheduleError(f"unknown time zone {shown} (expected an IANA name such as Europe/Berlin)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ScheduleError(
            f"unknown time zone {name!r} (expected an IANA name such as Europe/Berlin)"
        ) from exc


def parse_schedule(settings: dict[str, Any], timezone: str) -> Schedule:
    """Read the schedule out of effective settings; raises :class:`ScheduleError`."""
    frequency = settings.get("frequency", "daily")
    if frequency not in ("daily", "weekly"):
        raise ScheduleError(f"frequency must be daily or weekly, got {frequency!r}")
    raw = settings.get("preferred_time", "06:00")
    try:
        hour, minute = (int(part) for part in str(raw).split(":"))
        at = time(hour, minute)
    except ValueError as exc:
        raise ScheduleError(f"preferred_time must be HH:MM, got {raw!r}") from exc
    weekday = None
    if frequency == "weekly":
        name = str(settings.get("weekday", "monday")).lower()
        if name not in WEEKDAYS:
            raise ScheduleError(f"weekday must be one of {', '.join(WEEKDAYS)}, got {name!r}")
        weekday = WEEKDAYS.index(name)
    return Schedule(frequency, at, weekday, zone(timezone))


def _exists(naive: datetime, tz: ZoneInfo) -> bool:
    # A wall time exists iff it survives a round trip through UTC.
    return naive.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == naive


def resolve_local(day: date, at: time, tz: ZoneInfo) -> datetime:
    """``day`` at ``at`` in ``tz`` as UTC, with the DST rules in the module docstring."""
    naive = datetime.combine(day, at)
    for _ in range(_MAX_GAP_MINUTES):
        if _exists(naive, tz):
            # fold=0 picks the first of two occurrences in an overlap.
            return naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
        naive = (naive + timedelta(minutes=1)).replace(second=0, microsecond=0)
    raise ScheduleError(f"no valid local time near {day} {at} in {tz.key}")


def _matches(schedule: Schedule, day: date) -> bool:
    return schedule.weekday is None or day.weekday() == schedule.weekday


def next_after(schedule: Schedule, after: datetime) -> datetime:
    """The first slot strictly after ``after`` (aware), as UTC."""
    if after.tzinfo is None:
        raise ScheduleError("after must be timezone-aware")
    local_day = after.astimezone(schedule.zone).date() - timedelta(days=1)
    for offset in range(16):
        day = local_day + timedelta(days=offset)
        if not _matches(schedule, day):
            continue
        slot = resolve_local(day, schedule.at, schedule.zone)
        if slot > after:
            return slot
    raise ScheduleError("no slot found within two weeks")  # unreachable for daily/weekly


def next_run_at(settings: dict[str, Any], timezone: str, *, after: datetime) -> datetime:
    """The next run time (UTC) for ``settings`` in ``timezone`` strictly after ``after``."""
    return next_after(parse_schedule(settings, timezone), after)


def latest_slot(schedule: Schedule, *, due: datetime, now: datetime) -> tuple[datetime, int]:
    """The most recent slot in ``[due, now]`` and how many earlier slots it coalesces.

    ``due`` is the config's stored ``next_run_at`` (itself a slot, ``<= now``).
    """
    # Jump close to now first so a long downtime costs O(1), not one step per missed day.
    start = max(due, now - timedelta(days=8))
    slot = due if start == due else next_after(schedule, start - timedelta(seconds=1))
    skipped = 0 if start == due else _count_between(schedule, due, slot)
    while True:
        following = next_after(schedule, slot)
        if following > now:
            return slot, skipped
        slot, skipped = following, skipped + 1


def _count_between(schedule: Schedule, first: datetime, last: datetime) -> int:
    # Slots in [first, last): exact for daily/weekly since both have a fixed cadence in days.
    days = (last.astimezone(schedule.zone).date() - first.astimezone(schedule.zone).date()).days
    return days // 7 if schedule.weekday is not None else days
