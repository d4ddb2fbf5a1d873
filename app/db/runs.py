"""Run state transitions: every change of ``plugin_runs.status`` goes through here.

Each transition is one conditional UPDATE (compare-and-set), so any step may
run twice and concurrent actors never both win:

* :func:`claim` — pending/queued (due) or processing with an expired lease
  -> processing, ``attempts + 1``. The new attempt number is the *fence*:
  the worker passes it to every later call, and a worker whose lease was taken
  over can no longer write (its UPDATEs match no row).
* :func:`renew_lease` — extends the lease while the fenced attempt is alive.
* :func:`complete` / :func:`fail` / :func:`retry_later` — end the fenced attempt,
  appending its ``attempt_log`` entry (outcome, token usage) in the same UPDATE;
  :func:`record_lost_attempt` keeps the entry of an attempt that lost its run.
* :func:`cancel` — any non-terminal run -> cancelled; a running worker sees it
  at its next heartbeat.
* :func:`mark_queued` / :func:`fail_unless_terminal` — producer and dead letters.
* :func:`reset_for_replay` — a dead-lettered (or stuck) run -> pending, for a fresh attempt,
  with a fresh retry budget and the replaced status and error kept in ``replays``.

Functions take a session and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, func, literal_column, or_, select, update
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


def claim(
    session: Session, run_id: uuid.UUID | str, *, now: datetime, lease_seconds: int
) -> ClaimedRun | None:
    """Move the run to ``processing`` if nobody else holds it; None if already handled.

    Claimable: ``pending``/``queued`` whose ``next_attempt_at`` (if any) has come,
    or ``processing`` whose lease has expired (its worker died).
    """
    rid = _as_uuid(run_id)
    lease = now + timedelta(seconds=lease_seconds)
    claimable = or_(
        and_(
            PluginRun.status.in_(_WAITING),
            or_(PluginRun.next_attempt_at.is_(None), PluginRun.next_attempt_at <= now),
        ),
        and_(PluginRun.status == RunStatus.PROCESSING, PluginRun.lease_expires_at < now),
    )
    row = session.execute(
        update(_RUNS)
        .where(PluginRun.run_id == rid, claimable)
        .values(
            status=RunStatus.PROCESSING,
            attempts=PluginRun.attempts + 1,
            started_at=now,
            lease_expires_at=lease,
            next_attempt_at=None,
            updated_at=now,
        )
        .returning(
            PluginRun.attempts,
            PluginRun.user_id,
            PluginRun.input,
            # The plugin's name in the same round trip: the claim is on every run's hot path.
            select(PluginRow.name).where(PluginRow.id == PluginRun.plugin_id).scalar_subquery(),
            PluginRun.attempts_base,
        )
    ).one_or_none()
    if row is None:
        return None
    return ClaimedRun(rid, row[0], str(row[3]), row[1], dict(row[2] or {}), lease, now, int(row[4] or 0))


def _fenced(run_id: uuid.UUID | str, attempt: int) -> Any:
    return and_(
        PluginRun.run_id == _as_uuid(run_id),
        PluginRun.status == RunStatus.PROCESSING,
        PluginRun.attempts == attempt,
    )


def _with_attempt(session: Session, values: dict[str, Any], entry: dict[str, Any] | None) -> dict[str, Any]:
    """``values`` plus appending ``entry`` to ``attempt_log`` and its tokens to ``total_tokens``.

    Part of the same UPDATE that records the outcome: per-attempt usage costs no round trip.
    """
    if entry is None:
        return values
    column = _RUNS.c.attempt_log
    appended: Any
    if session.get_bind().dialect.name == "postgresql":
        appended = func.coalesce(column, literal_column("'[]'::jsonb", JSONB)).op("||", return_type=JSONB)(
            bindparam("attempt_entry", [entry], type_=JSONB)
        )
    else:  # SQLite: JSON is text; '$[#]' appends
        appended = func.json_insert(
            func.coalesce(column, "[]"), "$[#]", func.json(bindparam("attempt_entry", json.dumps(entry)))
        )
    tokens = int(entry.get("total_tokens") or 0)
    return {**values, "attempt_log": appended, "total_tokens": _RUNS.c.total_tokens + tokens}


def renew_lease(
    session: Session, run_id: uuid.UUID | str, *, attempt: int, now: datetime, lease_seconds: int
) -> bool:
    """Extend the lease of the fenced attempt; False if it was cancelled or taken over."""
    result = session.execute(
        update(_RUNS)
        .where(_fenced(run_id, attempt))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def complete(
    session: Session,
    run_id: uuid.UUID | str,
    *,
    attempt: int,
    output: dict[str, Any],
    now: datetime,
    log_entry: dict[str, Any] | None = None,
) -> bool:
    """Record success for the fenced attempt (and its ``attempt_log`` entry); False if it lost the run."""
    values = {
        "status": RunStatus.COMPLETED,
        "output": output,
        "error_message": None,
        "completed_at": now,
        "lease_expires_at": None,
        "updated_at": now,
    }
    result = session.execute(
        update(_RUNS).where(_fenced(run_id, attempt)).values(_with_attempt(session, values, log_entry))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail(
    session: Session,
    run_id: uuid.UUID | str,
    *,
    attempt: int,
    error: str,
    now: datetime,
    log_entry: dict[str, Any] | None = None,
) -> bool:
    """Record a permanent failure for the fenced attempt; False if it no longer owns the run."""
    values = {
        "status": RunStatus.FAILED,
        "error_message": error,
        "completed_at": now,
        "lease_expires_at": None,
        "updated_at": now,
    }
    result = session.execute(
        update(_RUNS).where(_fenced(run_id, attempt)).values(_with_attempt(session, values, log_entry))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def retry_later(
    session: Session,
    run_id: uuid.UUID | str,
    *,
    attempt: int,
    error: str,
    at: datetime,
    now: datetime,
    log_entry: dict[str, Any] | None = None,
) -> bool:
    """Put the fenced attempt back to ``pending`` until ``at`` (the outbox sweep republishes it)."""
    values = {
        "status": RunStatus.PENDING,
        "error_message": error,
        "next_attempt_at": at,
        "lease_expires_at": None,
        "stream_id": None,
        "updated_at": now,
    }
    result = session.execute(
        update(_RUNS).where(_fenced(run_id, attempt)).values(_with_attempt(session, values, log_entry))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_lost_attempt(
    session: Session, run_id: uuid.UUID | str, *, log_entry: dict[str, Any]
) -> RunStatus | None:
    """Append the log entry of an attempt that lost its run (no fence); the run's status, None if gone.

    Its tokens were spent all the same: a cancelled or taken-over attempt is still counted.
    """
    status = session.execute(
        update(_RUNS)
        .where(PluginRun.run_id == _as_uuid(run_id))
        .values(_with_attempt(session, {}, log_entry))
        .returning(PluginRun.status)
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
