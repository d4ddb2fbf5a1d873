"""The beat's one periodic task: turn due schedules into runs, publish them, sweep the outbox.

Guarantees:

* Cost per tick follows what is due: configs are found through the partial
  index on ``next_run_at`` of enabled rows, in batches, never by scanning users.
* Two ticks at once never create duplicate runs: due rows are locked with
  ``FOR UPDATE SKIP LOCKED`` (PostgreSQL) and runs are inserted with
  ``ON CONFLICT (config_id, scheduled_for) DO NOTHING``.
* Rows are committed before anything is published; a crash between the two
  loses nothing, because :mod:`app.outbox` re-publishes pending rows.
* After downtime each config gets one run (the latest missed slot); a slot
  older than ``CATCHUP_GRACE_SECONDS`` is skipped and counted.
* A run is never created with settings that fail the plugin's current schema:
  such a config is disabled with the reason.
* The rate does not fall as a rush grows: every batch statement is planned for
  the tables as they are (:func:`app.db.bulk.plan_for_this_batch`), work that
  depends only on a schedule is done once per schedule per tick, and a rush
  runs on ``SCHEDULER_THREADS`` threads that ``SKIP LOCKED`` keeps apart.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db import bulk
from app.db.engine import get_engine, session_scope
from app.db.models import PluginRow, RunStatus, Trigger, User, UserPluginConfig, utcnow
from app.errors import SettingsValidationError
from app.plugins.settings import SettingsSpec, effective_settings, spec_from_row, validate_settings
from app.scheduling import ScheduleError, latest_slot, next_after, parse_schedule
from app.streams import producer
from app.streams.producer import RunRef

log = logging.getLogger(__name__)


@dataclass
class TickReport:
    """What one tick did (logged, and returned by the Celery task)."""

    created: int = 0
    duplicates: int = 0
    skipped_stale: int = 0
    coalesced: int = 0
    disabled: int = 0
    published: int = 0
    republished: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counters only (JSON-friendly)."""
        return dict(self.__dict__)

    def add(self, other: TickReport) -> None:
        """Add ``other``'s counters to these (a tick's threads each keep their own)."""
        for name, value in other.__dict__.items():
            setattr(self, name, getattr(self, name) + value)


@dataclass(frozen=True)
class _Due:
    config_id: int
    user_id: int
    plugin: PluginRow
    spec: SettingsSpec
    settings: dict[str, Any]
    fingerprint: str
    timezone: str
    next_run_at: datetime


def _due_batch(session: Session, *, now: datetime, limit: int) -> list[_Due]:
    c = UserPluginConfig
    stmt = (
        select(c.id, c.user_id, c.plugin_id, c.settings, c.schema_fingerprint, c.next_run_at, User.timezone)
        .join(PluginRow, PluginRow.id == c.plugin_id)
        .join(User, User.id == c.user_id)
        .where(c.enabled, PluginRow.enabled, c.next_run_at <= now)
        .order_by(c.next_run_at)
        .limit(limit)
        # Another tick holding some rows just makes this one take the others.
        .with_for_update(skip_locked=True, of=c)
    )
    rows = session.execute(stmt).all()
    # Plugins are few: load each once per batch, not once per config.
    plugins = {
        p.id: p
        for p in session.scalars(select(PluginRow).where(PluginRow.id.in_({r.plugin_id for r in rows})))
    }
    specs = {pid: spec_from_row(p) for pid, p in plugins.items()}
    return [
        _Due(
            r.id,
            r.user_id,
            plugins[r.plugin_id],
            specs[r.plugin_id],
            dict(r.settings),
            r.schema_fingerprint,
            r.timezone,
            r.next_run_at or now,
        )
        for r in rows
    ]


#: What a schedule decides for every config sharing it: (slot, slots coalesced, following slot).
_Slots = tuple[datetime, int, datetime]
#: Bound on remembered schedules per tick (a rush has a handful; a catch-up after a long outage
#: can have one per config, and the cache must not grow with it).
_MAX_CACHED_SCHEDULES = 10_000


