"""A worker killed with SIGKILL mid-run: the run is executed again once its lease expires, and completes once.

No other worker runs during this module, so each dispatch goes to the worker
the test chose. LEASE_SECONDS is 2 to keep the wait short.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from app.db.models import RunStatus
from tests.plugins.harness import (
    PLUGINS_DIR,
    dispatch,
    get_run,
    make_run,
    records,
    wait_for,
    wait_for_record,
    wait_until_past,
)
from tests.processes import celery_worker

pytestmark = pytest.mark.slow

WORKER_ENV = {"PLUGINS_DIR": PLUGINS_DIR, "LEASE_SECONDS": "2"}


def test_sigkilled_run_is_executed_again_after_its_lease_expires(
    pg_database: str, db: str, redis_session: redis.Redis, tmp_path: Path
) -> None:
    record = tmp_path / "executions.log"
    run_id = make_run("controlled", {"record_path": str(record), "sleep_seconds": 3})
    with celery_worker(pool="prefork", concurrency=1, env=WORKER_ENV) as doomed:
        dispatch(run_id)
        wait_for_record(record, run_id, "start")
        doomed.kill()  # SIGKILL to the worker's process group: parent and pool child
    crashed = get_run(run_id)
    assert crashed.status == RunStatus.PROCESSING and crashed.attempts == 1
    assert crashed.lease_expires_at is not None
    with celery_worker(pool="prefork", concurrency=1, env=WORKER_ENV):
        wait_until_past(crashed.lease_expires_at)
        dispatch(run_id)  # what the stream consumer's reclaim does after the visibility timeout
        row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    assert row.attempts == 2
    assert records(record, run_id) == ["start", "start", "done"]
