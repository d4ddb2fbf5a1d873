"""The benchmark's Celery app: the project's app plus the baseline task, so one worker runs both."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from app.celery_app import celery_app
from app.db.engine import get_engine

__all__ = ["celery_app", "noop_write"]


@celery_app.task(name="bench.noop_write", acks_late=True, ignore_result=True)
def noop_write(marker: str) -> None:
    """Plain Celery's best case for our job: one database write, nothing else."""
    with get_engine().begin() as conn:
        conn.execute(text("INSERT INTO bench_baseline (marker) VALUES (:m)"), {"m": uuid.UUID(marker)})
