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

The crew thread records the files left in the run's folder and the tool and
structured-output problems of the run (:mod:`app.execution.trace`) with the
output; whether the crew succeeded or not, it evicts a ``@CrewBase``
instance from CrewAI's memo cache and removes the run's folder when it ends.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from app.execution import entry, gates, inner_retries, trace, workdir
from app.execution.contract import CrewContext
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

    def _execute(self, started: float) -> dict[str, Any]:
        # Every LLM request and tool call of this thread passes the run's gates (app.execution.gates).
        with trace.collecting() as run_trace, gates.bound(self.ctx):
            built = entry.build(self.plugin, self.ctx)
            plan = built.plan
            inner_retries.turn_down(plan.crew)  # our attempts are the retry policy
            with built.running():
                result = plan.crew.kickoff(inputs=plan.inputs)
            trace.settle()
            tool_errors = run_trace.tool_errors()
        outputs = trace.output_problems(plan.crew, result, run_trace)
        trace.failures(list(self.plugin.manifest.fail_on), tool_errors=tool_errors, outputs=outputs)
        framework = {**built.report(), "tool_errors": tool_errors, "output_validation": outputs}
        return shape_output(
            result,
            llm=self.ctx.llm,
            model=self.model,
            duration_seconds=time.monotonic() - started,
            report={**plan.report, entry.FRAMEWORK_REPORT_KEY: framework},
            files=workdir.collect(self.ctx.workdir) if self.ctx.workdir else [],
        )

    def run(self) -> None:
        """The crew thread's body. Never raises: the outcome is left on the job."""
        started = time.monotonic()
        try:
            self.output = self._execute(started)
        except BaseException as exc:  # the supervisor classifies; a thread must not die silently
            self.error = exc
        finally:
            workdir.remove(self.ctx.workdir)
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
