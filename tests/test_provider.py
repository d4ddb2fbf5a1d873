"""A real Celery worker talking to an OpenAI-protocol server through CrewAI's real OpenAI provider.

The worker runs with ``FIRST_SIP_LLM_MODEL=openai/gpt-4o-mini``, ``OPENAI_BASE_URL``
pointing at :class:`tests.llm_server.LLMServer`, a fake key, a 2-second request
timeout and one client retry. What the server saw (requests, their times, the
usage it reported) is compared with what the run rows recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis

from app.db.models import PluginRun, RunStatus
from tests.llm_server import LLMServer, Reply, Request
from tests.plugins.harness import PLUGINS_DIR, dispatch, make_run, wait_for, wait_until_past
from tests.processes import ManagedProcess, celery_worker

pytestmark = pytest.mark.slow

SECRET = "sk-test-provider-0123456789abcdefXYZ"
MAX_RETRIES = 1
MODEL = "openai/gpt-4o-mini"


def worker_env(server: LLMServer, **extra: str) -> dict[str, str]:
    return {
        **server.env(api_key=SECRET),
        "PLUGINS_DIR": PLUGINS_DIR,
        "LEASE_SECONDS": "2",
        "MAX_ATTEMPTS": "3",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "0.5",
        "FIRST_SIP_LLM_TIMEOUT_SECONDS": "2",
        "FIRST_SIP_LLM_MAX_RETRIES": str(MAX_RETRIES),
        **extra,
    }


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with LLMServer() as llm_server:
        yield llm_server


@pytest.fixture(scope="module")
def worker(server: LLMServer, pg_database: str, redis_session: redis.Redis) -> Iterator[ManagedProcess]:
    with celery_worker(pool="threads", concurrency=2, env=worker_env(server)) as process:
        yield process


@pytest.fixture
def llm(server: LLMServer) -> LLMServer:
    """The module's server with a clean slate for this test."""
    server.reset()
    server.script = None
    server.default = Reply()
    server.rehang()
    return server


def chain_run(steps: int = 2, *, plugin: str = "llm-chain") -> Any:
    return make_run(plugin, {"steps": steps, "topic": "tea"})


def retry_until_done(run_id: Any, *, attempts: int) -> PluginRun:
    """Dispatch the run for ``attempts`` attempts (as the outbox sweep would); the final row."""
    row = None
    for attempt in range(1, attempts + 1):
        dispatch(run_id)
        row = wait_for(run_id, RunStatus.PENDING, RunStatus.COMPLETED, RunStatus.FAILED, attempts=attempt)
        if row.status != RunStatus.PENDING:
            return row
        assert row.next_attempt_at is not None
        wait_until_past(row.next_attempt_at)
    assert row is not None
    return row


def as_text(row: PluginRun) -> str:
    """Everything the run row holds, as one string (to look for secrets)."""
    values = {c.name: getattr(row, c.name) for c in PluginRun.__table__.columns}
    return json.dumps(values, default=str)


def usage_of(requests: list[Request]) -> dict[str, int]:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for request in requests:
        for key in total:
            total[key] += (request.usage or {}).get(key, 0)
    return total


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value)


# ---- happy paths ------------------------------------------------------------------------------


def test_a_digest_run_records_exactly_the_usage_the_provider_reported(
    worker: ManagedProcess, llm: LLMServer, db: str
) -> None:
    run_id = make_run(
        "daily-news-digest", {"topics": ["science"], "feeds": ["bundled:sample-feed.xml"], "max_items": 2}
    )
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    requests = llm.completions()
    assert len(requests) == 2  # researcher, writer: one request each
    assert all(r.model == "gpt-4o-mini" and not r.stream for r in requests)
    assert all(r.authorization == f"Bearer {SECRET}" for r in requests)
    sent = usage_of(requests)
    assert row.output is not None
    assert row.output["model"] == MODEL
    assert row.output["content"].startswith("This is the test server's answer")
    usage = row.output["token_usage"]
    assert {k: usage[k] for k in sent} == sent
    assert usage["successful_requests"] == 2
    assert row.total_tokens == sent["total_tokens"]
    assert row.attempt_log is not None and len(row.attempt_log) == 1
    (entry,) = row.attempt_log
    assert entry["outcome"] == "completed" and entry["attempt"] == 1 and entry["error"] is None
    assert {k: entry[k] for k in sent} == sent


