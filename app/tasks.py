"""Celery tasks. Thin: the logic lives in the service modules they call.

``execute_run`` imports the execution service (and so CrewAI) only when it
runs, so importing this module stays cheap for beat. Senders never import it:
they send by name (:mod:`app.task_names`). Importing it connects the worker's
start-up hooks (:mod:`app.worker_hooks`).
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Retry

import app.worker_hooks  # noqa: F401  (connects the worker's signal handlers)
from app.celery_app import celery_app
from app.errors import RunFailed
from app.task_names import EXECUTE_RUN, SCHEDULE_DUE_RUNS


@celery_app.task(
    name=EXECUTE_RUN,
    acks_late=True,
    ignore_result=True,
    # Expected outcomes: logged by Celery as one line, without a traceback.
    throws=(RunFailed, Retry),
)
def execute_run(
    run_id: str,
    *,
    plugin: str | None = None,
    stream: str | None = None,
    group: str | None = None,
    entry_id: str | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """Run ``run_id`` at most once to a terminal state, then XACK its stream entry if named.

    ``plugin`` is informational (visible in Flower); the run row is authoritative.
    ``attempt`` is the attempt the stream entry asked for (its flow-control slot's).
    The task's Celery state agrees with it: a failed run raises :class:`RunFailed`
    (FAILURE, with the run's error), a scheduled retry raises Celery's ``Retry``
    without publishing anything (RETRY; the next attempt comes from
    ``next_attempt_at`` through the outbox, never a Celery countdown), and
    everything else returns (SUCCESS: completed, cancelled, a duplicate
    delivery's no-op). The message is acknowledged in every case (late ack;
    acks on failure), so Celery never redelivers it.
    """
    from app.execution.worker import celery_outcome, execute

    return celery_outcome(
        execute(run_id, plugin=plugin, stream=stream, group=group, entry_id=entry_id, attempt=attempt)
    )


@celery_app.task(name=SCHEDULE_DUE_RUNS, ignore_result=True)
def schedule_due_runs() -> dict[str, int]:
    """One scheduler tick: create due runs, publish them, sweep the outbox."""
    from app.beat_tick import tick

    return tick()
