"""The rush benchmark's crew: one agent, one task, one LLM call (the prompt names the run)."""

from __future__ import annotations

from typing import Any


def build_crew(ctx: Any) -> Any:
    return ctx.plan(ctx.crew_from_yaml(), {"run_id": ctx.run_id})
