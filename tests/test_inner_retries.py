"""Agent-level retries turned down, in-process, through CrewAI's real OpenAI provider and the test server.

One LLM call of one attempt makes at most ``1 + FIRST_SIP_LLM_MAX_RETRIES``
requests, for a sequential crew's agents and for the manager agent CrewAI
creates itself at kickoff for a hierarchical crew (``manager_llm``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.execution import inner_retries, runtime
from app.execution.llm import make_llm
from tests.llm_server import LLMServer, Reply

MAX_RETRIES = 1


@pytest.fixture
def server(setenv: Any) -> Iterator[LLMServer]:
    with LLMServer() as llm_server:
        setenv(
            **llm_server.env(),
            FIRST_SIP_LLM_MAX_RETRIES=str(MAX_RETRIES),
            FIRST_SIP_LLM_TIMEOUT_SECONDS="5",
        )
        runtime.prepare()
        yield llm_server


def _agent(llm: Any, role: str) -> Any:
    from crewai import Agent

    # A plugin asking for more agent retries than the framework allows: overridden.
    return Agent(role=role, goal="Write", backstory="Writes.", llm=llm, max_retry_limit=5)


def _sequential(llm: Any) -> Any:
    from crewai import Crew, Task

    agent = _agent(llm, "Writer")
    return Crew(agents=[agent], tasks=[Task(description="Write.", expected_output="text", agent=agent)])


def _hierarchical(llm: Any) -> Any:
    from crewai import Crew, Process, Task

    writer = _agent(llm, "Writer")
    task = Task(description="Write.", expected_output="text")
    return Crew(agents=[writer], tasks=[task], process=Process.hierarchical, manager_llm=llm)


@pytest.mark.parametrize("status", [429, 500])
@pytest.mark.parametrize("shape", [_sequential, _hierarchical], ids=["sequential", "hierarchical"])
def test_one_failing_llm_call_costs_at_most_one_request_plus_the_client_retries(
    server: LLMServer, status: int, shape: Any
) -> None:
    server.default = Reply(status=status, retry_after=0 if status == 429 else None)
    crew = shape(make_llm())
    inner_retries.turn_down(crew)
    with pytest.raises(Exception):  # noqa: B017 (what is raised is test_provider_errors' subject)
        crew.kickoff()
    assert server.count() == 1 + MAX_RETRIES
    if shape is _hierarchical:
        assert crew.manager_agent is not None and crew.manager_agent.max_retry_limit == 0
