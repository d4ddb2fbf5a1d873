"""Run state transitions: every change of ``plugin_runs.status`` goes through here.

Each transition is one conditional UPDATE (compare-and-set), so any step may
run twice and concurrent actors never both win:

* :func:`claim` — pending/queued (due) or processing with an expired lease
  -> processing, ``attempts + 1``. The new attempt number is the *fence*:
  the worker passes it to every later call, and a worker whose lease was taken
  over can no longer write (its UPDATEs match no row).
* :func:`renew_lease` — extends the lease while the fenced attempt is alive.
* :func:`end_attempt` — ends the fenced attempt as an :class:`AttemptEnd` says
  (completed, failed, or back to pending until a retry time), appending its
  ``attempt_log`` entry (outcome, token usage) in the same UPDATE;
  :func:`record_lost_attempt` keeps the entry of an attempt that lost its run.
* :func:`cancel` — any non-terminal run -> cancelled; a running worker sees it
  at its next heartbeat.
* :func:`mark_queued` / :func:`fail_unless_terminal` — producer and dead letters.
* :func:`reset_for_replay` — a dead-lettered (or stuck) run -> pending, for a fresh attempt,
  with a fresh retry budget and the replaced status and error kept in ``replays``.

Functions take a session or a Core connection and never commit: the caller owns
the transaction. The statements on a run's hot path (claim, end, renewal) are
built once per process and executed with bound parameters.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Connection, Integer, Table, and_, bindparam, func, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from app.db.bulk import mark_queued_pg
from app.db.models import PluginRow, PluginRun, RunStatus

# Core UPDATEs on the table, not the ORM entity: the ORM's bulk-update path (session sync,
# per-statement evaluation) was a fifth of a worker's CPU per run, and these never touch
# objects loaded in a session.
_RUNS: Table = PluginRun.__table__  # type: ignore[assignment]

_NON_TERMINAL = [RunStatus.PENDING, RunStatus.QUEUED, RunStatus.PROCESSING]
_WAITING = [RunStatus.PENDING, RunStatus.QUEUED]


@dataclass(frozen=True)
class ClaimedRun:
    """What a worker needs after a successful claim. ``attempt`` is its fence."""

    run_id: uuid.UUID
    attempt: int
    plugin: str
    user_id: int
    input: dict[str, Any]
    lease_expires_at: datetime
    #: When this attempt started (the claim's ``now``).
    started_at: datetime
    #: ``attempts`` at the last replay: this run's retry budget counts ``attempt - base``.
    base: int = 0


def _as_uuid(run_id: uuid.UUID | str) -> uuid.UUID:
    return run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))


#: What the run-state functions execute on: an ORM session, or a Core connection (the worker's
#: hot path, which skips the session's bookkeeping). Either way the caller owns the transaction.
Executor = Session | Connection


def _dialect(db: Executor) -> str:
    return db.dialect.name if isinstance(db, Connection) else db.get_bind().dialect.name


def _col(name: str) -> Any:
    return _RUNS.c[name]


def _param(name: str, column: str) -> Any:
    """A bound parameter typed like ``plugin_runs.<column>`` (so UUIDs, times and JSON bind right)."""
    return bindparam(name, type_=_col(column).type)


def _fence() -> Any:
    """The attempt fence, on bound parameters ``rid`` and ``attempt``."""
    return and_(
        _col("run_id") == _param("rid", "run_id"),
        _col("status") == RunStatus.PROCESSING.value,
        _col("attempts") == _param("attempt", "attempts"),
    )


# The hot statements are built once per process and dialect and executed with parameters:
# building a statement and its cache key cost more CPU than the round trip it makes.
@cache
def _claim_statement() -> Any:
    now = _param("now", "started_at")
    claimable = or_(
        and_(
            # Literal ORs, not IN: an expanding IN is re-rendered on every execution.
            or_(*(_col("status") == s.value for s in _WAITING)),
            or_(_col("next_attempt_at").is_(None), _col("next_attempt_at") <= now),
        ),
        and_(_col("status") == RunStatus.PROCESSING.value, _col("lease_expires_at") < now),
    )
    return (
        update(_RUNS)
        .where(_col("run_id") == _param("rid", "run_id"), claimable)
        .values(
            status=RunStatus.PROCESSING.value,
            attempts=_col("attempts") + 1,
            started_at=now,
            lease_expires_at=_param("lease", "lease_expires_at"),
            next_attempt_at=None,
            updated_at=now,
        )
        .returning(
            _col("attempts"),
            _col("user_id"),
            _col("input"),
            # The plugin's name in the same round trip: the claim is on every run's hot path.
            select(PluginRow.__table__.c.name)
            .where(PluginRow.__table__.c.id == _col("plugin_id"))
            .scalar_subquery(),
            _col("attempts_base"),
        )
    )


def claim(db: Executor, run_id: uuid.UUID | str, *, now: datetime, lease_seconds: int) -> ClaimedRun | None:
    """Move the run to ``processing`` if nobody else holds it; None if already handled.

    Claimable: ``pending``/``queued`` whose ``next_attempt_at`` (if any) has come,
    or ``processing`` whose lease has expired (its worker died).
    """
    rid = _as_uuid(run_id)
    lease = now + timedelta(seconds=lease_seconds)
    row = db.execute(_claim_statement(), {"rid": rid, "now": now, "lease": lease}).one_or_none()
    if row is None:
        return None
    return ClaimedRun(rid, row[0], str(row[3]), row[1], dict(row[2] or {}), lease, now, int(row[4] or 0))


def _appended(dialect: str) -> dict[str, Any]:
    """SET clauses appending bound ``attempt_entry`` to ``attempt_log`` and ``tokens`` to ``total_tokens``.

    Part of the same UPDATE that records the outcome: per-attempt usage costs no round trip.
    """
    column = _col("attempt_log")
    appended: Any
    if dialect == "postgresql":
        appended = func.coalesce(column, literal_column("'[]'::jsonb", JSONB)).op("||", return_type=JSONB)(
            bindparam("attempt_entry", type_=JSONB)
        )
    else:  # SQLite: JSON is text; '$[#]' appends
        appended = func.json_insert(
            func.coalesce(column, "[]"), "$[#]", func.json(bindparam("attempt_entry"))
        )
    return {
        "attempt_log": appended,
        "total_tokens": _col("total_tokens") + bindparam("tokens", type_=Integer),
    }


def _entry_params(dialect: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempt_entry": [entry] if dialect == "postgresql" else json.dumps(entry),
        "tokens": int(entry.get("total_tokens") or 0),
    }


@dataclass(frozen=True)
class AttemptEnd:
    """How a fenced attempt ends: the run's next status and what is recorded with it.

    Build one with :meth:`completed`, :meth:`failed` or :meth:`retry`.
    """

    status: RunStatus
    output: dict[str, Any] | None = None
    error: str | None = None
    #: When the next attempt may start (``retry`` only).
    retry_at: datetime | None = None

    @classmethod
    def completed(cls, output: dict[str, Any]) -> AttemptEnd:
        """Success: the run is ``completed`` with ``output``."""
        return cls(RunStatus.COMPLETED, output=output)

    @classmethod
    def failed(cls, error: str) -> AttemptEnd:
        """A permanent failure: the run is ``failed`` with ``error``."""
        return cls(RunStatus.FAILED, error=error)

    @classmethod
    def retry(cls, error: str, *, at: datetime) -> AttemptEnd:
        """Back to ``pending`` until ``at``, with no stream entry (the outbox sweep republishes it)."""
        return cls(RunStatus.PENDING, error=error, retry_at=at)


#: The columns each ending sets, beyond ``status``, the lease and ``updated_at`` (None: set to NULL).
_END_COLUMNS: dict[RunStatus, dict[str, str | None]] = {
    RunStatus.COMPLETED: {"output": "out", "error_message": None, "completed_at": "now"},
    RunStatus.FAILED: {"error_message": "error", "completed_at": "now"},
    RunStatus.PENDING: {"error_message": "error", "next_attempt_at": "retry_at", "stream_id": None},
}


@cache
def _end_statement(status: RunStatus, dialect: str, with_entry: bool) -> Any:
    values: dict[str, Any] = {
        "status": status.value,
        "lease_expires_at": None,
        "updated_at": _param("now", "updated_at"),
    }
    for column, param in _END_COLUMNS[status].items():
        values[column] = None if param is None else _param(param, column)
    if with_entry:
        values.update(_appended(dialect))
    return update(_RUNS).where(_fence()).values(values)


def end_attempt(
    db: Executor,
    run_id: uuid.UUID | str,
    *,
    attempt: int,
    end: AttemptEnd,
    now: datetime,
    log_entry: dict[str, Any] | None = None,
) -> bool:
    """End the fenced attempt as ``end`` says, appending its ``attempt_log`` entry in the same UPDATE.

    One statement; False if this attempt no longer owns the run (cancelled, taken over,
    already ended), in which case nothing was written.
    """
    if end.status not in _END_COLUMNS:
        raise ValueError(f"an attempt cannot end as {end.status.value}")
    dialect = _dialect(db)
    params: dict[str, Any] = {
        "rid": _as_uuid(run_id),
        "attempt": attempt,
        "now": now,
        "out": end.output,
        "error": end.error,
        "retry_at": end.retry_at,
    }
    if log_entry is not None:
        params.update(_entry_params(dialect, log_entry))
    result = db.execute(_end_statement(end.status, dialect, log_entry is not None), params)
    return bool(result.rowcount)  # type: ignore[attr-defined]


@cache
def _renew_statement() -> Any:
    return update(_RUNS).where(_fence()).values(lease_expires_at=_param("lease", "lease_expires_at"))


def renew_lease(
    db: Executor, run_id: uuid.UUID | str, *, attempt: int, now: datetime, lease_seconds: int
) -> bool:
    """Extend the lease of the fenced attempt; False if it was cancelled or taken over."""
    result = db.execute(
        _renew_statement(),
        {"rid": _as_uuid(run_id), "attempt": attempt, "lease": now + timedelta(seconds=lease_seconds)},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_lost_attempt(
    db: Executor, run_id: uuid.UUID | str, *, log_entry: dict[str, Any]
) -> RunStatus | None:
    """Append the log entry of an attempt that lost its run (no fence); the run's status, None if gone.

    Its tokens were spent all the same: a cancelled or taken-over attempt is still counted.
    """
    dialect = _dialect(db)
    status = db.execute(
        update(_RUNS)
        .where(_col("run_id") == _param("rid", "run_id"))
        .values(_appended(dialect))
        .returning(_col("status")),
        {"rid": _as_uuid(run_id), **_entry_params(dialect, log_entry)},
    ).scalar_one_or_none()
    return RunStatus(status) if status is not None else None


def _end_unless_terminal(
    session: Session, run_id: uuid.UUID | str, *, status: RunStatus, message: str, now: datetime
) -> bool:
    # No fence: whoever holds the run is overruled; its own fenced write will then match nothing.
    result = session.execute(
        update(_RUNS)
        .where(PluginRun.run_id == _as_uuid(run_id), PluginRun.status.in_(_NON_TERMINAL))
        .values(status=status, error_message=message, completed_at=now, lease_expires_at=None, updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def cancel(session: Session, run_id: uuid.UUID | str, *, now: datetime, reason: str = "cancelled") -> bool:
    """Cancel a non-terminal run; False if it had already ended."""
    return _end_unless_terminal(session, run_id, status=RunStatus.CANCELLED, message=reason, now=now)


def fail_unless_terminal(session: Session, run_id: uuid.UUID | str, *, error: str, now: datetime) -> bool:
    """Mark any non-terminal run ``failed`` with ``error`` (dead letters); False if already terminal."""
    return _end_unless_terminal(session, run_id, status=RunStatus.FAILED, message=error, now=now)


def mark_queued(session: Session, entries: Iterable[tuple[uuid.UUID, str]], *, now: datetime) -> int:
    """Record the stream entry id of each published run and move pending ones to ``queued``.

    A processing run (republished because its worker's lease expired) gets the
    new entry id but keeps its status: the row always names the entry that last
    named the run, so the outbox sweep does not publish it again. Terminal runs
    are untouched (a duplicate publish is harmless). Returns how many rows changed.
    """
    params = [{"rid": rid, "sid": sid} for rid, sid in entries]
    if not params:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        return mark_queued_pg(session, params, now=now)  # one statement per batch on the publish hot path
    stmt = (
        update(PluginRun.__table__)  # type: ignore[arg-type]
        .where(
            PluginRun.__table__.c.run_id == bindparam("rid"),
            # Literal ORs, not IN: an expanding IN cannot be used with executemany.
            or_(*(PluginRun.__table__.c.status == status.value for status in _WAITING)),
        )
        .values(status=RunStatus.QUEUED, stream_id=bindparam("sid"), queued_at=now, updated_at=now)
    )
    table = PluginRun.__table__
    processing = (
        update(table)  # type: ignore[arg-type]
        .where(table.c.run_id == bindparam("rid"), table.c.status == RunStatus.PROCESSING.value)
        .values(stream_id=bindparam("sid"), updated_at=now)
    )
    changed = int(session.connection().execute(stmt, params).rowcount)
    return changed + int(session.connection().execute(processing, params).rowcount)


@dataclass(frozen=True)
class RunState:
    """The part of a run the stream consumer needs to decide about an entry."""

    run_id: uuid.UUID
    status: RunStatus
    lease_expires_at: datetime | None
    next_attempt_at: datetime | None
    #: The entry id the run was last published with (None while the outbox owns it).
    stream_id: str | None = None
    #: Claims so far, and claims before the last replay (the retry budget is the difference).
    attempts: int = 0
    attempts_base: int = 0
    error_message: str | None = None
    updated_at: datetime | None = None

    @property
    def tries(self) -> int:
        """Claims since the run was created or last replayed."""
        return self.attempts - self.attempts_base

    def lease_alive(self, now: datetime) -> bool:
        """True if a worker holds the run and its lease has not expired."""
        return (
            self.status == RunStatus.PROCESSING
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )


def states(session: Session, run_ids: Iterable[uuid.UUID | str]) -> dict[uuid.UUID, RunState]:
    """The current state of each named run that exists (missing ids are absent)."""
    ids = [_as_uuid(r) for r in run_ids]
    if not ids:
        return {}
    rows = session.execute(
        select(
            PluginRun.run_id,
            PluginRun.status,
            PluginRun.lease_expires_at,
            PluginRun.next_attempt_at,
            PluginRun.stream_id,
            PluginRun.attempts,
            PluginRun.attempts_base,
            PluginRun.error_message,
            PluginRun.updated_at,
        ).where(PluginRun.run_id.in_(ids))
    )
    return {
        r.run_id: RunState(
            r.run_id,
            RunStatus(r.status),
            r.lease_expires_at,
            r.next_attempt_at,
            r.stream_id,
            r.attempts,
            r.attempts_base,
            r.error_message,
            r.updated_at,
        )
        for r in rows
    }


def dead_letter_error(reason: str, detail: str) -> str:
    """The ``error_message`` a run gets when its stream entry is dead-lettered."""
    return f"dead-lettered ({reason}): {detail}"


def reset_for_replay(
    session: Session,
    run_id: uuid.UUID | str,
    *,
    now: datetime,
    dead_letter_error: str | None = None,
    include_failed: bool = False,
) -> str | None:
    """Put a run back to ``pending`` for a fresh attempt; None if done, else why not.

    Replayed: ``pending``, ``queued``, ``processing`` whose lease has expired, and
    ``failed`` when it failed *because of this dead letter* (its error is
    ``dead_letter_error``) or ``include_failed`` says so on purpose. Never
    ``completed``/``cancelled``, a run a live worker holds, or a run that failed
    for another reason unless asked: a replay never rewrites another outcome.

    The run gets a fresh retry budget (``attempts_base = attempts``: ``attempts``
    itself is the fence and only grows) and the status, error and attempt count
    it had are appended to ``replays``, so the earlier error is never lost.
    """
    rid = _as_uuid(run_id)
    row = session.execute(
        select(
            PluginRun.status,
            PluginRun.attempts,
            PluginRun.error_message,
            PluginRun.lease_expires_at,
            PluginRun.replays,
        )
        .where(PluginRun.run_id == rid)
        .with_for_update()
    ).one_or_none()
    if row is None:
        return "run not found"
    status = RunStatus(row.status)
    if status in (RunStatus.COMPLETED, RunStatus.CANCELLED):
        return f"run is {status.value}"
    if status == RunStatus.PROCESSING and row.lease_expires_at is not None and row.lease_expires_at >= now:
        return "run is processing under a live lease"
    if status == RunStatus.FAILED and not include_failed and row.error_message != dead_letter_error:
        return "run failed for another reason than this dead letter (replay it on purpose with --failed)"
    history = [
        *(row.replays or []),
        {
            "at": now.isoformat(),
            "status": status.value,
            "error": row.error_message,
            "attempts": row.attempts,
        },
    ]
    result = session.execute(
        update(_RUNS)
        # Compare-and-set on what was read: a concurrent transition wins, this replay does nothing.
        .where(PluginRun.run_id == rid, PluginRun.status == status, PluginRun.attempts == row.attempts)
        .values(
            status=RunStatus.PENDING,
            error_message=None,
            completed_at=None,
            lease_expires_at=None,
            next_attempt_at=None,
            stream_id=None,
            attempts_base=row.attempts,
            replays=history,
            updated_at=now,
        )
    )
    return None if result.rowcount else "run changed while replaying; try again"  # type: ignore[attr-defined]
