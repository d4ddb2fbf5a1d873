"""End to end with real processes: worker, consumer and beat as subprocesses on PostgreSQL and Redis.

A due schedule and a manual trigger both end ``completed`` with digest content;
then each process gets SIGTERM and must exit cleanly within its limit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from app import api
from app.db.engine import session_scope
from app.db.models import PluginRun, RunStatus, UserPluginConfig
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import ROOT, unique_email
from tests.processes import VENV_BIN, ManagedProcess, worker_args

pytestmark = pytest.mark.slow

# Limits a PaaS gives: 30 s from SIGTERM to SIGKILL; the consumer promises 10 s.
EXIT_LIMITS = {"worker": 30.0, "consumer": 10.0, "beat": 10.0}


def _wait_completed(run_id: object, timeout: float = 120.0) -> api.RunInfo:
    info = api.wait_for_run(str(run_id), timeout=timeout)
    assert info.status == RunStatus.COMPLETED, info.error_message
    return info


def test_scheduled_and_manual_runs_complete_then_clean_shutdown(db, redis_client) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        sync_plugins(session, discover(ROOT / "plugins"))
    env = {"SCHEDULER_TICK_SECONDS": "1", "LOG_LEVEL": "INFO"}
    processes = {
        "worker": ManagedProcess("e2e-worker", worker_args(pool="threads", concurrency=4), env=env),
        "consumer": ManagedProcess("e2e-consumer", [str(VENV_BIN / "first-sip"), "consumer"], env=env),
        "beat": ManagedProcess(
            "e2e-beat",
            [
                str(VENV_BIN / "celery"),
                "-A",
                "app.celery_app:celery_app",
                "beat",
                "--loglevel=INFO",
                f"--schedule={ROOT / 'test-artifacts' / f'beat-{os.getpid()}'}",
            ],
            env=env,
        ),
    }
    ready = {"worker": r"ready\.", "consumer": r"consumer \S+ ready", "beat": r"beat: Starting"}
    try:
        for name, proc in processes.items():
            proc.start(ready=ready[name], timeout=90)

        scheduled_user = api.create_user(unique_email(), "Europe/Berlin")
        api.configure_plugin(scheduled_user.id, "daily-news-digest", {"topics": ["science"]})
        with session_scope() as session:  # the schedule is due now
            session.execute(
                update(UserPluginConfig)
                .where(UserPluginConfig.user_id == scheduled_user.id)
                .values(next_run_at=datetime.now(UTC) - timedelta(seconds=5))
            )
        manual_user = api.create_user(unique_email())
        manual = api.trigger_run(manual_user.id, "daily-news-digest", {"topics": ["technology"]})

        done = _wait_completed(manual.run_id)
        assert (
            done.content
            and "#" in done.content
            and done.output
            and done.output["token_usage"]["total_tokens"] > 0
        )

        deadline = datetime.now(UTC) + timedelta(seconds=60)
        scheduled = []
        while not scheduled and datetime.now(UTC) < deadline:
            scheduled = api.list_runs(user_id=scheduled_user.id)
        assert scheduled, "beat never created the scheduled run"
        run = _wait_completed(scheduled[0].run_id)
        assert run.trigger == "schedule" and run.content
        next_run = api.get_config(scheduled_user.id, "daily-news-digest").next_run_at
        assert next_run is not None and next_run > datetime.now(UTC)
        with session_scope() as session:  # exactly one run per slot, even with a 1 s tick
            count = len(
                session.scalars(select(PluginRun.id).where(PluginRun.user_id == scheduled_user.id)).all()
            )
        assert count == 1
    finally:
        exits = {}
        for name in ("beat", "consumer", "worker"):
            proc = processes[name]
            if proc.alive():
                exits[name] = proc.stop(signal.SIGTERM, timeout=EXIT_LIMITS[name] + 5)
            proc.kill()
    for name, (code, seconds) in exits.items():
        assert code == 0, f"{name} exited with {code}:\n{processes[name].output[-2000:]}"
        assert seconds <= EXIT_LIMITS[name], f"{name} took {seconds:.1f}s to stop"


def test_demo_steps_on_the_embedded_default(tmp_path: Path) -> None:
    """`first-sip demo` (what `make demo` runs) in an empty folder: SQLite, a private Redis, a digest."""
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_KEY_PREFIX", "PLUGINS_DIR")
    }
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing answers: the demo must start its own
    env["TERM"] = "dumb"
    for _ in range(2):  # running it twice works
        proc = subprocess.run(
            [sys.executable, "-m", "app", "demo", "--timeout", "180"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "started a private redis-server" in out
        assert "sqlite:///var/first-sip.db" in out
        assert "Your First Sip" in out and re.search(r"^#+ .*[Dd]igest", out, re.M), out[-3000:]
        brief = out.split("Your topic brief", 1)[-1]  # a @CrewBase crew's output_json, offline
        assert '"key_points": [' in brief and '"title": ' in brief, out[-3000:]
        assert "stopped:" in out and "killed" not in out.split("stopped:")[-1]
    assert (tmp_path / "var" / "first-sip.db").exists()
