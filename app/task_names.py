"""The Celery tasks' names and ids: what senders need, without importing the tasks.

Guarantees: the names here are the names :mod:`app.tasks` registers, so the
stream consumer, beat and the routes send by name and never import the tasks
(or, through them, the scheduler and the execution package).
"""

from __future__ import annotations

#: Runs one run to a terminal state, then XACKs its stream entry (:func:`app.tasks.execute_run`).
EXECUTE_RUN = "app.tasks.execute_run"
#: One scheduler tick (:func:`app.tasks.schedule_due_runs`).
SCHEDULE_DUE_RUNS = "app.tasks.schedule_due_runs"


def task_id_for(run_id: object, entry_id: str | None) -> str:
    """The Celery task id of one dispatch of a run: the run id shows in Flower's task list.

    The stream entry id keeps re-dispatches of the same run distinct.
    """
    return f"run-{run_id}-{entry_id or 'direct'}"
