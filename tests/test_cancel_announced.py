"""A cancelled run's crew stops at once: the cancel is announced through Redis, not found at a heartbeat.

The worker's lease heartbeat is 20 s apart here (``LEASE_SECONDS=60``), far
longer than the test: only the announcement can stop the crew in time. The
first LLM request hangs while the run is cancelled; once the worker says it
stopped the crew, the request is answered, and the server must see no request
after the cancel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from app import api
from app.db.models import RunStatus
from tests.llm_server import LLMServer, Reply
from tests.plugins.harness import PLUGINS_DIR, dispatch, get_run, make_run
from tests.processes import ManagedProcess, celery_worker

pytestmark = pytest.mark.slow


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(script=lambda r: Reply(hang=True, hang_seconds=60) if r.index == 1 else None) as llm:
        yield llm


@pytest.fixture
def worker(server: LLMServer, pg_database: str, redis_session: redis.Redis) -> Iterator[ManagedProcess]:
    env = {
        **server.env(),
        "PLUGINS_DIR": PLUGINS_DIR,
        "LEASE_SECONDS": "60",
        "FIRST_SIP_LLM_TIMEOUT_SECONDS": "60",
        "FIRST_SIP_LLM_MAX_RETRIES": "0",
    }
    with celery_worker(pool="threads", concurrency=1, env=env) as process:
        yield process


def test_a_cancelled_run_makes_no_provider_request_after_the_cancel(
    worker: ManagedProcess, server: LLMServer, db: str
) -> None:
    run_id = make_run("llm-chain", {"steps": 4, "topic": "tea"})
    dispatch(run_id)
    server.wait_for(1)  # the crew's first call is in flight (and hangs)
    cancelled_at = time.time()
    assert api.cancel_run(run_id).status == RunStatus.CANCELLED
    worker.wait_for(rf"run {run_id} was cancelled: its crew makes no further call", timeout=15)
    server.release()  # the first call answers; the crew would go on to the second
    worker.wait_for(r"run was cancelled while running; stopped", timeout=15)
    assert server.count(since=cancelled_at) == 0
    assert server.count() == 1
    assert get_run(run_id).status == RunStatus.CANCELLED
