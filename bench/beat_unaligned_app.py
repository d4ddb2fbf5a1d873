"""The on-time benchmark's baseline: the project's app with Celery's plain interval schedule.

Celery's ``schedule(30)`` fires 30 s after beat started (then every 30 s), which is
what the beat did before :class:`app.aligned_schedule.AlignedSchedule`.
"""

from __future__ import annotations

from celery.schedules import schedule

from app.celery_app import celery_app
from app.config import get_settings

__all__ = ["celery_app"]

celery_app.conf.beat_schedule["schedule-due-runs"]["schedule"] = schedule(
    get_settings().scheduler_tick_seconds
)
