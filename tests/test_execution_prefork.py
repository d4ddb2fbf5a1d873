"""execute_run on a real prefork worker (-c 2): crews run in pool children, abandoned crews really stop.

In a prefork child a crew thread that timed out or was cancelled is stopped by
the child exiting after it recorded the outcome; the plugin's ``done`` record
never appearing proves the crew did not run on. The pool replaces the child,
which the follow-up runs prove.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from app.db import runs
from app.db.engine import session_scope
from app.db.models import RunStatus, utcnow
from tests.plugins.harness import (
    PLUGINS_DIR,
    dispatch,
    get_run,
    make_run,
    pending_entry,
    records,
    wait_for,
    wait_for_entry_acked,
    wait_for_record,
    wait_until_past,
)
from tests.processes import ManagedProcess, celery_worker

pytestmark = pytest.mark.slow

WORKER_ENV = {"PLUGINS_DIR": PLUGINS_DIR, "LEASE_SECONDS": "2"}


@pytest.fixture(scope="module")
def worker(pg_database: str, redis_session: redis.Redis) -> Iterator[ManagedProcess]:
    with celery_worker(pool="prefork", concurrency=2, env=WORKER_ENV) as process:
        yield process


def digest_run(topics: list[str]) -> uuid.UUID:
    return make_run("daily-news-digest", {"topics": topics, "feeds": ["bundled:sample-feed.xml"]})


def test_prefork_pool_runs_crews_without_hanging(worker: ManagedProcess, db: str, tmp_path: Path) -> None:
    record = tmp_path / "executions.log"
    digests = [digest_run(t) for t in (["technology"], ["science"], ["sports"], ["business", "health"])]
    sleepers = [make_run("controlled", {"record_path": str(record), "sleep_seconds": 1}) for _ in range(2)]
    for run_id in digests + sleepers:
        dispatch(run_id)
    for run_id in digests + sleepers:
        row = wait_for(run_id)
        assert row.status == RunStatus.COMPLETED, row.error_message
        assert row.output is not None and row.output["token_usage"]["successful_requests"] >= 1
    for run_id in sleepers:
        assert records(record, run_id) == ["start", "done"]
    sports = get_run(digests[2]).output
    assert sports is not None and "## Sports" in sports["content"]


def test_timed_out_crew_is_stopped_and_the_child_replaced(
    worker: ManagedProcess, db: str, tmp_path: Path
) -> None:
    record = tmp_path / "executions.log"
    run_id = make_run("timeout-probe", {"record_path": str(record), "sleep_seconds": 3})
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED and row.error_message == "timed out after 1 s"
    assert row.started_at is not None
    # Had the crew thread survived, it would have written "done" by now.
    wait_until_past(row.started_at + timedelta(seconds=4))
    assert records(record, run_id) == ["start"]
    # The pool replaced the child that exited: both slots still run crews.
    followers = [digest_run(["technology"]) for _ in range(2)]
    for follower in followers:
        dispatch(follower)
    assert [wait_for(f).status for f in followers] == [RunStatus.COMPLETED, RunStatus.COMPLETED]


def test_cancelled_crew_is_stopped(
    worker: ManagedProcess, db: str, tmp_path: Path, redis_session: redis.Redis
) -> None:
    record = tmp_path / "executions.log"
    run_id = make_run("controlled", {"record_path": str(record), "sleep_seconds": 3})
    entry = pending_entry(redis_session, "controlled", run_id)
    dispatch(run_id, **entry)
    wait_for_record(record, run_id, "start")
    with session_scope() as session:
        assert runs.cancel(session, run_id, now=utcnow())
    wait_for_entry_acked(redis_session, entry)
    row = get_run(run_id)
    assert row.status == RunStatus.CANCELLED and row.started_at is not None
    wait_until_past(row.started_at + timedelta(seconds=4))
    assert records(record, run_id) == ["start"]
    assert get_run(run_id).status == RunStatus.CANCELLED