class _Planner:
    """Decides due configs for one tick; work that depends only on the schedule is done once.

    In the 06:00 rush a million configs share a few (time zone, preferred time,
    frequency, weekday, due time) combinations, and the slot arithmetic in the
    user's zone (DST rules included) was a quarter of the tick's CPU. Within one
    tick ``now`` is fixed, so equal inputs give equal slots: they are computed
    once per combination. Likewise each plugin's defaults are merged once per
    batch instead of once per config.
    """

    def __init__(self, *, now: datetime, grace: timedelta, report: TickReport) -> None:
        self.now, self.grace, self.report = now, grace, report
        self._slots: dict[tuple[Any, ...], _Slots | str] = {}
        self._defaults: dict[tuple[int, str], dict[str, Any]] = {}

    def _effective(self, item: _Due) -> dict[str, Any]:
        if item.fingerprint != item.plugin.schema_fingerprint:
            return validate_settings(item.spec, item.settings)  # saved under another schema: check again
        # Validated against this schema when saved. Same result as effective_settings(spec,
        # settings) without copying the defaults for every config: the dict is only serialised.
        key = (item.plugin.id, item.plugin.schema_fingerprint)
        defaults = self._defaults.get(key)
        if defaults is None:
            defaults = self._defaults[key] = effective_settings(item.spec, None)
        return {**defaults, **item.settings}

    def _slots_for(self, effective: dict[str, Any], item: _Due) -> _Slots | str:
        fields = (effective.get("frequency"), effective.get("preferred_time"), effective.get("weekday"))
        # Only strings (or absent) are remembered: other types the schema let through are errors
        # whose message names the value, and 1 == True would share a key.
        key = (item.timezone, item.next_run_at, *fields)
        cacheable = all(value is None or type(value) is str for value in fields)
        cached = self._slots.get(key) if cacheable else None
        if cached is not None:
            return cached
        try:
            schedule = parse_schedule(effective, item.timezone)
            slot, coalesced = latest_slot(schedule, due=item.next_run_at, now=self.now)
            result: _Slots | str = (slot, coalesced, next_after(schedule, self.now))
        except ScheduleError as exc:
            result = str(exc)
        if cacheable:
            if len(self._slots) >= _MAX_CACHED_SCHEDULES:
                self._slots.clear()
            self._slots[key] = result
        return result

    def plan(self, item: _Due) -> tuple[dict[str, Any] | None, Any]:
        """Decide one due config: (run row or None, new next_run_at or a disable reason string)."""
        capabilities = item.plugin.capabilities or []
        if "scheduled" not in capabilities:
            return None, None  # never scheduled; clear next_run_at
        reason = f"settings no longer valid for {item.plugin.name} {item.plugin.version}"
        try:
            effective = self._effective(item)
        except SettingsValidationError as exc:
            return None, f"{reason}: {exc}"
        slots = self._slots_for(effective, item)
        if isinstance(slots, str):
            return None, f"{reason}: {slots}"
        slot, coalesced, following = slots
        self.report.coalesced += coalesced
        if self.now - slot > self.grace:
            self.report.skipped_stale += 1
            return None, following
        row = {
            "run_id": uuid.uuid4(),
            "user_id": item.user_id,
            "plugin_id": item.plugin.id,
            "config_id": item.config_id,
            "trigger": Trigger.SCHEDULE.value,
            "scheduled_for": slot,
            "status": RunStatus.PENDING.value,
            "input": effective,
        }
        return row, following


