"""The flow-control tests' crew: one LLM call per task, each prompt naming the run.

``calls`` (settings) picks one task or two. The LLM test server reads the run id
from the prompt, so a test can tell, at the server, which runs were in flight.
"""

from __future__ import annotations

from typing import Any


def build_crew(ctx: Any) -> Any:
    tasks = "tasks.yaml" if ctx.settings["calls"] == 2 else "one-task.yaml"
    crew = ctx.crew_from_yaml(tasks=tasks)
    return ctx.plan(crew, {"run_id": ctx.run_id})
