"""The transactional outbox: ``plugin_runs`` rows are the truth, stream entries follow them.

Guarantees (every publisher commits its rows before it publishes them, so no
entry ever names a run without a row; this module repairs what a crash in
between, or a lost entry, leaves behind):

* :func:`sweep` re-publishes every run that should have a live stream entry
  but may not: ``pending`` rows older than ``OUTBOX_GRACE_SECONDS`` (a crash
  between commit and publish), ``pending`` retries whose ``next_attempt_at``
  has come, and ``queued``/expired-``processing`` rows whose stream entry is
  gone (trimmed, or Redis lost its data). Publishing twice is harmless: the
  worker's compare-and-set claim makes a duplicate a no-op.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app import keys
from app.config import get_settings
from app.db.engine import session_scope
from app.db.models import PluginRow, PluginRun, RunStatus
from app.redis_client import get_redis
from app.streams import producer
from app.streams.producer import RunRef

log = logging.getLogger(__name__)

#: Most runs one sweep looks at; the next tick continues.
SWEEP_LIMIT = 5000


def _outbox_rows(session: Session, where: object, limit: int) -> list[tuple[RunRef, str, str | None]]:
    stmt = (
        select(
            PluginRun.run_id,
            PluginRun.user_id,
            PluginRun.attempts,
            PluginRun.status,
            PluginRun.stream_id,
            PluginRow.name,
        )
        .join(PluginRow, PluginRow.id == PluginRun.plugin_id)
        .where(where)  # type: ignore[arg-type]
        .order_by(PluginRun.id)
        .limit(limit)
    )
    return [
        (
            RunRef(r.run_id, r.name, r.user_id, r.attempts + 1),
            r.status,
            r.stream_id,
        )
        for r in session.execute(stmt)
    ]


def _entries_alive(candidates: list[tuple[RunRef, str, str | None]]) -> list[bool]:
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    for run, _, stream_id in candidates:
        pipe.xrange(keys.stream(run.plugin), min=stream_id or "0-0", max=stream_id or "0-0", count=1)
    return [bool(found) for found in pipe.execute()]


def sweep(*, now: datetime, limit: int = SWEEP_LIMIT) -> int:
    """Re-publish runs whose stream entry is missing or overdue; returns how many."""
    grace = timedelta(seconds=get_settings().outbox_grace_seconds)
    stale = now - grace
    due_pending = and_(
        PluginRun.status == RunStatus.PENDING,
        or_(
            and_(PluginRun.next_attempt_at.is_(None), PluginRun.updated_at < stale),
            PluginRun.next_attempt_at <= now,
        ),
    )
    maybe_lost = or_(
        and_(PluginRun.status == RunStatus.QUEUED, PluginRun.queued_at < stale),
        and_(PluginRun.status == RunStatus.PROCESSING, PluginRun.lease_expires_at < stale),
    )
    with session_scope() as session:
        pending = _outbox_rows(session, due_pending, limit)
        suspects = _outbox_rows(session, maybe_lost, limit)
    lost = (
        [c for c, alive in zip(suspects, _entries_alive(suspects), strict=True) if not alive]
        if suspects
        else []
    )
    to_publish = [run for run, _, _ in pending + lost]
    if not to_publish:
        return 0
    with session_scope() as session:
        published = len(producer.publish_runs(session, to_publish, now=now))
    log.info("outbox sweep re-published runs", extra={"pending": len(pending), "lost_entries": len(lost)})
    return published
