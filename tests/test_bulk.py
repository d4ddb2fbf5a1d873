"""The scheduler's batch writes (app/db/bulk.py, runs.mark_queued) on PostgreSQL and on SQLite."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from app import api
from app.db import bulk, runs
from app.db.engine import get_engine, session_scope
from app.db.models import PluginRow, PluginRun, RunStatus, UserPluginConfig
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import unique_email

NOW = datetime(2026, 6, 1, 6, 0, 30, tzinfo=UTC)
SLOT = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)


@pytest.fixture
def config(on_both_databases, make_plugin) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    """(user id, plugin id, config id) of one configured schedule."""
    make_plugin("bulk-plugin")
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))
    user = api.create_user(unique_email(), "UTC")
    api.configure_plugin(user.id, "bulk-plugin", {"preferred_time": "06:00"})
    with session_scope() as session:
        plugin_id = session.scalar(select(PluginRow.id).where(PluginRow.name == "bulk-plugin"))
        config_id = session.scalar(select(UserPluginConfig.id).where(UserPluginConfig.user_id == user.id))
    assert plugin_id is not None and config_id is not None
    return user.id, plugin_id, config_id


def _row(user_id: int, plugin_id: int, config_id: int, slot: datetime = SLOT) -> dict[str, object]:
    return {
        "run_id": uuid.uuid4(),
        "user_id": user_id,
        "plugin_id": plugin_id,
        "config_id": config_id,
        "trigger": "schedule",
        "scheduled_for": slot,
        "status": RunStatus.PENDING.value,
        "input": {"topics": ["science"], "nested": {"a": [1, 2]}},
    }


def test_insert_runs_returns_what_it_inserted_and_skips_a_taken_slot(config) -> None:  # type: ignore[no-untyped-def]
    first, again, later = _row(*config), _row(*config), _row(*config, slot=SLOT + timedelta(days=1))
    with session_scope() as session:
        assert bulk.insert_runs(session, [first], now=NOW) == [(first["run_id"], config[2])]
    with session_scope() as session:  # same slot again (a second beat): skipped, not an error
        inserted = bulk.insert_runs(session, [again, later], now=NOW)
    assert inserted == [(later["run_id"], config[2])]
    with session_scope() as session:
        stored = session.scalars(select(PluginRun).order_by(PluginRun.id)).all()
    assert [r.run_id for r in stored] == [first["run_id"], later["run_id"]]
    assert stored[0].input == first["input"] and stored[0].scheduled_for == SLOT
    assert stored[0].status == RunStatus.PENDING and stored[0].attempts == 0 and stored[0].created_at == NOW


def test_set_next_run_sets_and_clears(config) -> None:  # type: ignore[no-untyped-def]
    _, _, config_id = config
    with session_scope() as session:
        bulk.set_next_run(session, [(config_id, SLOT + timedelta(days=1))], now=NOW)
    with session_scope() as session:
        row = session.get(UserPluginConfig, config_id)
        assert row is not None and row.next_run_at == SLOT + timedelta(days=1) and row.updated_at == NOW
        bulk.set_next_run(session, [(config_id, None)], now=NOW)
    with session_scope() as session:
        assert (
            session.scalar(select(UserPluginConfig.next_run_at).where(UserPluginConfig.id == config_id))
            is None
        )


def test_mark_queued_moves_waiting_runs_keeps_processing_and_leaves_terminal(config) -> None:  # type: ignore[no-untyped-def]
    rows = [_row(*config, slot=SLOT + timedelta(days=d)) for d in range(4)]
    with session_scope() as session:
        bulk.insert_runs(session, rows, now=NOW)
    statuses = [RunStatus.PENDING, RunStatus.QUEUED, RunStatus.PROCESSING, RunStatus.COMPLETED]
    with session_scope() as session:
        for row, status in zip(rows, statuses, strict=True):
            session.execute(
                update(PluginRun)
                .where(PluginRun.run_id == row["run_id"])
                .values(status=status, updated_at=NOW)
            )
    later = NOW + timedelta(seconds=5)
    with session_scope() as session:
        changed = runs.mark_queued(session, [(r["run_id"], f"1-{i}") for i, r in enumerate(rows)], now=later)  # type: ignore[misc]
    assert changed == 3
    with session_scope() as session:
        stored = {r.run_id: r for r in session.scalars(select(PluginRun))}
    pending, queued, processing, completed = (stored[r["run_id"]] for r in rows)  # type: ignore[index]
    assert (pending.status, pending.stream_id, pending.queued_at) == (RunStatus.QUEUED, "1-0", later)
    assert (queued.status, queued.stream_id) == (RunStatus.QUEUED, "1-1")
    assert (processing.status, processing.stream_id) == (RunStatus.PROCESSING, "1-2")
    assert (completed.status, completed.stream_id, completed.updated_at) == (RunStatus.COMPLETED, None, NOW)


def test_mark_queued_plan_never_reads_the_waiting_runs_by_status(config) -> None:  # type: ignore[no-untyped-def]
    """The 1M-rush regression: a generic plan hash-joining the batch with every waiting run."""
    if get_engine().dialect.name != "postgresql":
        pytest.skip("plans are PostgreSQL's")
    user_id, plugin_id, config_id = config
    # A table the size it had when the bad plan was cached, not analysed since (as mid-rush).
    with get_engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO plugin_runs (run_id, user_id, plugin_id, config_id, trigger, scheduled_for,"
                " status, input, attempts, created_at, updated_at)"
                " SELECT gen_random_uuid(), :u, :p, :c, 'schedule', :slot + g * interval '1 day',"
                " 'queued', '{}', 0, :now, :now FROM generate_series(1, 8000) g"
            ),
            {"u": user_id, "p": plugin_id, "c": config_id, "slot": SLOT, "now": NOW},
        )
        batch = json.dumps([{"rid": str(uuid.uuid4()), "sid": "1-1"}])  # no quote: safe as a literal
        # The plan PostgreSQL would cache after psycopg prepares the statement.
        conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        conn.exec_driver_sql(
            "PREPARE mq(timestamptz, text) AS "
            + bulk._PG_MARK_QUEUED.text.replace(":now", "$1").replace(":rows", "$2")
        )
        plan = "\n".join(
            conn.exec_driver_sql(f"EXPLAIN EXECUTE mq('{NOW.isoformat()}', '{batch}')").scalars()
        )
        conn.exec_driver_sql("DEALLOCATE mq")
    assert "ix_plugin_runs_status" not in plan, plan
