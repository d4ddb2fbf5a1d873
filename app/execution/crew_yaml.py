"""Build a sequential CrewAI crew from a plugin's ``agents.yaml`` and ``tasks.yaml``.

This is the framework's equivalent of CrewAI's ``@CrewBase``, which we do not
use in workers: its ``@agent``/``@task`` memoization stores every agent and task
it ever built in one process-wide cache keyed by ``id(self)`` (unbounded
growth over thousands of runs, and a stale hit when an id is reused).

Guarantees: every agent gets the run's LLM and nothing else can set a model;
unknown keys, unknown agent or task references and a malformed file are a
:class:`PermanentError` naming the file and key. Tasks run in file order;
``context`` names earlier tasks whose output the task receives (without it,
CrewAI passes the output of every earlier task).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import PermanentError
from app.plugins import yamlsafe
from app.plugins.paths import PathEscapeError, resolve_inside

if TYPE_CHECKING:
    from app.execution.contract import CrewContext

AGENT_KEYS = {"role", "goal", "backstory", "allow_delegation", "max_iter", "max_retry_limit", "verbose"}
AGENT_REQUIRED = ("role", "goal", "backstory")
TASK_KEYS = {"description", "expected_output", "agent", "context", "markdown"}
TASK_REQUIRED = ("description", "expected_output", "agent")


def load_mapping(
    folder: Path, relative: str, *, plugin_folder: Path
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Read ``relative`` (confined to ``folder``) as a mapping of name -> mapping.

    Errors name the file as ``<plugin folder name>/<path inside it>``.
    """
    try:
        path = resolve_inside(folder, relative)
    except PathEscapeError as exc:
        raise PermanentError(str(exc)) from exc
    root = plugin_folder.resolve()
    inside = path.relative_to(root) if path.is_relative_to(root) else Path(relative)
    where = f"{plugin_folder.name}/{inside}"
    try:
        data = yamlsafe.load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PermanentError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    except yamlsafe.YamlError as exc:
        raise PermanentError(f"{where}: malformed YAML: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise PermanentError(f"{where}: must be a non-empty mapping of names to definitions")
    for name, body in data.items():
        if not isinstance(body, dict):
            raise PermanentError(f"{where}: {name}: must be a mapping")
    return where, data


def _check_keys(
    where: str, name: str, body: dict[str, Any], allowed: set[str], required: tuple[str, ...]
) -> None:
    for key in body:
        if key not in allowed:
            hint = " (plugins never pick a model)" if "llm" in str(key) else ""
            raise PermanentError(f"{where}: {name}: unknown key {key!r}{hint}")
    for key in required:
        if not isinstance(body.get(key), str) or not body[key].strip():
            raise PermanentError(f"{where}: {name}: {key!r} is required and must be text")


def _agents(where: str, spec: dict[str, dict[str, Any]], llm: Any) -> dict[str, Any]:
    from crewai import Agent

    agents = {}
    for name, body in spec.items():
        _check_keys(where, name, body, AGENT_KEYS, AGENT_REQUIRED)
        options = {"allow_delegation": False, "verbose": False, **body}
        agents[name] = Agent(llm=llm, **options)
    return agents


def _tasks(where: str, spec: dict[str, dict[str, Any]], agents: dict[str, Any]) -> list[Any]:
    from crewai import Task

    built: dict[str, Any] = {}
    for name, body in spec.items():
        _check_keys(where, name, body, TASK_KEYS, TASK_REQUIRED)
        agent = agents.get(body["agent"])
        if agent is None:
            raise PermanentError(f"{where}: {name}: agent {body['agent']!r} is not defined in agents.yaml")
        context_names = body.get("context") or []
        if not isinstance(context_names, list) or not all(isinstance(c, str) for c in context_names):
            raise PermanentError(f"{where}: {name}: 'context' must be a list of task names")
        unknown = [c for c in context_names if c not in built]
        if unknown:
            raise PermanentError(f"{where}: {name}: context names tasks not defined before it: {unknown}")
        options = {k: v for k, v in body.items() if k not in ("agent", "context")}
        if "context" in body:
            # Without an explicit context CrewAI passes every earlier task's output.
            options["context"] = [built[c] for c in context_names]
        built[name] = Task(name=name, agent=agent, **options)
    return list(built.values())


def crew_from_yaml(ctx: CrewContext, *, agents_file: str, tasks_file: str) -> Any:
    """A sequential ``Crew`` whose agents all use ``ctx.llm``, from files next to the entry point."""
    from crewai import Crew, Process

    agents_where, agents_spec = load_mapping(ctx.crew_folder, agents_file, plugin_folder=ctx.folder)
    tasks_where, tasks_spec = load_mapping(ctx.crew_folder, tasks_file, plugin_folder=ctx.folder)
    agents = _agents(agents_where, agents_spec, ctx.llm)
    tasks = _tasks(tasks_where, tasks_spec, agents)
    used = {task.agent.role for task in tasks}
    idle = [name for name, agent in agents.items() if agent.role not in used]
    if idle:
        raise PermanentError(f"{agents_where}: agents with no task: {idle}")
    return Crew(agents=list(agents.values()), tasks=tasks, process=Process.sequential, verbose=False)
