"""Batch writes for the scheduler's hot path: one statement per batch, whatever its size.

On PostgreSQL a whole batch travels as one JSON parameter unpacked by
``jsonb_to_recordset`` (one short, cached statement and one round trip; no
per-row bind parameters to build). Other databases (SQLite, the embedded
default) use a plain executemany. Both are ``ON CONFLICT DO NOTHING`` on the
schedule slot, so a duplicate slot is skipped, never an error.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db.models import PluginRun, UserPluginConfig

_PG_INSERT_RUNS = text(
    """
    INSERT INTO plugin_runs
        (run_id, user_id, plugin_id, config_id, trigger, scheduled_for, status, input, attempts,
         created_at, updated_at)
    SELECT r.run_id, r.user_id, r.plugin_id, r.config_id, r.trigger, r.scheduled_for, r.status, r.input, 0,
           :now, :now
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        run_id uuid, user_id int, plugin_id int, config_id int, trigger text,
        scheduled_for timestamptz, status text, input jsonb)
    ON CONFLICT (config_id, scheduled_for) DO NOTHING
    RETURNING run_id, config_id
    """
)

_PG_SET_NEXT_RUN = text(
    """
    UPDATE user_plugin_configs AS c SET next_run_at = v.next_run_at, updated_at = :now
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id int, next_run_at timestamptz)
    WHERE c.id = v.id
    """
)


_PG_MARK_QUEUED = text(
    """
    UPDATE plugin_runs AS r SET
        stream_id = v.sid,
        status = CASE WHEN r.status = 'processing' THEN r.status ELSE 'queued' END,
        queued_at = CASE WHEN r.status = 'processing' THEN r.queued_at ELSE :now END,
        updated_at = :now
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(rid uuid, sid text)
    WHERE r.run_id = v.rid AND r.status NOT IN ('completed', 'failed', 'cancelled')
    """
)
# Why NOT IN (terminal) rather than IN (pending, queued, processing), the same set under the
# status CHECK: an IN list can be answered from the status indexes, and a plan that reads
# every non-terminal run and hash-joins the batch against them costs O(runs waiting) per
# batch. During a 1M rush it was chosen from statistics taken while the table was small,
# and the rush went quadratic (bench/RESULTS.md). NOT IN is never an index condition, so
# the only index path left is the unique run_id probe.

_CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def plan_for_this_batch(session: Session) -> None:
    """Plan the rest of this transaction's statements for the tables as they are now.

    psycopg prepares a statement on its fifth execution in a connection, and PostgreSQL
    then keeps a generic plan made for the table sizes of that moment. The batch
    statements here run a thousand times in one rush while the tables they join grow by
    a million rows, so a plan made at the start must not be reused at the end. Planning
    one statement per thousand rows costs nothing measurable.
    """
    if _is_postgres(session):
        session.execute(_CUSTOM_PLANS)


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def insert_runs(
    session: Session, rows: list[dict[str, Any]], *, now: datetime
) -> list[tuple[uuid.UUID, int]]:
    """Insert run rows, skipping slots that already have a run; returns (run_id, config_id) inserted.

    Each row has run_id, user_id, plugin_id, config_id, trigger, scheduled_for, status, input.
    """
    if not rows:
        return []
    if _is_postgres(session):
        payload = json.dumps(rows, default=str)
        result = session.execute(_PG_INSERT_RUNS, {"rows": payload, "now": now})
        return [(_as_uuid(r.run_id), int(r.config_id)) for r in result]
    table = PluginRun.__table__
    stmt = (
        sqlite_insert(table)  # type: ignore[arg-type]
        .on_conflict_do_nothing(index_elements=["config_id", "scheduled_for"])
        .returning(table.c.run_id, table.c.config_id)
    )
    full = [{**row, "attempts": 0, "created_at": now, "updated_at": now} for row in rows]
    return [(r.run_id, r.config_id) for r in session.connection().execute(stmt, full)]


def set_next_run(session: Session, pairs: list[tuple[int, datetime | None]], *, now: datetime) -> None:
    """Set ``next_run_at`` of each config id in ``pairs``."""
    if not pairs:
        return
    if _is_postgres(session):
        payload = json.dumps([{"id": cid, "next_run_at": when} for cid, when in pairs], default=str)
        session.execute(_PG_SET_NEXT_RUN, {"rows": payload, "now": now})
        return
    table = UserPluginConfig.__table__
    session.connection().execute(
        update(table)  # type: ignore[arg-type]
        .where(table.c.id == bindparam("cid"))
        .values(next_run_at=bindparam("next"), updated_at=now),
        [{"cid": cid, "next": when} for cid, when in pairs],
    )


def mark_queued_pg(session: Session, params: list[dict[str, Any]], *, now: datetime) -> int:
    """PostgreSQL path of ``runs.mark_queued``: ``params`` are ``{"rid", "sid"}``; returns rows changed."""
    plan_for_this_batch(session)
    result = session.execute(_PG_MARK_QUEUED, {"rows": json.dumps(params, default=str), "now": now})
    return int(result.rowcount)  # type: ignore[attr-defined]
