"""Build a sequential CrewAI crew from a plugin's ``agents.yaml`` and ``tasks.yaml``.

The files speak CrewAI's own YAML (the keys of CrewAI's ``AgentConfig`` and
``TaskConfig``), minus what is unsafe in a worker shared by many users:

* agents: ``role``, ``goal``, ``backstory`` (required) and the behaviour keys
  in :data:`AGENT_KEYS`; ``tools`` name tools the entry point passes in.
* tasks: ``description``, ``expected_output`` (required), ``agent`` (optional
  where the order binds it: the only agent, or the agent at the same position
  when both files have as many entries), ``context``, ``tools``,
  ``output_json``/``output_pydantic`` (a model class the entry point passes
  in, by class name), ``output_file`` (inside the run's folder) and the rest
  of :data:`TASK_KEYS`.
* refused, with the reason (:data:`REFUSED`): anything that picks a model
  (``llm``, ``function_calling_llm``, embedders), keeps data between runs
  (``memory``, knowledge), runs code or waits for a person.

Guarantees: every agent gets the run's LLM; unknown or refused keys, unknown
agent/task/tool/model names and a malformed file are a
:class:`PermanentError` naming the file and key. Tasks run in file order;
``context`` names earlier tasks whose output the task receives (without it,
CrewAI passes the output of every earlier task).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import PermanentError
from app.execution import llm_injection
from app.execution.run_tools import FETCH_TOOL_NAME, fetch_tool
from app.execution.shared_worker import AGENT_REFUSED, DATA_REASON, HUMAN_INPUT_REASON, MODEL_REASON
from app.execution.workdir import check_relative
from app.plugins import yamlsafe
from app.plugins.paths import PathEscapeError, resolve_inside

if TYPE_CHECKING:
    from app.execution.contract import CrewContext

AGENT_REQUIRED = ("role", "goal", "backstory")
AGENT_KEYS = {
    *AGENT_REQUIRED,
    "allow_delegation",
    "max_iter",
    "max_retry_limit",
    "max_execution_time",
    "max_rpm",
    "max_tokens",
    "verbose",
    "cache",
    "tools",
    "respect_context_window",
    "inject_date",
    "date_format",
    "use_system_prompt",
    "system_template",
    "prompt_template",
    "response_template",
    "reasoning",
    "max_reasoning_attempts",
    "guardrail",
    "guardrail_max_retries",
}
TASK_REQUIRED = ("description", "expected_output")
TASK_KEYS = {
    *TASK_REQUIRED,
    "agent",
    "context",
    "markdown",
    "tools",
    "output_json",
    "output_pydantic",
    "output_file",
    "create_directory",
    "async_execution",
    "guardrail",
    "guardrail_max_retries",
}
#: CrewAI keys a plugin's YAML may not use, and why.
REFUSED = {
    **dict.fromkeys(llm_injection.MODEL_FIELDS, MODEL_REASON),
    **AGENT_REFUSED,
    "memory": DATA_REASON,
    "from_repository": "it downloads an agent definition at run time",
    "human_input": HUMAN_INPUT_REASON,
    "step_callback": "Python hooks by name are not supported here; use a @CrewBase class",
    "callbacks": "Python hooks by name are not supported here; use a @CrewBase class",
    "callback": "Python hooks by name are not supported here; use a @CrewBase class",
    "cache_handler": "Python hooks by name are not supported here; use a @CrewBase class",
    "converter_cls": "Python hooks by name are not supported here; use a @CrewBase class",
}


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
        if key in REFUSED:
            raise PermanentError(f"{where}: {name}.{key}: not allowed: {REFUSED[key]}")
        if key not in allowed:
            raise PermanentError(f"{where}: {name}: unknown key {key!r}")
    for key in required:
        if not isinstance(body.get(key), str) or not body[key].strip():
            raise PermanentError(f"{where}: {name}: {key!r} is required and must be text")


def _named(items: Iterable[Any] | Mapping[str, Any], label: Any) -> dict[str, Any]:
    if isinstance(items, Mapping):
        return dict(items)
    return {label(item): item for item in items}


def _pick(where: str, name: str, key: str, value: Any, known: dict[str, Any], kind: str) -> list[Any]:
    refs = value if isinstance(value, list) else [value]
    if not all(isinstance(r, str) for r in refs):
        raise PermanentError(f"{where}: {name}.{key}: must name {kind}s (text)")
    missing = [r for r in refs if r not in known]
    if missing:
        offered = ", ".join(sorted(known)) or "none were passed to crew_from_yaml"
        raise PermanentError(f"{where}: {name}.{key}: unknown {kind} {missing[0]!r} (known: {offered})")
    return [known[r] for r in refs]


def _agents(where: str, spec: dict[str, dict[str, Any]], llm: Any, tools: dict[str, Any]) -> dict[str, Any]:
    from crewai import Agent

    agents = {}
    for name, body in spec.items():
        _check_keys(where, name, body, AGENT_KEYS, AGENT_REQUIRED)
        options = {"allow_delegation": False, "verbose": False, **body}
        if "tools" in body:
            options["tools"] = _pick(where, name, "tools", body["tools"] or [], tools, "tool")
        try:
            agents[name] = Agent(llm=llm, **options)
        except ValueError as exc:  # pydantic's ValidationError: CrewAI refused a value
            raise PermanentError(f"{where}: {name}: {exc}") from exc
    return agents


def _agent_for(
    where: str, name: str, index: int, body: dict[str, Any], agents: dict[str, Any], tasks: int
) -> Any:
    if "agent" not in body:
        if len(agents) == 1:
            return next(iter(agents.values()))
        if len(agents) == tasks:
            return list(agents.values())[index]
        raise PermanentError(
            f"{where}: {name}: 'agent' is required (the order binds an agent only when there is one "
            f"agent or as many agents as tasks; agents.yaml has {len(agents)}, this file {tasks})"
        )
    agent = agents.get(body["agent"]) if isinstance(body["agent"], str) else None
    if agent is None:
        raise PermanentError(f"{where}: {name}.agent: {body['agent']!r} is not defined in agents.yaml")
    return agent


def _task_options(
    where: str, name: str, body: dict[str, Any], tools: dict[str, Any], models: dict[str, Any]
) -> dict[str, Any]:
    options = {k: v for k, v in body.items() if k not in ("agent", "context")}
    if "tools" in body:
        options["tools"] = _pick(where, name, "tools", body["tools"] or [], tools, "tool")
    for key in ("output_json", "output_pydantic"):
        if key in body:
            options[key] = _pick(where, name, key, body[key], models, "model")[0]
    output_file = body.get("output_file")
    if output_file is not None:
        problem = check_relative(output_file) if isinstance(output_file, str) else "must be text"
        if problem:
            raise PermanentError(f"{where}: {name}.output_file {problem}")
    return options


def _tasks(
    where: str,
    spec: dict[str, dict[str, Any]],
    agents: dict[str, Any],
    *,
    tools: dict[str, Any],
    models: dict[str, Any],
) -> list[Any]:
    from crewai import Task

    built: dict[str, Any] = {}
    for index, (name, body) in enumerate(spec.items()):
        _check_keys(where, name, body, TASK_KEYS, TASK_REQUIRED)
        agent = _agent_for(where, name, index, body, agents, len(spec))
        context_names = body.get("context") or []
        if not isinstance(context_names, list) or not all(isinstance(c, str) for c in context_names):
            raise PermanentError(f"{where}: {name}: 'context' must be a list of task names")
        unknown = [c for c in context_names if c not in built]
        if unknown:
            raise PermanentError(f"{where}: {name}: context names tasks not defined before it: {unknown}")
        options = _task_options(where, name, body, tools, models)
        if "context" in body:
            # Without an explicit context CrewAI passes every earlier task's output.
            options["context"] = [built[c] for c in context_names]
        try:
            built[name] = Task(name=name, agent=agent, **options)
        except ValueError as exc:  # pydantic's ValidationError: CrewAI refused a value
            raise PermanentError(f"{where}: {name}: {exc}") from exc
    return list(built.values())


def crew_from_yaml(
    ctx: CrewContext,
    *,
    agents_file: str,
    tasks_file: str,
    tools: Iterable[Any] | Mapping[str, Any] = (),
    models: Iterable[type] | Mapping[str, type] = (),
) -> Any:
    """A sequential ``Crew`` whose agents all use ``ctx.llm``, from files next to the entry point."""
    from crewai import Crew, Process

    tool_names = _named(tools, lambda t: str(getattr(t, "name", type(t).__name__)))
    if FETCH_TOOL_NAME not in tool_names:  # a tool the plugin passes wins
        tool_names[FETCH_TOOL_NAME] = fetch_tool(ctx)
    model_names = _named(models, lambda m: m.__name__)
    agents_where, agents_spec = load_mapping(ctx.crew_folder, agents_file, plugin_folder=ctx.folder)
    tasks_where, tasks_spec = load_mapping(ctx.crew_folder, tasks_file, plugin_folder=ctx.folder)
    agents = _agents(agents_where, agents_spec, ctx.llm, tool_names)
    tasks = _tasks(tasks_where, tasks_spec, agents, tools=tool_names, models=model_names)
    used = {id(task.agent) for task in tasks}
    idle = [name for name, agent in agents.items() if id(agent) not in used]
    if idle:
        raise PermanentError(f"{agents_where}: agents with no task: {idle}")
    return Crew(agents=list(agents.values()), tasks=tasks, process=Process.sequential, verbose=False)