def test_a_digest_whose_model_writes_html_and_script_links_is_stored_sanitised(
    worker: ManagedProcess, llm: LLMServer, db: str
) -> None:
    """The model's markdown is untrusted (it was written from feed text): stored without HTML."""
    llm.default = Reply(
        content="Thought: done\nFinal Answer: ## Science\n<script>alert(1)</script>"
        "&lt;img src=x onerror=alert(2)&gt; [click](javascript:alert(3)) ![i](data:image/png;base64,AA) "
        "[story](https://example.com/story)"
    )
    run_id = make_run("daily-news-digest", {"topics": ["science"], "feeds": ["bundled:sample-feed.xml"]})
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    assert row.output is not None
    stored = json.dumps(row.output["content"]) + json.dumps(row.output["tasks"])
    for bad in ("<script", "alert(1)", "onerror", "<img", "javascript:", "data:image"):
        assert bad not in stored, (bad, row.output["content"])
    assert row.output["content"].startswith("## Science")
    assert "[story](https://example.com/story)" in row.output["content"]


# ---- transient provider failures ---------------------------------------------------------------


def test_a_429_costs_one_request_plus_the_client_retry_and_the_retry_waits_for_retry_after(
    worker: ManagedProcess, llm: LLMServer, db: str
) -> None:
    retry_after = 2
    llm.script = lambda request: Reply(status=429, retry_after=retry_after) if request.index <= 2 else None
    run_id = chain_run(2)
    dispatch(run_id)
    row = wait_for(run_id, RunStatus.PENDING, attempts=1)
    first = llm.completions()
    # One LLM call of one attempt: the request and the client's own retry, nothing more.
    assert len(first) == 1 + MAX_RETRIES
    assert [r.status for r in first] == [429, 429]
    assert row.next_attempt_at is not None
    assert row.next_attempt_at.timestamp() >= first[-1].at + retry_after
    assert row.error_message is not None
    assert f"LLM provider error ({MODEL} via 127.0.0.1): HTTP 429 rate limited, Retry-After 2 s" in (
        row.error_message
    )
    wait_until_past(row.next_attempt_at)
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    assert row.attempts == 2 and llm.count() == 4
    assert row.attempt_log is not None
    assert [e["outcome"] for e in row.attempt_log] == ["retry", "completed"]
    assert row.attempt_log[0]["total_tokens"] == 0 and "HTTP 429" in row.attempt_log[0]["error"]
    assert row.total_tokens == usage_of(llm.completions())["total_tokens"]


def test_a_5xx_is_transient_and_retried(worker: ManagedProcess, llm: LLMServer, db: str) -> None:
    # The first call succeeds, the second fails with 503 twice: the attempt's spend is kept.
    llm.script = lambda request: Reply(status=503) if request.index in (2, 3) else None
    run_id = chain_run(2)
    row = retry_until_done(run_id, attempts=3)
    assert row.status == RunStatus.COMPLETED, row.error_message
    assert row.attempts == 2
    assert row.attempt_log is not None
    failed, completed = row.attempt_log
    assert failed["outcome"] == "retry" and "HTTP 503 server error" in failed["error"]
    assert failed["successful_requests"] == 1 and failed["total_tokens"] > 0
    assert completed["outcome"] == "completed" and completed["successful_requests"] == 2
    assert row.total_tokens == failed["total_tokens"] + completed["total_tokens"]
    assert row.total_tokens == usage_of(llm.completions())["total_tokens"]


def test_a_hung_provider_times_out_per_request_and_the_run_is_retried(
    worker: ManagedProcess, llm: LLMServer, db: str
) -> None:
    llm.script = lambda request: Reply(hang=True, hang_seconds=30) if request.index <= 2 else None
    run_id = chain_run(1)
    dispatch(run_id)
    row = wait_for(run_id, RunStatus.PENDING, attempts=1)
    assert row.error_message is not None
    assert "no answer within the request timeout (APITimeoutError)" in row.error_message
    assert llm.count() == 1 + MAX_RETRIES
    wait_until_past(row.next_attempt_at)
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    ended = row.completed_at
    assert ended is not None
    time.sleep(3)
    assert llm.count(since=ended.timestamp()) == 0


