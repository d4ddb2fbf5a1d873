"""A Celery beat schedule that fires on the clock's boundaries, not relative to beat's start.

Celery's plain ``schedule(30)`` fires 30 s after whenever beat started (or last
fired), so a schedule due at 06:00:00 can wait up to a whole interval. Preferred
times are whole minutes, so the beat tick fires at the multiples of its interval
counted from the Unix epoch (for 30 s: every :00 and :30 of every minute), plus
a small :data:`DEFAULT_OFFSET_SECONDS`.

Guarantees:

* Every firing is at ``k * interval + offset`` seconds since the epoch (within
  beat's own loop precision). An interval that divides 60 puts a tick on every
  whole minute; one that is a multiple of 60 on every ``interval / 60``-th minute.
* At most one firing per boundary, however early or late beat's loop wakes.
* After beat was stopped across boundaries it fires once at start-up (the
  missed boundaries coalesce; the tick itself catches up every due schedule),
  then on the boundaries again. A fresh beat waits for the next boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery.schedules import schedstate, schedule

from app.errors import ConfigurationError

#: Fire this long after each boundary, so a worker whose clock runs slightly behind beat's
#: still sees the boundary's schedules as due (a run is never created before its minute).
DEFAULT_OFFSET_SECONDS = 0.25
#: Celery's loop wakes about 10 ms early by design (``Scheduler.adjust``); a wake-up this
#: close to the firing time counts as on time instead of spinning until it.
_EARLY_TOLERANCE_SECONDS = 0.05


class AlignedSchedule(schedule):  # type: ignore[misc]
    """Every ``run_every`` on the epoch-aligned boundaries of that interval, ``offset`` seconds after."""

    def __init__(
        self,
        run_every: float | timedelta,
        offset: float | None = None,
        nowfun: Callable[[], datetime] | None = None,
        app: Any = None,
    ) -> None:
        super().__init__(run_every=run_every, nowfun=nowfun, app=app)
        if self.seconds <= 0:
            raise ConfigurationError(f"a beat interval must be positive, got {self.seconds:g} s")
        if offset is None:  # a quarter of a very short interval (tests tick every second)
            offset = min(DEFAULT_OFFSET_SECONDS, self.seconds / 4)
        if not 0 <= offset < self.seconds:
            raise ConfigurationError(f"the offset must be in [0, {self.seconds:g}) s, got {offset:g}")
        self.offset = float(offset)

    def fire_time_after(self, moment: datetime) -> datetime:
        """The first firing time strictly after ``moment`` (a firing within the tolerance counts as done)."""
        seconds = self.seconds
        ts = _aware(moment).timestamp() + _EARLY_TOLERANCE_SECONDS - self.offset
        slot = math.floor(ts / seconds) + 1
        return datetime.fromtimestamp(slot * seconds + self.offset, tz=UTC)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time from now until the first firing after ``last_run_at`` (negative when overdue)."""
        now = _aware(self.now())
        return self.fire_time_after(last_run_at) - now

    def is_due(self, last_run_at: datetime) -> schedstate:
        """``(due, seconds until beat should look again)``, aligned to the next boundary."""
        now = _aware(self.now())
        due_at = self.fire_time_after(last_run_at)
        if (due_at - now).total_seconds() <= _EARLY_TOLERANCE_SECONDS:
            return schedstate(is_due=True, next=(self.fire_time_after(now) - now).total_seconds())
        return schedstate(is_due=False, next=(due_at - now).total_seconds())

    def __repr__(self) -> str:
        return f"<aligned: every {self.human_seconds} at +{self.offset:g}s>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AlignedSchedule):
            return False
        return self.run_every == other.run_every and self.offset == other.offset

    def __hash__(self) -> int:
        return hash((self.run_every, self.offset))

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        # Beat's persistent scheduler stores entries with their schedule; keep the offset.
        return self.__class__, (self.run_every, self.offset, self.nowfun)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
