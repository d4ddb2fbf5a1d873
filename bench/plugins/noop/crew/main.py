"""A crew-shaped object that returns at once: benchmarks measure the pipeline, not CrewAI."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class NoopCrew:
    """Has what the framework reads from a crew (agents, tasks, kickoff) and nothing else."""

    agents: list[Any] = []
    tasks: list[Any] = []

    def kickoff(self, inputs: dict[str, Any]) -> Any:
        return SimpleNamespace(raw="ok", tasks_output=[])


def build_crew(ctx: Any) -> Any:
    return ctx.plan(NoopCrew(), {})
