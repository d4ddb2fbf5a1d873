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
* One sweep sees every such row, however many: it reads them in pages of
  ``page_size`` with a keyset cursor (``id > last id seen``, in id order), never
  OFFSET and never the first page again. Rows that stay candidates (queued runs
  whose entry is alive and waiting in a backlog, pending runs whose stream
  refused the entry) therefore never hide the rows after them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
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

#: Rows read per page (one query, and for suspects one Redis pipeline).
SWEEP_PAGE = 5000

#: One outbox candidate: its id (the cursor), the run to publish, its status and stream entry id.
Candidate = tuple[int, RunRef, str, str | None]


def _outbox_rows(session: Session, where: object, limit: int, after: int) -> list[Candidate]:
    stmt = (
        select(
            PluginRun.id,
            PluginRun.run_id,
            PluginRun.user_id,
            PluginRun.attempts,
            PluginRun.status,
            PluginRun.stream_id,
            PluginRow.name,
        )
        .join(PluginRow, PluginRow.id == PluginRun.plugin_id)
        .where(where, PluginRun.id > after)  # type: ignore[arg-type]
        .order_by(PluginRun.id)
        .limit(limit)
    )
    return [
        (r.id, RunRef(r.run_id, r.name, r.user_id, r.attempts + 1), r.status, r.stream_id)
        for r in session.execute(stmt)
    ]


def _pages(where: object, page_size: int) -> Iterator[list[Candidate]]:
    """Every row matching ``where``, a page at a time, each page after the last id of the one before."""
    after = 0
    while True:
        with session_scope() as session:
            rows = _outbox_rows(session, where, page_size, after)
        if rows:
            yield rows
        if len(rows) < page_size:
            return
        after = rows[-1][0]


def _entries_alive(candidates: list[Candidate]) -> list[bool]:
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    for _, run, _, stream_id in candidates:
        pipe.xrange(keys.stream(run.plugin), min=stream_id or "0-0", max=stream_id or "0-0", count=1)
    return [bool(found) for found in pipe.execute()]


def _publish(runs: list[RunRef], *, now: datetime) -> int:
    if not runs:
        return 0
    with session_scope() as session:
        return len(producer.publish_runs(session, runs, now=now))


def sweep(*, now: datetime, page_size: int = SWEEP_PAGE) -> int:
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
    published = pending = lost = 0
    for page in _pages(due_pending, page_size):
        pending += len(page)
        published += _publish([run for _, run, _, _ in page], now=now)
    for page in _pages(maybe_lost, page_size):
        gone = [c for c, alive in zip(page, _entries_alive(page), strict=True) if not alive]
        lost += len(gone)
        published += _publish([run for _, run, _, _ in gone], now=now)
    if pending or lost:
        log.info("outbox sweep re-published runs", extra={"pending": pending, "lost_entries": lost})
    return published
