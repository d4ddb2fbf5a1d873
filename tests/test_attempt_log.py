"""Per-attempt usage: the outcome UPDATEs append to ``attempt_log`` on PostgreSQL and on SQLite.

Also the places that show it: ``runs show`` (text and ``--json``) and ``status``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from app.cli import cli
from app.db import migrate, runs
from app.db.engine import engine_for
from app.db.models import PluginRow, PluginRun, RunStatus, User, utcnow
from app.execution import attempts
from app.execution.attempts import AttemptOutcome


def _entry(attempt: int, outcome: AttemptOutcome, tokens: int, error: str | None = None) -> dict[str, Any]:
    now = utcnow()
    usage = {
        "prompt_tokens": tokens - 1,
        "completion_tokens": 1,
        "total_tokens": tokens,
        "successful_requests": 1,
    }
    return attempts.record(
        attempt=attempt,
        outcome=outcome,
        started_at=now - timedelta(seconds=2),
        finished_at=now,
        usage=usage,
        error=error,
    )


@pytest.fixture(params=["postgresql", "sqlite"])
def session_maker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgresql":
        request.getfixturevalue("db")
        from app.config import get_settings

        url = get_settings().database_url
    else:
        url = f"sqlite:///{tmp_path / 'attempts.db'}"
        migrate.upgrade(url)
    yield sessionmaker(engine_for(url), expire_on_commit=False)


def _new_run(make: sessionmaker[Session]) -> uuid.UUID:
    with make.begin() as session:
        user = User(email=f"a-{uuid.uuid4().hex[:8]}@example.com")
        plugin = PluginRow(name=f"p-{uuid.uuid4().hex[:8]}", version="1.0.0")
        session.add_all([user, plugin])
        session.flush()
        run = PluginRun(user_id=user.id, plugin_id=plugin.id, status=RunStatus.QUEUED)
        session.add(run)
        session.flush()
        return run.run_id


def _claim(make: sessionmaker[Session], run_id: uuid.UUID) -> int:
    with make.begin() as session:
        claimed = runs.claim(session, run_id, now=utcnow(), lease_seconds=60)
    assert claimed is not None
    return claimed.attempt


def test_every_attempt_is_appended_with_its_tokens(session_maker: sessionmaker[Session]) -> None:
    run_id = _new_run(session_maker)
    first = _claim(session_maker, run_id)
    retry_entry = _entry(first, AttemptOutcome.RETRY, 7, error="LLM provider error (m): HTTP 503")
    with session_maker.begin() as session:
        assert runs.end_attempt(
            session,
            run_id,
            attempt=first,
            end=runs.AttemptEnd.retry("e", at=utcnow()),
            now=utcnow(),
            log_entry=retry_entry,
        )
    second = _claim(session_maker, run_id)
    done_entry = _entry(second, AttemptOutcome.COMPLETED, 30)
    with session_maker.begin() as session:
        assert runs.end_attempt(
            session,
            run_id,
            attempt=second,
            end=runs.AttemptEnd.completed({"content": "x"}),
            now=utcnow(),
            log_entry=done_entry,
        )
        # A stale writer (attempt 1) is fenced off: nothing appended.
        assert not runs.end_attempt(
            session,
            run_id,
            attempt=first,
            end=runs.AttemptEnd.failed("late"),
            now=utcnow(),
            log_entry=retry_entry,
        )
    with session_maker.begin() as session:
        status = runs.record_lost_attempt(session, run_id, log_entry=_entry(first, AttemptOutcome.LOST, 5))
        row = session.scalar(select(PluginRun).where(PluginRun.run_id == run_id))
    assert status is RunStatus.COMPLETED
    assert row is not None
    assert row.attempt_log == [retry_entry, done_entry, _entry_like(row.attempt_log[2], first, "lost", 5)]
    assert row.total_tokens == 7 + 30 + 5
    assert attempts.totals(row.attempt_log)["total_tokens"] == row.total_tokens


def _entry_like(entry: dict[str, Any], attempt: int, outcome: str, tokens: int) -> dict[str, Any]:
    assert (entry["attempt"], entry["outcome"], entry["total_tokens"]) == (attempt, outcome, tokens)
    return entry


def test_a_run_without_attempts_has_an_empty_log(session_maker: sessionmaker[Session]) -> None:
    run_id = _new_run(session_maker)
    with session_maker.begin() as session:
        row = session.scalar(select(PluginRun).where(PluginRun.run_id == run_id))
    assert row is not None and row.attempt_log is None and row.total_tokens == 0
    assert attempts.totals(row.attempt_log)["total_tokens"] == 0


def test_long_attempt_errors_are_cut() -> None:
    entry = _entry(1, AttemptOutcome.FAILED, 1, error="x" * 5000)
    assert len(entry["error"]) == attempts.MAX_ATTEMPT_ERROR_CHARS


def test_usage_of_no_llm_or_a_broken_one_is_zero() -> None:
    class Broken:
        def get_token_usage_summary(self) -> None:
            raise RuntimeError("no counter")

    assert attempts.usage_of(None)["total_tokens"] == 0
    assert attempts.usage_of(Broken())["total_tokens"] == 0


def test_runs_show_and_status_report_per_attempt_and_total_tokens(db: str) -> None:
    from app.config import get_settings

    make = sessionmaker(engine_for(get_settings().database_url), expire_on_commit=False)
    run_id = _new_run(make)
    first = _claim(make, run_id)
    with make.begin() as session:
        runs.end_attempt(
            session,
            run_id,
            attempt=first,
            end=runs.AttemptEnd.retry("e", at=utcnow()),
            now=utcnow(),
            log_entry=_entry(first, AttemptOutcome.RETRY, 11, error="HTTP 429 rate limited"),
        )
    second = _claim(make, run_id)
    with make.begin() as session:
        runs.end_attempt(
            session,
            run_id,
            attempt=second,
            end=runs.AttemptEnd.completed({"content": "done"}),
            now=utcnow(),
            log_entry=_entry(second, AttemptOutcome.COMPLETED, 40),
        )
        plugin = session.scalar(
            select(PluginRow.name)
            .join(PluginRun, PluginRun.plugin_id == PluginRow.id)
            .where(PluginRun.run_id == run_id)
        )
    runner = CliRunner()
    shown = runner.invoke(cli, ["runs", "show", str(run_id)])
    assert shown.exit_code == 0, shown.output
    assert "tokens 51 (prompt 49, completion 2, 2 requests) over 2 attempt(s)" in shown.output
    assert "attempt 1: retry" in shown.output and "HTTP 429 rate limited" in shown.output
    assert "attempt 2: completed" in shown.output
    as_json = json.loads(runner.invoke(cli, ["runs", "show", str(run_id), "--json"]).stdout)
    assert [e["total_tokens"] for e in as_json["attempt_log"]] == [11, 40]
    assert as_json["total_usage"]["total_tokens"] == 51
    status = json.loads(runner.invoke(cli, ["status", "--json"]).stdout)
    assert {row["plugin"]: row["tokens_24h"] for row in status}[plugin] == 51
