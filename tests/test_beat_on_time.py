"""Real beat and a real worker: a schedule due at a tick boundary gets its run from that tick.

The tick interval is 2 s here so the test waits seconds, not half a minute. The
outcome is asserted, never a wall-clock delay (machines are noisy): the run's
slot is the boundary it was due at, it was not created before that slot, and
beat ran (and persisted) the aligned schedule. That beat computes its due times
on the boundaries is asserted with an injected clock in test_aligned_schedule.py;
the delay itself is measured by ``bench/bench_on_time.py``.
"""

from __future__ import annotations

import shelve
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app import api
from app.aligned_schedule import AlignedSchedule
from app.db.engine import session_scope
from app.db.models import PluginRun, UserPluginConfig
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import ROOT, unique_email
from tests.processes import VENV_BIN, ManagedProcess, worker_args

pytestmark = pytest.mark.slow

TICK = 2.0


def _next_boundary(after: datetime, *, ahead: float) -> datetime:
    ts = (after + timedelta(seconds=ahead)).timestamp()
    return datetime.fromtimestamp((int(ts // TICK) + 1) * TICK, tz=UTC)


def test_real_beat_creates_the_run_from_the_boundary_tick(db, redis_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        sync_plugins(session, discover(ROOT / "plugins"))
    user = api.create_user(unique_email(), "UTC")
    api.configure_plugin(user.id, "daily-news-digest", {"topics": ["science"]})
    env = {"SCHEDULER_TICK_SECONDS": str(TICK), "LOG_LEVEL": "INFO"}
    schedule_file = tmp_path / "beat-schedule"
    beat = ManagedProcess(
        "on-time-beat",
        [str(VENV_BIN / "celery"), "-A", "app.celery_app:celery_app", "beat", f"--schedule={schedule_file}"],
        env=env,
    )
    worker = ManagedProcess("on-time-worker", worker_args(queues="scheduler"), env=env)
    try:
        worker.start(ready=r"ready\.", timeout=90)
        beat.start(ready=r"beat: Starting", timeout=90)
        due = _next_boundary(datetime.now(UTC), ahead=3 * TICK)
        with session_scope() as session:
            session.execute(
                update(UserPluginConfig).where(UserPluginConfig.user_id == user.id).values(next_run_at=due)
            )
        deadline = time.monotonic() + 120
        run = None
        while run is None and time.monotonic() < deadline:
            with session_scope() as session:
                run = session.scalars(select(PluginRun).where(PluginRun.user_id == user.id)).first()
            time.sleep(0.2)
        assert run is not None, f"beat never created the run:\n{beat.output[-3000:]}\n{worker.output[-3000:]}"
        assert run.scheduled_for == due
        assert run.created_at >= due  # never before its slot, whatever the machine's load
    finally:
        beat.stop(signal.SIGTERM, timeout=30)
        worker.stop(signal.SIGTERM, timeout=40)
        beat.kill()
        worker.kill()
    with shelve.open(str(schedule_file)) as store:  # beat's own persisted entry
        assert isinstance(store["entries"]["schedule-due-runs"].schedule, AlignedSchedule)
