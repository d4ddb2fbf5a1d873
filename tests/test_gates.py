"""Per-run gates, in-process, through CrewAI's real OpenAI provider talking to the test LLM server.

A stopped run's crew makes no further LLM request and no tool call; gates see
every LLM call, HTTP request and tool call of the run bound to their thread,
and nothing outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.errors import RunStopped
from app.execution import gates, runtime
from app.execution.contract import CrewContext
from app.execution.llm import make_llm
from tests.llm_server import LLMServer, Reply


@pytest.fixture
def server(setenv: Any) -> Iterator[LLMServer]:
    with LLMServer() as llm_server:
        setenv(**llm_server.env(), FIRST_SIP_LLM_MAX_RETRIES="1", FIRST_SIP_LLM_TIMEOUT_SECONDS="5")
        runtime.prepare()
        yield llm_server


@pytest.fixture
def seen() -> Iterator[list[tuple[str, str]]]:
    calls: list[tuple[str, str]] = []

    def record(call: gates.Call) -> None:
        calls.append((call.kind, call.name))

    gates.add_gate(record)
    yield calls
    gates.remove_gate(record)


def _crew(llm: Any, used: list[str]) -> Any:
    from crewai import Agent, Crew, Task
    from crewai.tools import tool

    @tool("echo")
    def echo(text: str) -> str:
        """Echo the text back."""
        used.append(text)
        return text

    agent = Agent(role="Echoer", goal="Echo", backstory="Echoes.", llm=llm, tools=[echo])
    task = Task(description="Echo hi.", expected_output="hi", agent=agent)
    return Crew(agents=[agent], tasks=[task])


def _context(llm: Any) -> CrewContext:
    return CrewContext.create(
        run_id="gated-run", plugin="p", settings={}, llm=llm, folder=Path("."), crew_folder=Path(".")
    )


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def test_gates_see_each_llm_call_http_request_and_tool_call_of_the_bound_run(
    server: LLMServer, seen: list[tuple[str, str]]
) -> None:
    llm = make_llm()
    used: list[str] = []
    server.enqueue(Reply(tool_calls=(("echo", {"text": "hi"}),)))
    with gates.bound(_context(llm)):
        result = _crew(llm, used).kickoff()
    assert "This is the test server's answer" in result.raw
    assert used == ["hi"]
    target = "127.0.0.1/v1/chat/completions"
    assert seen == [
        ("llm", "gpt-4o-mini"),
        ("http", target),
        ("tool", "echo"),
        ("llm", "gpt-4o-mini"),
        ("http", target),
    ]
    assert server.count() == 2


def test_no_gate_runs_outside_a_bound_run(server: LLMServer, seen: list[tuple[str, str]]) -> None:
    llm = make_llm()
    llm.call("hello")
    assert seen == [] and server.count() == 1


def test_a_stopped_run_makes_no_request(server: LLMServer) -> None:
    llm = make_llm()
    ctx = _context(llm)
    ctx.stopped.set()
    with gates.bound(ctx), pytest.raises(Exception) as info:
        _crew(llm, []).kickoff()
    assert any(isinstance(e, RunStopped) for e in _chain(info.value)), _chain(info.value)
    assert server.count() == 0


def test_a_run_stopped_during_a_request_makes_no_tool_call_and_no_further_request(server: LLMServer) -> None:
    llm = make_llm()
    ctx = _context(llm)
    used: list[str] = []

    def stop_then_ask_for_the_tool(request: Any) -> Reply:
        ctx.stopped.set()  # the framework gives up while the provider is answering
        return Reply(tool_calls=(("echo", {"text": "hi"}),))

    server.script = stop_then_ask_for_the_tool
    with gates.bound(ctx), pytest.raises(Exception) as info:
        _crew(llm, used).kickoff()
    assert any(isinstance(e, RunStopped) for e in _chain(info.value))
    assert used == []
    assert server.count() == 1


def test_a_client_retry_of_a_stopped_run_never_leaves_the_process(server: LLMServer) -> None:
    # FIRST_SIP_LLM_MAX_RETRIES=1: the client would retry a 503; the run is stopped meanwhile.
    llm = make_llm()
    ctx = _context(llm)

    def stop_and_fail(request: Any) -> Reply:
        ctx.stopped.set()
        return Reply(status=503)

    server.script = stop_and_fail
    with gates.bound(ctx), pytest.raises(Exception) as info:
        llm.call("hello")
    assert any(isinstance(e, RunStopped) for e in _chain(info.value))
    assert server.count() == 1


def test_each_crew_thread_sees_only_its_own_run(server: LLMServer) -> None:
    stopped_llm, running_llm = make_llm(), make_llm()
    stopped_ctx, running_ctx = _context(stopped_llm), _context(running_llm)
    stopped_ctx.stopped.set()
    outcomes: dict[str, Any] = {}

    def run(name: str, ctx: CrewContext) -> None:
        try:
            with gates.bound(ctx):
                outcomes[name] = _crew(ctx.llm, []).kickoff().raw
        except Exception as exc:
            outcomes[name] = exc

    threads = [
        threading.Thread(target=run, args=("stopped", stopped_ctx)),
        threading.Thread(target=run, args=("running", running_ctx)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert isinstance(outcomes["stopped"], Exception)
    assert isinstance(outcomes["running"], str) and "This is the test server" in outcomes["running"]
    assert server.count() == 1