def _schedule_batch(
    *, now: datetime, limit: int, grace: timedelta, report: TickReport, planner: _Planner | None = None
) -> tuple[int, list[RunRef]]:
    """Lock, plan and commit one batch; returns (configs handled, the runs created)."""
    planner = planner or _Planner(now=now, grace=grace, report=report)
    with session_scope() as session:
        bulk.plan_for_this_batch(session)
        due = _due_batch(session, now=now, limit=limit)
        if not due:
            return 0, []
        runs: list[dict[str, Any]] = []
        advances: list[dict[str, Any]] = []
        disables: list[dict[str, Any]] = []
        for item in due:
            row, outcome = planner.plan(item)
            if isinstance(outcome, str):
                disables.append({"cid": item.config_id, "reason": outcome})
                log.warning("config disabled", extra={"config_id": item.config_id, "reason": outcome})
                continue
            advances.append({"cid": item.config_id, "next": outcome})
            if row is not None:
                runs.append(row)
        created = bulk.insert_runs(session, runs, now=now)
        report.duplicates += len(runs) - len(created)
        report.disabled += len(disables)
        bulk.set_next_run(session, [(a["cid"], a["next"]) for a in advances], now=now)
        table = UserPluginConfig.__table__
        if disables:
            session.connection().execute(
                update(table)  # type: ignore[arg-type]
                .where(table.c.id == bindparam("cid"))
                .values(enabled=False, disabled_reason=bindparam("reason"), next_run_at=None),
                disables,
            )
    by_config = {item.config_id: item for item in due}
    refs = [RunRef(run_id, by_config[cid].plugin.name, by_config[cid].user_id) for run_id, cid in created]
    return len(due), refs


def _drain(*, now: datetime, limit: int, grace: timedelta, report: TickReport, once: bool = False) -> bool:
    """Batches until one comes back short (or just one if ``once``); True if the last one was full."""
    planner = _Planner(now=now, grace=grace, report=report)
    while True:
        handled, refs = _schedule_batch(now=now, limit=limit, grace=grace, report=report, planner=planner)
        if handled:
            report.batches += 1
            report.created += len(refs)
            # Committed first, published second: the outbox sweep covers a crash in between.
            with session_scope() as session:
                report.published += len(producer.publish_runs(session, refs, now=now))
        if handled < limit:
            return False
        if once:
            return True


def schedule_due(
    *, now: datetime | None = None, batch_size: int | None = None, threads: int | None = None
) -> TickReport:
    """Create and publish runs for every due schedule, batch by batch, until none is due.

    When the first batch is full, the tick goes on with ``SCHEDULER_THREADS`` threads,
    each taking its own batches. ``SKIP LOCKED`` hands every config to exactly one of
    them (as it does between two beats), and one thread's Python work overlaps the
    others' waits on PostgreSQL and Redis.
    """
    settings = get_settings()
    now = now or utcnow()
    limit = batch_size or settings.scheduler_batch_size
    grace = timedelta(seconds=settings.catchup_grace_seconds)
    workers = threads or settings.scheduler_threads
    if get_engine().dialect.name != "postgresql":
        # SQLite has no row locks to skip: threads would read the same batch and only
        # ON CONFLICT would stop the duplicates. The embedded default runs one thread.
        workers = 1
    report = TickReport()
    if not _drain(now=now, limit=limit, grace=grace, report=report, once=workers > 1):
        return report  # the usual tick: one short batch, no thread started
    reports = [TickReport() for _ in range(workers)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tick") as pool:
        futures = [pool.submit(_drain, now=now, limit=limit, grace=grace, report=r) for r in reports]
        for future in futures:
            future.result()  # re-raises a thread's failure; batches already committed stay
    for other in reports:
        report.add(other)
    return report


def tick(*, now: datetime | None = None) -> dict[str, int]:
    """One beat tick: due schedules, then the outbox sweep. Returns the counters."""
    from app.outbox import sweep

    now = now or utcnow()
    report = schedule_due(now=now)
    report.republished = sweep(now=now)
    counters = report.as_dict()
    if report.created or report.republished or report.skipped_stale or report.disabled:
        # Prefixed: "created" (and other LogRecord attributes) may not be passed as extra keys.
        log.info("scheduler tick", extra={f"tick_{k}": v for k, v in counters.items()})
    return counters
