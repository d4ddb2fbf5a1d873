"""Workers of their own against the test LLM server: streaming answers, and a prefork pool.

Their own module: each test's worker must be the only one consuming the runs queue.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from app.db.models import RunStatus
from tests.llm_server import LLMServer, Reply
from tests.plugins.harness import dispatch, wait_for
from tests.processes import celery_worker
from tests.test_provider import chain_run, usage_of, worker_env

pytestmark = pytest.mark.slow


@pytest.fixture
def server() -> Iterator[LLMServer]:
    with LLMServer(default=Reply()) as llm_server:
        yield llm_server


def test_a_streaming_run_records_the_usage_chunk(
    server: LLMServer, db: str, redis_session: redis.Redis
) -> None:
    env = worker_env(server, FIRST_SIP_LLM_STREAM="true")
    with celery_worker(pool="threads", concurrency=1, env=env):
        run_id = chain_run(3)
        dispatch(run_id)
        row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    requests = server.completions()
    assert len(requests) == 3
    assert all(r.stream and r.include_usage for r in requests)
    sent = usage_of(requests)
    assert row.output is not None
    assert {k: row.output["token_usage"][k] for k in sent} == sent
    assert row.total_tokens == sent["total_tokens"] > 0


def test_a_prefork_worker_checks_the_llm_in_its_parent_and_runs_crews_in_children(
    server: LLMServer, db: str, redis_session: redis.Redis
) -> None:
    with celery_worker(pool="prefork", concurrency=2, env=worker_env(server)):
        run_ids = [chain_run(2) for _ in range(3)]
        for run_id in run_ids:
            dispatch(run_id)
        rows = [wait_for(run_id) for run_id in run_ids]
    assert all(row.status == RunStatus.COMPLETED for row in rows), [r.error_message for r in rows]
    assert server.count() == 6
    assert sum(row.total_tokens for row in rows) == server.usage_sent()["total_tokens"]
