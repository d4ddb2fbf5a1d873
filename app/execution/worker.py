"""``execute_run``'s logic: run one claimed run to an outcome, record it, XACK its stream entry.

Guarantees:

* At most one execution per claim: a run starts only through
  :func:`app.db.runs.claim` (compare-and-set). A duplicate delivery, a
  cancelled run or a run another worker holds is a no-op.
* Every outcome is written with the claim's attempt number as a fence, so a
  worker that lost its run (cancelled, lease taken over) writes nothing.
* Outcomes: ``completed`` with output; ``failed`` with ``"Type: message"``
  (permanent error, invalid input, time limit, transient error after
  ``MAX_ATTEMPTS``); back to ``pending`` with ``next_attempt_at`` (transient
  error before ``MAX_ATTEMPTS``, no sooner than the provider's Retry-After; the
  outbox sweep republishes it). No Celery countdown/ETA anywhere: the Celery
  ``Retry`` that :func:`celery_outcome` raises only sets the task's state.
* Every attempt's outcome and token usage (failed ones included) is appended
  to the run's ``attempt_log`` by the same UPDATE that records the outcome.
* The stream entry named by the task is XACKed once its run is terminal or a
  retry is scheduled (the entry's job is done), never while another worker
  may still be running it.
* A crew thread abandoned after a time limit or cancellation is stopped for
  real in a prefork pool child: the child exits after recording (Celery starts
  a new one; the redelivered message finds a terminal run). In a threads pool
  it cannot be killed; it finishes in the background and its result is dropped.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import redis
from celery.exceptions import Retry

from app import keys
from app.backoff import backoff_seconds
from app.config import Settings, get_settings
from app.db import runs
from app.db.engine import autocommit_connection, session_scope
from app.db.models import TERMINAL_STATUSES, RunStatus, utcnow
from app.errors import RetryScheduled, RunFailed, SettingsValidationError
from app.execution import attempts, cancel_watch, provider_errors, runtime, workdir
from app.execution.attempts import AttemptOutcome
from app.execution.contract import CrewContext
from app.execution.crew_loader import entry_point_file, find_plugin
from app.execution.crew_thread import CrewJob, Verdict, supervise
from app.execution.lease import Lease
from app.execution.llm import make_llm
from app.execution.outcome import classify_failure
from app.flow.budget import BudgetWaitExpired
from app.flow.policy import plugin_cap
from app.flow.worker import RunSlot, run_deadline
from app.llm_config import model_name
from app.logs import bind
from app.plugins.settings import validate_settings
from app.redis_client import get_redis

log = logging.getLogger(__name__)

#: Exit status of a pool child that exits to stop a crew thread it gave up on.
ABANDONED_CREW_EXIT_CODE = 75
RETRY_SCHEDULED = "retry_scheduled"


@dataclass(frozen=True)
class StreamEntry:
    """The stream entry that carried the run (all optional in the task's arguments)."""

    stream: str
    group: str
    entry_id: str

    @classmethod
    def from_args(cls, stream: str | None, group: str | None, entry_id: str | None) -> StreamEntry | None:
        """The entry, or None when the task was dispatched without one."""
        if not stream or not entry_id:
            return None
        return cls(stream, group or keys.GROUP, entry_id)


@dataclass(frozen=True)
class Finish:
    """How this delivery ended."""

    status: str
    attempt: int | None = None
    executed: bool = False
    #: The stream entry's job is done (run terminal, or its retry is scheduled).
    entry_done: bool = False
    #: A crew thread we gave up on is still running.
    abandoned: bool = False
    #: The run's error (failed) or the retry note (retry scheduled); never a secret.
    error: str | None = None
    #: When the next attempt may start (retry scheduled).
    retry_at: datetime | None = None


def execute(
    run_id: str,
    *,
    plugin: str | None = None,
    stream: str | None = None,
    group: str | None = None,
    entry_id: str | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """Run ``run_id`` if it is claimable; record the outcome; XACK the entry when done with it.

    ``attempt``: the attempt the delivery asked for; when the run is not claimable, that
    attempt's flow-control slot (taken by the consumer for this delivery) goes back.
    """
    entry = StreamEntry.from_args(stream, group, entry_id)
    with bind(run_id=run_id, plugin=plugin):
        try:
            rid = uuid.UUID(str(run_id))
        except ValueError:
            log.error("execute_run got a malformed run id; leaving its entry to the dead-letter path")
            return {"run_id": run_id, "status": "invalid", "attempt": None, "executed": False}
        settings = get_settings()
        # Import CrewAI before claiming, so its first-import cost never eats into a lease.
        runtime.prepare()
        # One statement: autocommit spares the BEGIN and COMMIT round trips.
        with autocommit_connection() as conn:
            claimed = runs.claim(conn, rid, now=utcnow(), lease_seconds=settings.lease_seconds)
        if claimed is None:
            finish = _unclaimed(rid, plugin, attempt)
        else:
            with bind(plugin=claimed.plugin, user_id=claimed.user_id, attempt=claimed.attempt):
                finish = _run(claimed, settings)
        if finish.entry_done and entry is not None:
            _xack(entry)
        if finish.abandoned and runtime.in_pool_child():
            _exit_child()
        return {
            "run_id": str(rid),
            "status": finish.status,
            "attempt": finish.attempt,
            "executed": finish.executed,
            "error": finish.error,
            "retry_at": finish.retry_at.isoformat() if finish.retry_at else None,
        }


def celery_outcome(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` if the run's Celery state is SUCCESS; raises for FAILURE or RETRY."""
    if result.get("executed") and result.get("status") == RunStatus.FAILED.value:
        raise RunFailed(f"run {result['run_id']} failed: {result.get('error') or 'no error recorded'}")
    if result.get("executed") and result.get("status") == RETRY_SCHEDULED:
        when = datetime.fromisoformat(result["retry_at"]) if result.get("retry_at") else None
        raise Retry(
            f"run {result['run_id']}: next attempt at {result.get('retry_at')}",
            RetryScheduled(str(result.get("error") or "retry scheduled")),
            when=when,
        )
    return result


def _unclaimed(rid: uuid.UUID, plugin: str | None, attempt: int | None) -> Finish:
    now = utcnow()
    with session_scope() as session:
        state = runs.states(session, [rid]).get(rid)
    if state is None:
        log.warning("no such run; leaving its entry to the dead-letter path")
        return Finish("missing")
    retry_waiting = state.status in (RunStatus.PENDING, RunStatus.QUEUED) and (
        state.next_attempt_at is not None and state.next_attempt_at > now
    )
    log.info("run not claimable (%s); duplicate delivery is a no-op", state.status.value)
    if state.status != RunStatus.PROCESSING and plugin and attempt and keys.plugin_name_ok(plugin):
        # Nobody runs this delivery's attempt: the slot the consumer took for it goes back (only
        # that attempt's: a later attempt's slot is not ours). A task sent before deliveries named
        # their attempt leaves its slot to expire with the dispatch lease.
        RunSlot(plugin, str(rid), attempt=attempt, lease_seconds=0).release()
    return Finish(state.status.value, entry_done=state.status.is_terminal or retry_waiting)


@dataclass
class Attempt:
    """The attempt being run: its lease (the fence), when it started, and its LLM once built."""

    lease: Lease
    started_at: datetime
    model: str
    llm: Any = None

    def log_entry(self, outcome: AttemptOutcome, *, error: str | None = None) -> dict[str, Any]:
        """This attempt's ``attempt_log`` entry, with the token usage of its LLM so far."""
        return attempts.record(
            attempt=self.lease.attempt,
            outcome=outcome,
            started_at=self.started_at,
            finished_at=utcnow(),
            usage=attempts.usage_of(self.llm),
            error=error,
        )


def _run(claimed: runs.ClaimedRun, settings: Settings) -> Finish:
    # The plugin's flow-control slot lives as long as the lease, and goes back at the end.
    slot = RunSlot(
        claimed.plugin, str(claimed.run_id), attempt=claimed.attempt, lease_seconds=settings.lease_seconds
    )
    lease = Lease(
        claimed.run_id,
        attempt=claimed.attempt,
        lease_seconds=settings.lease_seconds,
        base=claimed.base,
        on_renew=slot.renew,
    )
    try:
        return _run_leased(claimed, settings, Attempt(lease, claimed.started_at, model_name(settings)), slot)
    finally:
        slot.release()


def _run_leased(claimed: runs.ClaimedRun, settings: Settings, attempt: Attempt, slot: RunSlot) -> Finish:
    lease = attempt.lease
    try:
        plugin = find_plugin(claimed.plugin, settings.plugins_dir)
        slot.hold(plugin_cap(plugin.name, plugin.manifest.max_concurrency, settings))
        crew_folder = entry_point_file(plugin)[0].parent
        effective = validate_settings(plugin.spec, claimed.input)
        timeout = settings.run_timeout(plugin.manifest.timeout_seconds)
        attempt.llm = make_llm(settings, run_timeout=timeout)
    except SettingsValidationError as exc:
        issues = "; ".join(str(issue) for issue in exc.errors)
        return _fail(attempt, f"invalid input for plugin {claimed.plugin}: {issues}")
    except Exception as exc:  # plugin missing or broken, LLM not constructible: classified like a crew error
        return _failure(attempt, exc, settings)
    ctx = CrewContext.create(
        run_id=str(claimed.run_id),
        plugin=plugin.name,
        settings=effective,
        llm=attempt.llm,
        folder=plugin.folder,
        crew_folder=crew_folder,
        # Removed by the crew thread when it ends (an abandoned one may still be writing).
        workdir=workdir.create(str(claimed.run_id), settings.run_workdir_root),
    )
    job = CrewJob(plugin, ctx, attempt.model)
    # DEBUG: Celery already logs each task it receives; one INFO line per run (its outcome) is enough.
    log.debug("running crew (time limit %s s)", timeout)
    # The crew thread inherits the deadline: a request that cannot get a turn in the model's
    # budget before it is not sent (the attempt fails as transient and is retried later).
    with run_deadline(time.monotonic() + timeout), cancel_watch.watching(ctx.run_id, ctx.stopped):
        verdict = supervise(job, lease=lease, timeout=timeout)
    if verdict is not Verdict.FINISHED and runtime.in_pool_child():
        workdir.remove(ctx.workdir)  # this child exits soon; its crew thread will never clean up
    if verdict is Verdict.TIMED_OUT:
        log.warning("crew timed out after %s s", timeout)
        finish = _fail(attempt, f"timed out after {timeout} s", outcome=AttemptOutcome.TIMED_OUT)
        return _with_abandoned(finish, job)
    if verdict is Verdict.LEASE_LOST:
        return _with_abandoned(_lost(attempt), job)
    if job.output is not None:
        return _complete(attempt, job.output)
    assert job.error is not None
    # A request refused by the model's budget surfaces from the provider client as a
    # connection error; the run's error says what really happened.
    return _failure(attempt, _flow_cause(job.error) or job.error, settings)


def _flow_cause(exc: BaseException) -> BudgetWaitExpired | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BudgetWaitExpired):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _with_abandoned(finish: Finish, job: CrewJob) -> Finish:
    return replace(finish, abandoned=job.alive)


def _end(
    attempt: Attempt, end: runs.AttemptEnd, entry: dict[str, Any], *, now: datetime | None = None
) -> bool:
    """Record how the attempt ended (one fenced UPDATE, committed by itself); False if it lost the run."""
    lease = attempt.lease
    with autocommit_connection() as conn:
        return runs.end_attempt(
            conn, lease.run_id, attempt=lease.attempt, end=end, now=now or utcnow(), log_entry=entry
        )


def _complete(attempt: Attempt, output: dict[str, Any]) -> Finish:
    lease = attempt.lease
    entry = attempt.log_entry(AttemptOutcome.COMPLETED)
    if not _end(attempt, runs.AttemptEnd.completed(output), entry):
        return _lost(attempt, entry)
    tokens = output.get("token_usage", {}).get("total_tokens")
    log.info("run completed (%s tokens, %.1f s)", tokens, output.get("duration_seconds", 0))
    return Finish(RunStatus.COMPLETED.value, lease.attempt, executed=True, entry_done=True)


def _fail(attempt: Attempt, message: str, *, outcome: AttemptOutcome = AttemptOutcome.FAILED) -> Finish:
    lease = attempt.lease
    entry = attempt.log_entry(outcome, error=message)
    if not _end(attempt, runs.AttemptEnd.failed(message), entry):
        return _lost(attempt, entry)
    log.warning("run failed: %s", message)
    return Finish(RunStatus.FAILED.value, lease.attempt, executed=True, entry_done=True, error=message)


def _failure(attempt: Attempt, exc: BaseException, settings: Settings) -> Finish:
    lease = attempt.lease
    failure = classify_failure(exc, model=attempt.model)
    if not failure.transient:
        if provider_errors.classify(exc) is None:  # a crew or plugin error: its traceback helps
            log.warning("run failed with a permanent error", exc_info=exc)
        return _fail(attempt, failure.message)  # logs the one line (a provider's: classified, masked)
    # The budget counts tries since the last replay: a replayed run starts again at 1.
    tries = max(lease.tries, 1)
    if tries >= settings.max_attempts:
        return _fail(attempt, f"{failure.message} (gave up after {tries} attempts)")
    delay = retry_delay(tries, failure.retry_after, settings)
    now = utcnow()
    at = now + timedelta(seconds=delay)
    note = f"attempt {tries}/{settings.max_attempts} failed, retry after {at.isoformat()}: "
    note += failure.message
    entry = attempt.log_entry(AttemptOutcome.RETRY, error=failure.message)
    if not _end(attempt, runs.AttemptEnd.retry(note, at=at), entry, now=now):
        return _lost(attempt, entry)
    log.warning("transient error; retry in %.1f s: %s", delay, failure.message)
    return Finish(RETRY_SCHEDULED, lease.attempt, executed=True, entry_done=True, error=note, retry_at=at)


def retry_delay(attempt: int, retry_after: float | None, settings: Settings) -> float:
    """Seconds before the next attempt: our backoff, never sooner than the provider's Retry-After.

    A Retry-After longer than ``RETRY_AFTER_MAX_SECONDS`` is cut to it.
    """
    delay = backoff_seconds(attempt, base=settings.retry_base_seconds, cap=settings.retry_max_seconds)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_after_max_seconds))
    return delay


def _lost(attempt: Attempt, entry: dict[str, Any] | None = None) -> Finish:
    """This attempt no longer owns the run: keep its log entry; say why, and whether the entry is done."""
    lease = attempt.lease
    entry = dict(entry or attempt.log_entry(AttemptOutcome.LOST), outcome=AttemptOutcome.LOST.value)
    with session_scope() as session:
        status = runs.record_lost_attempt(session, lease.run_id, log_entry=entry)
    if status is RunStatus.CANCELLED:
        log.info("run was cancelled while running; stopped")
    else:
        log.warning("lost the run (now %s); our outcome was not recorded", status.value if status else "gone")
    terminal = status in TERMINAL_STATUSES
    return Finish(status.value if status else "missing", lease.attempt, executed=True, entry_done=terminal)


def _xack(entry: StreamEntry) -> None:
    if keys.plugin_from_stream(entry.stream) is None:
        log.warning("not acknowledging %s: not one of our streams", entry.stream)
        return
    try:
        get_redis().xack(entry.stream, entry.group, entry.entry_id)
    except redis.RedisError as exc:
        # Harmless: the consumer re-dispatches the entry, the run is terminal, the next delivery acks.
        log.warning("XACK of %s %s failed: %s", entry.stream, entry.entry_id, exc)


def _exit_child() -> None:
    log.warning("exiting this pool process to stop an abandoned crew thread (Celery replaces it)")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(ABANDONED_CREW_EXIT_CODE)
