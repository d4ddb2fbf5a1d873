"""CrewAI's own error output on a provider failure is demoted: the worker logs each failure once.

In-process, through CrewAI's real OpenAI provider and the test server answering 401
(whose error body echoes the end of the key, as OpenAI's does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from app.execution import inner_retries, runtime
from app.execution.llm import make_llm
from tests.llm_server import LLMServer, Reply

KEY = "sk-test-crewai-logs-abcdefgh9876"


@pytest.fixture
def server(setenv: Any) -> Iterator[LLMServer]:
    with LLMServer(default=Reply(status=401)) as llm_server:
        setenv(**llm_server.env(api_key=KEY), FIRST_SIP_LLM_MAX_RETRIES="0")
        runtime.prepare()
        yield llm_server


def test_a_provider_failure_leaves_no_crewai_error_line_and_no_key(
    server: LLMServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from crewai import Agent, Crew, Task

    caplog.set_level(logging.INFO)
    agent = Agent(role="Writer", goal="Write", backstory="Writes.", llm=make_llm())
    crew = Crew(agents=[agent], tasks=[Task(description="Write.", expected_output="text", agent=agent)])
    inner_retries.turn_down(crew)
    with pytest.raises(Exception, match="401"):
        crew.kickoff()
    assert server.count() == 1
    printed = capfd.readouterr()
    logged = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == [], logged
    for text in (logged, printed.out, printed.err):
        assert "OpenAI API call failed" not in text
        assert "Error executing listener" not in text
        assert "[CrewAIEventsBus]" not in text
        assert KEY[-4:] not in text  # the provider's echo of the key's end


def test_crewai_errors_are_kept_as_debug_when_the_worker_logs_at_debug(
    server: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("crewai.flow.runtime").error("Error executing listener x: boom")
    (record,) = [r for r in caplog.records if "boom" in r.getMessage()]
    assert record.levelno == logging.DEBUG
