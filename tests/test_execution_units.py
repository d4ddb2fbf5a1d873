"""Execution pieces in-process: failure classification, the crew contract, YAML crews, loading.

These need no worker; the behaviour of the whole is covered by the real-worker
tests in test_execution*.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.errors import PermanentError, TransientError
from app.execution import runtime
from app.execution.contract import CrewContext, check_inputs, check_llm
from app.execution.crew_loader import find_plugin, load_entry_point
from app.execution.llm import make_llm
from app.execution.outcome import error_message, is_transient, token_usage

# ---- classification --------------------------------------------------------------------------


def _named(name: str, **attrs: Any) -> Exception:
    exc = type(name, (Exception,), {})("boom")
    for key, value in attrs.items():
        setattr(exc, key, value)
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        TransientError("provider down"),
        ConnectionResetError("reset"),
        TimeoutError("slow"),
        _named("RateLimitError"),
        _named("APIConnectionError"),
        _named("APITimeoutError"),
        _named("ServiceUnavailableError"),
        _named("ProviderError", status_code=429),
        _named("ProviderError", status_code=503),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'status_code', '')}",
)
def test_transient_failures(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        PermanentError("bad plugin"),
        ValueError("bug"),
        KeyError("x"),
        _named("BadRequestError", status_code=400),
        _named("AuthenticationError", status_code=401),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_failures(exc: Exception) -> None:
    assert not is_transient(exc)


def test_a_wrapped_transient_cause_is_transient_unless_declared_permanent() -> None:
    try:
        try:
            raise _named("RateLimitError")
        except Exception as inner:
            raise RuntimeError("crew failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    try:
        raise PermanentError("plugin says never retry") from TimeoutError()
    except PermanentError as declared:
        assert not is_transient(declared)


def test_error_message_names_the_type_redacts_secrets_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdefghijkl")
    assert error_message(ValueError("key sk-live-abcdefghijkl rejected")) == "ValueError: key *** rejected"
    assert error_message(KeyError()) == "KeyError"
    assert len(error_message(ValueError("x" * 10_000))) == 2000


def test_token_usage_counts_a_shared_llm_once() -> None:
    from crewai import Agent, Crew, Task

    llm = make_llm()
    agents = [Agent(role=r, goal="g", backstory="b", llm=llm) for r in ("A", "B")]
    tasks = [Task(description=f"Say {a.role}.", expected_output="x", agent=a) for a in agents]
    crew = Crew(agents=agents, tasks=tasks)
    crew.kickoff()
    assert token_usage(llm)["successful_requests"] == 2
    # CrewAI's own sum adds each agent's view of the same instance: twice.
    assert crew.usage_metrics is not None and crew.usage_metrics.successful_requests == 4


# ---- contract and YAML crews -----------------------------------------------------------------


def _context(folder: Path, llm: Any = None) -> CrewContext:
    return CrewContext.create(
        run_id="r1",
        plugin=folder.name,
        settings={},
        llm=llm if llm is not None else make_llm(),
        folder=folder,
        crew_folder=folder / "crew",
    )


def _crew_files(folder: Path, agents: str, tasks: str) -> Path:
    (folder / "crew").mkdir(parents=True, exist_ok=True)
    (folder / "crew" / "agents.yaml").write_text(agents)
    (folder / "crew" / "tasks.yaml").write_text(tasks)
    return folder


AGENTS = "a:\n  role: Reader of {topic}\n  goal: Read {topic}\n  backstory: Reads.\n"
TASKS = "t:\n  agent: a\n  description: Summarise {topic} for {who}.\n  expected_output: A line.\n"


def test_yaml_crew_uses_the_run_llm_and_missing_inputs_are_named(tmp_path: Path) -> None:
    ctx = _context(_crew_files(tmp_path / "p", AGENTS, TASKS))
    crew = ctx.crew_from_yaml()
    check_llm(crew, ctx.llm)
    check_inputs(crew, {"topic": "x", "who": "me"})
    with pytest.raises(PermanentError) as info:
        check_inputs(crew, {"topic": "x"})
    assert str(info.value) == "crew inputs are missing placeholder values: {who} (in task 't' description)"
    with pytest.raises(PermanentError, match=r"\{topic\} \(in agent 'Reader of \{topic\}' role, .*goal"):
        check_inputs(crew, {"who": "me"})


def test_an_agent_with_another_llm_is_refused(tmp_path: Path) -> None:
    ctx = _context(_crew_files(tmp_path / "p", AGENTS, TASKS))
    crew = ctx.crew_from_yaml()
    with pytest.raises(PermanentError, match="does not use the framework's LLM"):
        check_llm(crew, make_llm())


@pytest.mark.parametrize(
    ("agents", "tasks", "message"),
    [
        (
            AGENTS.replace("backstory", "llm: gpt-4o\n  backstory"),
            TASKS,
            "p/crew/agents.yaml: a.llm: not allowed: plugins never pick a model",
        ),
        (AGENTS, TASKS.replace("agent: a", "agent: nobody"), "t.agent: 'nobody' is not defined"),
        (
            AGENTS,
            TASKS + "u:\n  agent: a\n  description: d\n  expected_output: e\n  context: [v]\n",
            "before it",
        ),
        (AGENTS, "t: [not, a, mapping]\n", "p/crew/tasks.yaml: t: must be a mapping"),
        (AGENTS, "t:\n  agent: a\n  description: d\n", "'expected_output' is required"),
        (AGENTS + "idle:\n  role: I\n  goal: g\n  backstory: b\n", TASKS, "agents with no task: ['idle']"),
        ("a: [unclosed\n", TASKS, "malformed YAML"),
    ],
)
def test_yaml_crew_errors_name_file_and_key(tmp_path: Path, agents: str, tasks: str, message: str) -> None:
    ctx = _context(_crew_files(tmp_path / "p", agents, tasks))
    with pytest.raises(PermanentError, match=None) as info:
        ctx.crew_from_yaml()
    assert message in str(info.value)


def test_resolve_stays_inside_the_plugin_folder(tmp_path: Path) -> None:
    ctx = _context(_crew_files(tmp_path / "p", AGENTS, TASKS))
    assert ctx.resolve("crew/agents.yaml") == (tmp_path / "p" / "crew" / "agents.yaml").resolve()
    with pytest.raises(PermanentError, match=r"contains '\.\.'"):
        ctx.resolve("feeds/../../etc/passwd")


# ---- loading entry points --------------------------------------------------------------------


def test_entry_points_import_with_private_relative_imports(make_plugin: Callable[..., Path]) -> None:
    main = "from .helpers import NAME\n\ndef build_crew(ctx):\n    return NAME\n"
    first = make_plugin("alpha", crew=main)
    second = make_plugin("beta", crew=main)
    (first / "crew" / "helpers.py").write_text("NAME = 'alpha'\n")
    (second / "crew" / "helpers.py").write_text("NAME = 'beta'\n")
    root = make_plugin.root  # type: ignore[attr-defined]
    builds = [load_entry_point(find_plugin(n, root)) for n in ("alpha", "beta")]
    assert [b(None) for b in builds] == ["alpha", "beta"]  # same module names, no collision
    assert load_entry_point(find_plugin("alpha", root)) is builds[0]  # imported once per version


def test_entry_point_problems_are_permanent_errors(make_plugin: Callable[..., Path]) -> None:
    root = make_plugin.root  # type: ignore[attr-defined]
    make_plugin("broken", crew="import not_a_module_anywhere\n")
    with pytest.raises(
        PermanentError, match=r"cannot import crew/main\.py: module 'not_a_module_anywhere' is not"
    ):
        load_entry_point(find_plugin("broken", root))
    make_plugin("nameless", crew="def something_else(ctx):\n    pass\n")
    with pytest.raises(PermanentError, match="has no callable 'build_crew'"):
        load_entry_point(find_plugin("nameless", root))
    with pytest.raises(PermanentError, match="is not installed on this worker"):
        find_plugin("absent", root)


# ---- the CrewAI runtime ----------------------------------------------------------------------


def test_prepare_turns_off_telemetry_and_disk_and_redis_side_effects(redis_session: Any) -> None:
    runtime.prepare()
    for key, value in runtime.CREWAI_ENV_DEFAULTS.items():
        assert os.environ[key] == value
    from crewai import Agent, Crew, Task

    before = set(redis_session.scan_iter(match="crewai:*"))
    agent = Agent(role="R", goal="g", backstory="b", llm=make_llm())
    crew = Crew(agents=[agent], tasks=[Task(description="Say hi.", expected_output="hi", agent=agent)])
    crew.kickoff()
    assert type(crew._task_output_handler).__name__ == "_DiscardTaskOutputs"
    assert set(redis_session.scan_iter(match="crewai:*")) == before


def test_a_forked_child_can_run_crews_after_the_parent_did() -> None:
    runtime.prepare()
    from crewai import Agent, Crew, Task

    def kickoff() -> str:
        agent = Agent(role="R", goal="g", backstory="b", llm=make_llm())
        crew = Crew(agents=[agent], tasks=[Task(description="Say hi.", expected_output="hi", agent=agent)])
        return str(crew.kickoff().raw)

    assert kickoff() == "Say hi."  # the parent's event bus now has threads
    pid = os.fork()
    if pid == 0:  # the child: what a prefork pool child does first, then a crew
        code = 1
        try:
            runtime.after_fork()
            code = 0 if kickoff() == "Say hi." and runtime.in_pool_child() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
