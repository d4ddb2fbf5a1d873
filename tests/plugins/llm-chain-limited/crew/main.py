"""A crew of ``steps`` sequential tasks for one agent: one LLM call per task with a ReAct answer."""

from __future__ import annotations

from typing import Any


def build_crew(ctx: Any) -> Any:
    from crewai import Agent, Crew, Process, Task

    agent = Agent(
        role="Line writer",
        goal="Write one line",
        backstory="Writes lines.",
        llm=ctx.llm,
        allow_delegation=False,
    )
    tasks = [
        Task(
            name=f"step-{number}",
            description=f"Write line {number} about {{topic}}.",
            expected_output="One line.",
            agent=agent,
        )
        for number in range(1, int(ctx.settings["steps"]) + 1)
    ]
    crew = Crew(agents=[agent], tasks=tasks, process=Process.sequential, verbose=False)
    return ctx.plan(crew, {"topic": ctx.settings["topic"]})
