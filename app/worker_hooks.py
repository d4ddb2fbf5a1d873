"""The Celery worker's start-up hooks: refuse a worker that could not run crews, reset after fork.

Guarantees: imported only by :mod:`app.tasks` (so only by processes that
register the tasks: the worker, and tests), these handlers make a worker whose
LLM cannot be constructed exit 1 with one line before its pool starts, sweep
run folders a killed worker left behind, and give every forked pool child its
own database sockets and CrewAI state. Beat, the consumer and the API import
:mod:`app.celery_app` without them, so they never reach into the execution
package or the database from a signal handler.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from app.config import get_settings

log = logging.getLogger(__name__)


@signals.worker_init.connect
def check_worker(**_: Any) -> None:
    """Runs in the worker's main process before the pool starts; exits 1 if no run could succeed."""
    # Signal handlers' exceptions are only logged by Celery; SystemExit is not, so it stops the worker.
    from app.execution import runtime, workdir
    from app.execution.llm import startup_problem

    settings = get_settings()
    runtime.configure_environment()
    # Construct the configured LLM and its client as a run would (this imports CrewAI here, in
    # the worker's main process; pool children reset what they inherit: runtime.after_fork).
    problem = startup_problem(settings)
    if problem:
        # One line (the log record; Python prints it plainly if logging is not set up yet), exit 1.
        log.critical("refusing to start the worker: %s", problem)
        raise SystemExit(1)
    # Run folders a killed worker left behind (older than any run may last) hold users' files.
    workdir.sweep(settings.run_workdir_root, older_than=2 * settings.max_run_timeout_seconds)


@signals.worker_process_init.connect
def after_fork(**_: Any) -> None:
    """In a forked pool child: drop what the parent's sockets and threads left behind."""
    # A forked pool child must not reuse the parent's database sockets.
    from app.db.engine import dispose_engines
    from app.execution import runtime

    dispose_engines(close=False)
    # Nor the parent's CrewAI event-bus threads and locks (should the parent have imported CrewAI).
    runtime.after_fork()
