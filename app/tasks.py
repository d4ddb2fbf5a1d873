"""Celery tasks. Thin: the logic lives in the service modules they call.

``execute_run`` imports the execution service (and so CrewAI) only when it
runs, so importing this module stays cheap for beat, the consumer and the API.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Retry

from app.celery_app import celery_app
from app.errors import RunFailed


def task_id_for(run_id: object, entry_id: str | None) -> str:
    """The Celery task id of one dispatch of a run: the run id shows in Flower's task list.

    The stream entry id keeps re-dispatches of the same run distinct.
    """
    return f"run-{run_id}-{entry_id or 'direct'}"


@celery_app.task(
    name="app.tasks.execute_run",
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


@celery_app.task(name="app.tasks.schedule_due_runs", ignore_result=True)
def schedule_due_runs() -> dict[str, int]:
    """One scheduler tick: create due runs, publish them, sweep the outbox."""
    from app.scheduler import tick

    return tick()
