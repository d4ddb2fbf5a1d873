"""Running one plugin crew in its own thread, under a hard time limit and a lease.

Guarantees: :func:`supervise` returns when the crew finished, when the time
limit passed, or when the lease was lost (cancelled or taken over), whichever
comes first; it renews the lease every ``lease_seconds / 3`` while waiting.
Everything plugin-supplied (importing the entry point, building the crew,
kickoff, shaping the output) runs in the crew thread, so all of it is under
the limit. A crew thread that is given up on is never waited for again and
never writes anything: only the supervising thread records outcomes, and
it has moved on. (Stopping that thread for real is the worker's job: a prefork
child exits; see :mod:`app.execution.worker`.)
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from app.errors import PermanentError
from app.execution import gates, inner_retries
from app.execution.contract import CrewContext, CrewPlan, check_inputs, check_llm
from app.execution.crew_loader import load_entry_point
from app.execution.lease import Lease, LeaseState
from app.execution.outcome import shape_output
from app.plugins.registry import Plugin

log = logging.getLogger(__name__)


class Verdict(Enum):
    """How supervision ended."""

    FINISHED = "finished"  # the crew thread returned (job.output or job.error is set)
    TIMED_OUT = "timed_out"
    LEASE_LOST = "lease_lost"


@dataclass
class CrewJob:
    """One run's crew: built and kicked off in the crew thread; ``output`` or ``error`` when done."""

    plugin: Plugin
    ctx: CrewContext
    model: str
    output: dict[str, Any] | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def _plan(self) -> CrewPlan:
        build_crew = load_entry_point(self.plugin)
        plan = build_crew(self.ctx)
        if not isinstance(plan, CrewPlan):
            raise PermanentError(
                f"plugin {self.plugin.name}: {self.plugin.manifest.entry_point} must return a CrewPlan "
                f"(ctx.plan(crew, inputs)), got {type(plan).__name__}"
            )
        if not hasattr(plan.crew, "kickoff"):
            raise PermanentError(f"plugin {self.plugin.name}: CrewPlan.crew is not a CrewAI crew")
        check_llm(plan.crew, self.ctx.llm)
        check_inputs(plan.crew, plan.inputs)
        inner_retries.turn_down(plan.crew)
        return plan

    def run(self) -> None:
        """The crew thread's body. Never raises: the outcome is left on the job."""
        started = time.monotonic()
        try:
            # Every LLM request and tool call of this thread passes the run's gates (app.execution.gates).
            with gates.bound(self.ctx):
                plan = self._plan()
                result = plan.crew.kickoff(inputs=plan.inputs)
            self.output = shape_output(
                result,
                llm=self.ctx.llm,
                model=self.model,
                duration_seconds=time.monotonic() - started,
                report=plan.report,
            )
        except BaseException as exc:  # the supervisor classifies; a thread must not die silently
            self.error = exc
        if self.ctx.stopped.is_set():
            log.info("abandoned crew thread finished; its result is discarded")

    def start(self) -> None:
        """Start the crew thread (a daemon: an abandoned one never blocks process exit)."""
        # The thread runs in a copy of the current context: log fields bound by
        # the worker follow it, and CrewAI's context variables start fresh per run.
        context = contextvars.copy_context()
        self.thread = threading.Thread(
            target=context.run, args=(self.run,), name=f"crew-{self.ctx.run_id[:8]}", daemon=True
        )
        self.thread.start()

    @property
    def alive(self) -> bool:
        """True while the crew thread runs."""
        return self.thread is not None and self.thread.is_alive()


def supervise(job: CrewJob, *, lease: Lease, timeout: float) -> Verdict:
    """Run ``job`` until it finishes, ``timeout`` seconds pass, or ``lease`` is lost."""
    deadline = time.monotonic() + timeout
    job.start()
    assert job.thread is not None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            job.ctx.stopped.set()
            return Verdict.TIMED_OUT
        job.thread.join(min(remaining, lease.interval))
        if not job.thread.is_alive():
            return Verdict.FINISHED
        if lease.renew() is LeaseState.LOST:
            job.ctx.stopped.set()
            return Verdict.LEASE_LOST
