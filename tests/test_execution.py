"""execute_run end to end on a real Celery worker (threads pool) against PostgreSQL (then SQLite) and Redis.

One worker serves the whole module. Outcomes are read from the run rows, the
stream's pending list and the files the test plugins append to on every
execution, never from mocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from app.db import runs
from app.db.engine import session_scope
from app.db.models import RunStatus, utcnow
from tests.conftest import using_database
from tests.plugins.harness import (
    PLUGINS_DIR,
    dispatch,
    get_run,
    is_pending,
    make_run,
    pending_entry,
    records,
    wait_for,
    wait_for_entry_acked,
    wait_for_record,
    wait_until_past,
)
from tests.processes import ManagedProcess, celery_worker, worker_args

pytestmark = pytest.mark.slow

SECRET = "sk-test-0123456789abcdef"
WORKER_ENV = {
    "PLUGINS_DIR": PLUGINS_DIR,
    "LEASE_SECONDS": "2",
    "MAX_ATTEMPTS": "3",
    "RETRY_BASE_SECONDS": "0.2",
    "RETRY_MAX_SECONDS": "0.5",
    "TEST_API_KEY": SECRET,
}


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest, pg_database: str, sqlite_database: str) -> Iterator[str]:
    """Every worker test on PostgreSQL, then on SQLite (the embedded default the demo runs on)."""
    with using_database(pg_database if request.param == "postgresql" else sqlite_database) as url:
        yield url


@pytest.fixture(scope="module")
def worker(database: str, redis_session: redis.Redis) -> Iterator[ManagedProcess]:
    with celery_worker(pool="threads", concurrency=4, env=WORKER_ENV) as process:
        yield process


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "executions.log"


def controlled(record: Path, **settings: object) -> dict[str, object]:
    return {"record_path": str(record), **settings}


def test_digest_run_completes_with_content_and_token_usage(worker: ManagedProcess, db: str) -> None:
    run_id = make_run(
        "daily-news-digest",
        {"topics": ["science", "health"], "feeds": ["bundled:sample-feed.xml"], "max_items": 3},
    )
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    out = row.output
    assert out is not None
    assert out["content"].startswith("# Your news digest")
    assert "## Science" in out["content"] and "## Health" in out["content"]
    assert "(https://news.example.com/science/" in out["content"]
    assert "## Technology" not in out["content"]
    assert [(t["name"], t["agent"]) for t in out["tasks"]] == [
        ("research", "News researcher"),
        ("write", "Digest writer"),
    ]
    assert out["tasks"][1]["raw"].strip() == out["content"]
    usage = out["token_usage"]
    assert usage["successful_requests"] == 2  # one call per agent, counted once
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert out["model"] == "offline/extractive"
    assert out["duration_seconds"] >= 0
    assert out["report"]["feed_problems"] == []
    assert row.attempts == 1 and row.completed_at is not None and row.lease_expires_at is None


def test_concurrent_crews_in_one_process_keep_their_own_inputs_and_usage(
    worker: ManagedProcess, db: str
) -> None:
    # Four crews at once in the threads pool: nothing leaks from one run into another.
    topic_sets = [["technology"], ["sports"], ["health"], ["business", "politics"]]
    run_ids = [
        make_run("daily-news-digest", {"topics": topics, "feeds": ["bundled:sample-feed.xml"]})
        for topics in topic_sets
    ]
    for run_id in run_ids:
        dispatch(run_id)
    sections = {"technology", "sports", "health", "business", "politics", "science", "entertainment"}
    for run_id, topics in zip(run_ids, topic_sets, strict=True):
        row = wait_for(run_id)
        assert row.status == RunStatus.COMPLETED, row.error_message
        assert row.output is not None
        found = {s for s in sections if f"## {s.title()}" in row.output["content"]}
        assert found == set(topics)
        assert row.output["token_usage"]["successful_requests"] == 2


def test_same_run_delivered_twice_executes_once(
    worker: ManagedProcess, db: str, record: Path, redis_session: redis.Redis
) -> None:
    # The crew outlives its first lease (3 s > LEASE_SECONDS=2): only the heartbeat keeps it.
    run_id = make_run("controlled", controlled(record, sleep_seconds=3))
    dispatch(run_id)
    dispatch(run_id)
    wait_for_record(record, run_id, "start")
    started = get_run(run_id)
    assert started.started_at is not None
    wait_until_past(started.started_at + timedelta(seconds=2.5))
    dispatch(run_id)  # would take the run over if the lease had not been renewed
    row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    entry = pending_entry(redis_session, "controlled", run_id)
    dispatch(run_id, **entry)  # after completion: nothing to do but acknowledge
    wait_for_entry_acked(redis_session, entry)
    assert get_run(run_id).attempts == 1
    assert records(record, run_id) == ["start", "done"]


def test_per_plugin_timeout_fails_the_run(worker: ManagedProcess, db: str, record: Path) -> None:
    run_id = make_run("timeout-probe", controlled(record, sleep_seconds=4))
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED
    assert row.error_message == "timed out after 1 s"
    assert row.output is None


def test_transient_error_is_retried_with_backoff_then_completes(
    worker: ManagedProcess, db: str, record: Path, redis_session: redis.Redis
) -> None:
    run_id = make_run("controlled", controlled(record, transient_failures=2))
    for attempt in (1, 2):
        entry = pending_entry(redis_session, "controlled", run_id)
        before = utcnow()
        dispatch(run_id, **entry)
        row = wait_for(run_id, RunStatus.PENDING, attempts=attempt)
        assert row.attempts == attempt
        assert "RateLimitError: provider says slow down" in (row.error_message or "")
        assert row.next_attempt_at is not None
        # Full jitter: somewhere in [0, min(cap, base * 2^(attempt-1))] after the failure.
        assert before <= row.next_attempt_at <= utcnow() + timedelta(seconds=0.5)
        assert not is_pending(redis_session, entry["stream"], entry["entry_id"])  # the entry's job is done
        wait_until_past(row.next_attempt_at)  # the outbox sweep would republish it now
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.COMPLETED, row.error_message
    assert row.attempts == 3 and row.next_attempt_at is None
    assert records(record, run_id) == ["start", "start", "start", "done"]


def test_transient_errors_give_up_after_max_attempts(worker: ManagedProcess, db: str, record: Path) -> None:
    run_id = make_run("controlled", controlled(record, transient_failures=10))
    for attempt in (1, 2, 3):
        dispatch(run_id)
        row = wait_for(run_id, RunStatus.PENDING, RunStatus.FAILED, attempts=attempt)
        if row.status == RunStatus.PENDING:
            assert row.next_attempt_at is not None
            wait_until_past(row.next_attempt_at)
    assert row.status == RunStatus.FAILED
    assert row.attempts == 3
    assert row.error_message is not None
    assert row.error_message.startswith("RateLimitError: provider says slow down (execution 3)")
    assert row.error_message.endswith("(gave up after 3 attempts)")


def test_permanent_error_fails_with_message_and_no_secret(
    worker: ManagedProcess, db: str, record: Path
) -> None:
    run_id = make_run("controlled", controlled(record, permanent_error=True, error_detail=": key="))
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED
    assert row.error_message == "ValueError: plugin exploded: key=***"
    assert SECRET not in (row.error_message or "")
    assert row.attempts == 1 and row.next_attempt_at is None
    assert records(record, run_id) == ["start"]


def test_cancelled_run_never_starts(
    worker: ManagedProcess, db: str, record: Path, redis_session: redis.Redis
) -> None:
    run_id = make_run("controlled", controlled(record))
    with session_scope() as session:
        assert runs.cancel(session, run_id, now=utcnow())
    entry = pending_entry(redis_session, "controlled", run_id)
    dispatch(run_id, **entry)
    wait_for_entry_acked(redis_session, entry)
    row = get_run(run_id)
    assert row.status == RunStatus.CANCELLED and row.attempts == 0
    assert records(record, run_id) == []


def test_cancel_during_run_stops_at_next_heartbeat(
    worker: ManagedProcess, db: str, record: Path, redis_session: redis.Redis
) -> None:
    run_id = make_run("controlled", controlled(record, sleep_seconds=6))
    entry = pending_entry(redis_session, "controlled", run_id)
    dispatch(run_id, **entry)
    wait_for_record(record, run_id, "start")
    with session_scope() as session:
        assert runs.cancel(session, run_id, now=utcnow())
    # The worker acknowledges the entry only once it has noticed the cancellation.
    wait_for_entry_acked(redis_session, entry)
    row = get_run(run_id)
    assert row.status == RunStatus.CANCELLED
    assert row.output is None and row.error_message == "cancelled"


def test_invalid_stored_input_fails_with_a_clear_message(
    worker: ManagedProcess, db: str, record: Path
) -> None:
    run_id = make_run("controlled", controlled(record, sleep_seconds="soon", colour="red"))
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED
    assert row.error_message == (
        "invalid input for plugin controlled: "
        "/: Additional properties are not allowed ('colour' was unexpected); "
        "/sleep_seconds: 'soon' is not of type 'number'"
    )
    assert records(record, run_id) == []


def test_missing_placeholder_input_fails_naming_it(worker: ManagedProcess, db: str, record: Path) -> None:
    run_id = make_run("controlled", controlled(record, drop_input=True))
    dispatch(run_id)
    row = wait_for(run_id)
    assert row.status == RunStatus.FAILED
    assert row.error_message == (
        "PermanentError: crew inputs are missing placeholder values: {word} (in task 'repeat' description)"
    )


def test_named_stream_entry_is_acked_when_the_run_is_terminal(
    worker: ManagedProcess, db: str, record: Path, redis_session: redis.Redis
) -> None:
    run_id = make_run("controlled", controlled(record))
    entry = pending_entry(redis_session, "controlled", run_id)
    dispatch(run_id, **entry)
    assert wait_for(run_id).status == RunStatus.COMPLETED
    wait_for_entry_acked(redis_session, entry)
    # A second entry for the finished run (a duplicate publish) is acked without executing.
    again = pending_entry(redis_session, "controlled", run_id)
    dispatch(run_id, **again)
    wait_for_entry_acked(redis_session, again)
    assert records(record, run_id) == ["start", "done"]


def test_worker_refuses_to_start_in_production_without_a_model(pg_database: str) -> None:
    env = {
        "APP_ENV": "production",
        "SECRET_KEY": "a-real-secret-value-for-the-test",
        "FLOWER_BASIC_AUTH": "admin:a-real-password",
        "FIRST_SIP_LLM_MODEL": "",
    }
    process = ManagedProcess("worker-production", worker_args(pool="threads", concurrency=1), env=env)
    process.start()
    try:
        assert process.proc is not None
        code = process.proc.wait(timeout=60)
    finally:
        process.kill()
    assert code != 0
    assert "refusing to start the worker: FIRST_SIP_LLM_MODEL is not set" in process.output