def test_a_crew_the_framework_gave_up_on_makes_no_further_request(
    worker: ManagedProcess, llm: LLMServer, db: str
) -> None:
    # Four-second run limit, 1.5 s per answer, five calls: the limit fires during the third.
    llm.default = Reply(delay=1.5)
    run_id = chain_run(5, plugin="llm-chain-limited")
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED
    assert row.error_message == "timed out after 4 s"
    assert row.completed_at is not None
    before_end = llm.count()
    assert 1 <= before_end <= 3
    time.sleep(5)  # two more calls' worth: an abandoned crew thread would have made them
    assert llm.count(since=row.completed_at.timestamp()) == 0
    assert llm.count() == before_end
    assert row.attempt_log is not None and row.attempt_log[0]["outcome"] == "timed_out"


def test_a_malformed_answer_is_transient_and_names_the_provider(
    worker: ManagedProcess, llm: LLMServer, db: str
) -> None:
    llm.script = lambda request: Reply(malformed=True) if request.index == 1 else None
    run_id = chain_run(1)
    dispatch(run_id)
    row = wait_for(run_id, RunStatus.PENDING, attempts=1)
    assert row.error_message is not None
    assert f"LLM provider error ({MODEL}): malformed response: JSONDecodeError" in row.error_message
    assert llm.count() == 1  # a 200 is not retried by the client
    wait_until_past(row.next_attempt_at)
    dispatch(run_id)
    assert wait_for(run_id).status == RunStatus.COMPLETED


def test_a_truncated_answer_is_transient(worker: ManagedProcess, llm: LLMServer, db: str) -> None:
    llm.script = lambda request: Reply(truncated=True) if request.index <= 1 + MAX_RETRIES else None
    run_id = chain_run(1)
    dispatch(run_id)
    row = wait_for(run_id, RunStatus.PENDING, attempts=1)
    assert row.error_message is not None
    assert "truncated response: RemoteProtocolError" in row.error_message


# ---- permanent provider failures ---------------------------------------------------------------


def test_a_401_fails_permanently_and_the_key_is_nowhere(
    worker: ManagedProcess, llm: LLMServer, db: str
) -> None:
    llm.default = Reply(status=401)
    run_id = chain_run(2)
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED
    assert row.attempts == 1 and llm.count() == 1  # never retried, by anyone
    assert row.error_message is not None
    assert row.error_message.startswith(
        f"LLM provider error ({MODEL} via 127.0.0.1): HTTP 401 authentication failed (check the API key)"
    )
    time.sleep(0.5)  # let the worker's last log lines arrive
    assert SECRET not in as_text(row)
    assert SECRET not in worker.output
    assert SECRET[-12:] not in worker.output  # not even the part the provider echoes back
    # One line from us for the failure; CrewAI's own error lines (and its echo of the key) demoted.
    lines = [line for line in worker.output.splitlines() if "HTTP 401" in line or "API call failed" in line]
    assert len([line for line in lines if "run failed: LLM provider error" in line]) == 1, lines
    assert "run failed with a permanent error" not in worker.output  # no second line with a traceback
    assert "Error executing listener" not in worker.output


def test_an_unknown_model_is_permanent(worker: ManagedProcess, llm: LLMServer, db: str) -> None:
    llm.default = Reply(status=404)
    run_id = chain_run(1)
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED and row.attempts == 1
    assert "HTTP 404 not found (unknown model or endpoint?)" in (row.error_message or "")


def test_next_attempt_waits_for_a_retry_after_longer_than_the_backoff(
    worker: ManagedProcess, llm: LLMServer, db: str
) -> None:
    # Retry-After 3 s is six times RETRY_MAX_SECONDS (0.5 s): the backoff alone would retry sooner.
    llm.default = Reply(status=429, retry_after=3)
    run_id = chain_run(1)
    dispatch(run_id)
    row = wait_for(run_id, RunStatus.PENDING, attempts=1)
    last = llm.completions()[-1]
    assert row.next_attempt_at is not None
    assert row.next_attempt_at.timestamp() >= last.at + 3
    assert row.next_attempt_at - timedelta(seconds=4) <= datetime.fromtimestamp(
        last.at, row.next_attempt_at.tzinfo
    )
