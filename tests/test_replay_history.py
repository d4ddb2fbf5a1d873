"""Dead-letter replay never rewrites history, and the loose ends around dead letters and retries.

* a replay leaves terminal runs as they are unless asked (``--failed``), and keeps the earlier error;
* a replayed run gets its own retry budget;
* a consumer killed between dead-lettering and failing a run: the next consumer reconciles it;
* the backlog rule is bounded: a poison run is dead-lettered even under a sustained backlog;
* a ``.env`` next to the worker never becomes its configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from typer.testing import CliRunner

from app import keys
from app.cli import cli
from app.config import get_settings
from app.db import runs
from app.db.engine import session_scope
from app.db.models import RunStatus
from app.errors import TransientError
from app.execution.lease import Lease
from app.execution.worker import RETRY_SCHEDULED, Attempt, _failure
from app.outbox import sweep
from app.redis_client import get_redis
from app.streams import dlq
from app.streams.envelope import Reason
from app.streams.groups import ensure_group
from tests.conftest import ROOT
from tests.streams_support import (
    add_plugin,
    age,
    broker_tasks,
    dead_letters,
    later,
    make_consumer,
    pending,
    publish,
    run_row,
    set_run,
)

runner = CliRunner()
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _bury(plugin: str, *, reason: Reason = Reason.MAX_DELIVERIES, message: str = "delivered 6 times") -> str:
    """Read the plugin's next entry and dead-letter it (the consumer's first half); returns the ref."""
    client = get_redis(decode_responses=False)
    ensure_group(client, plugin)
    reply: Any = client.xreadgroup(keys.GROUP, "c1", {keys.stream(plugin): ">"}, count=1)
    ((_key, [(entry_id, fields)]),) = reply
    dead_id = dlq.move_to_dead_letters(
        client,
        plugin=plugin,
        entry_id=entry_id.decode(),
        fields=fields,
        reason=reason,
        message=message,
        delivery_count=6,
        consumer="c1",
        now=NOW,
    )
    return f"{plugin}/{dead_id}"


def _fail_by_dead_letter(run_id: uuid.UUID, reason: Reason = Reason.MAX_DELIVERIES) -> None:
    """The consumer's second half: the run failed with the dead letter's reason."""
    set_run(
        run_id, status=RunStatus.FAILED, error_message=runs.dead_letter_error(reason, "delivered 6 times")
    )


def test_replay_leaves_another_outcome_alone_unless_asked(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    own, other, done = publish("alpha", 3)
    refs = [_bury("alpha") for _ in range(3)]
    _fail_by_dead_letter(own)
    # Another user's run that failed on its own (its worker recorded the error) and a completed one.
    set_run(other, status=RunStatus.FAILED, error_message="PermanentError: the feed is gone", attempts=2)
    set_run(done, status=RunStatus.COMPLETED)

    result = runner.invoke(cli, ["dlq", "replay", "--all"])
    assert result.exit_code == 1  # some dead letters kept
    assert f"{refs[1]}: run {other} kept" in result.stdout and "--failed" in result.stdout
    assert run_row(other).status == RunStatus.FAILED
    assert run_row(other).error_message == "PermanentError: the feed is gone"  # untouched
    assert run_row(done).status == RunStatus.COMPLETED
    replayed = run_row(own)
    assert replayed.status == RunStatus.QUEUED and replayed.error_message is None
    assert replayed.replays and replayed.replays[0]["error"].startswith("dead-lettered (max_deliveries)")
    assert {d.run_id for d in dlq.list_dead_letters("alpha")} == {other, done}

    # On purpose: --failed replays the failed run, and its earlier error is kept in its history.
    result = runner.invoke(cli, ["dlq", "replay", refs[1], "--failed"])
    assert result.exit_code == 0, result.output
    row = run_row(other)
    assert row.status == RunStatus.QUEUED and row.attempts_base == 2
    assert row.replays == [
        {
            "at": row.replays[0]["at"],
            "status": "failed",
            "error": "PermanentError: the feed is gone",
            "attempts": 2,
        }
    ]
    # Completed stays completed, even with --failed.
    assert runner.invoke(cli, ["dlq", "replay", refs[2], "--failed"]).exit_code == 1
    assert run_row(done).status == RunStatus.COMPLETED


def test_a_replayed_run_gets_its_own_retry_budget(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    settings = get_settings()
    (run_id,) = publish("alpha", 1)
    ref = _bury("alpha")
    set_run(run_id, attempts=settings.max_attempts)  # the budget was used up
    _fail_by_dead_letter(run_id)
    dlq.replay(ref)
    with session_scope() as session:
        claimed = runs.claim(session, run_id, now=datetime.now(UTC), lease_seconds=60)
    assert claimed is not None and claimed.attempt == settings.max_attempts + 1  # the fence still grows
    assert claimed.base == settings.max_attempts
    lease = Lease(run_id, attempt=claimed.attempt, lease_seconds=60, base=claimed.base)
    attempt = Attempt(lease, claimed.started_at, "offline/extractive")
    finish = _failure(attempt, TransientError("provider hiccup"), settings)
    assert finish.status == RETRY_SCHEDULED  # try 1 of a fresh budget, not "gave up"
    row = run_row(run_id)
    assert row.status == RunStatus.PENDING and f"attempt 1/{settings.max_attempts}" in (
        row.error_message or ""
    )
    # Without a replay, the same attempt number would have given up.
    assert "gave up" not in (row.error_message or "")


def test_next_consumer_fails_runs_a_killed_consumer_dead_lettered(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    orphan, replayed, running = publish("alpha", 3)
    dead = [_bury("alpha") for _ in range(3)]
    # Killed right after moving the entries: the runs are still queued. One of them was since
    # replayed (touched after the dead letter), one is claimed again by a live worker.
    set_run(replayed, updated_at=NOW + timedelta(minutes=1))
    set_run(running, status=RunStatus.PROCESSING, updated_at=NOW + timedelta(minutes=1))
    consumer = make_consumer("c2")
    consumer.initialize(NOW + timedelta(minutes=2))
    row = run_row(orphan)
    assert row.status == RunStatus.FAILED
    assert row.error_message == runs.dead_letter_error(Reason.MAX_DELIVERIES, "delivered 6 times")
    assert run_row(replayed).status == RunStatus.QUEUED
    assert run_row(running).status == RunStatus.PROCESSING
    # The outbox never publishes the failed run again, whatever time it is.
    redis_client.delete(keys.stream("alpha"))  # even with its entry trimmed away
    sweep(now=later(datetime.now(UTC), 86400))
    assert run_row(orphan).status == RunStatus.FAILED
    assert len(dead) == 3 and len(dlq.list_dead_letters("alpha")) == 3  # dead letters kept


def test_backlog_rule_is_bounded_for_a_poison_run(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    max_attempts = get_settings().max_attempts
    add_plugin("alpha")
    consumer = make_consumer("c1", max_deliveries=4)
    now = datetime.now(UTC)
    consumer.initialize(now)
    consumer.loop_once(now, block=False)
    waiting, poison = publish("alpha", 2)
    consumer.loop_once(now, block=False)
    entries = {r: run_row(r).stream_id for r in (waiting, poison)}
    # A sustained backlog: Celery's queue never empties (the two tasks stay in it throughout).
    assert len(broker_tasks(redis_client)) == 2
    expired = now - timedelta(seconds=1)
    set_run(waiting, status=RunStatus.PROCESSING, lease_expires_at=expired, attempts=1)
    set_run(poison, status=RunStatus.PROCESSING, lease_expires_at=expired, attempts=max_attempts)
    for step in range(1, 12):
        age(redis_client, "alpha")
        consumer.loop_once(later(now, 60 * step), block=False)
        # Each re-dispatched worker dies again: the run stays processing with an expired lease.
        for run_id in (poison, waiting):
            if run_row(run_id).status == RunStatus.PROCESSING:
                set_run(run_id, lease_expires_at=expired)
    letters = dead_letters("alpha")
    assert [letter["dlq.original_id"] for letter in letters] == [entries[poison]]
    assert run_row(poison).status == RunStatus.FAILED
    # The run claimed once stays pending behind the backlog, as before.
    assert entries[waiting] in pending(redis_client, "alpha")


def test_worker_never_reads_a_stray_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "FS_DOTENV_MARKER=leaked\nREDIS_KEY_PREFIX=from-dotenv\nOPENAI_API_KEY=sk-from-dotenv\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FS_DOTENV_MARKER", "OPENAI_API_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    env.pop("PYTHON_DOTENV_DISABLED", None)

    def python(code: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    # The file is where python-dotenv looks (so without the fix CrewAI's import would load it)...
    assert python("import dotenv; print(dotenv.find_dotenv())") == str(tmp_path / ".env")
    # ...and the worker's start-up and CrewAI's import leave the environment and settings alone.
    probe = (
        "import os\n"
        "from app.worker_hooks import check_worker\n"
        "check_worker()\n"
        "from app.execution import runtime\n"
        "runtime.prepare()\n"
        "import crewai.project\n"
        "from app.config import get_settings\n"
        "get_settings.cache_clear()\n"
        "print(os.environ.get('FS_DOTENV_MARKER'), os.environ.get('OPENAI_API_KEY'),"
        " get_settings().redis_key_prefix)\n"
    )
    assert python(probe) == f"None None {get_settings().redis_key_prefix}"
