"""CrewAI ``@CrewBase`` classes as entry points, made safe for a worker that runs thousands of crews.

A class such as ``crewai create crew NAME --classic`` generates
(``@agent``/``@task``/``@crew`` methods, ``config/agents.yaml`` and
``config/tasks.yaml`` next to it) is used exactly as written:

* :func:`check_class` reads the class's YAML with CrewAI's own loader before
  anything is built and names the file and key of every reference CrewAI
  would fail on (an undefined agent, context task, tool, output class or
  callback), of options unsafe in a shared worker
  (:data:`app.execution.shared_worker.AGENT_REFUSED`: knowledge, embedders,
  code execution), of ``human_input`` (nobody answers a worker's stdin) and of
  crew hooks (CrewAI 1.15 registers them process-wide: they would run for
  every other user's crew in the worker). Config files must lie inside the
  plugin folder.
* :func:`build` instantiates the class with ``self.ctx`` (the run's context)
  set before its ``__init__`` runs and the framework's tools
  (:mod:`app.execution.run_tools`: ``fetch_url``) usable by name in its YAML
  unless the class defines a tool of that name, then calls its ``@crew``
  method; the caller has :func:`app.execution.llm_injection.injecting`
  active, so every agent gets the run's LLM.
* :func:`evict` removes the instance's entries from CrewAI's memo cache.
  ``@agent``/``@task``/``@crew``/``@tool``... results are kept in one
  process-wide cache keyed by ``id(instance)``: without eviction a worker
  keeps every agent and task it ever built (and a new instance that reuses
  a freed id would be served the old one's agents). Eviction takes the
  cache's own write lock, so it is safe with many runs in parallel threads.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import PermanentError
from app.execution import run_tools
from app.execution.llm_injection import AGENT_LLM_FIELDS
from app.execution.shared_worker import AGENT_REFUSED, HUMAN_INPUT_REASON
from app.execution.workdir import check_relative

if TYPE_CHECKING:
    from app.execution.contract import CrewContext

#: Marker attributes CrewAI's decorators put on methods and output classes.
_KINDS = {
    "agent": "is_agent",
    "task": "is_task",
    "tool": "is_tool",
    "callback": "is_callback",
    "llm": "is_llm",
    "output_json": "is_output_json",
    "output_pydantic": "is_output_pydantic",
    "cache_handler": "is_cache_handler",
}
_HOOK_MARKERS = (
    "is_before_llm_call_hook",
    "is_after_llm_call_hook",
    "is_before_tool_call_hook",
    "is_after_tool_call_hook",
    "_interception_point",
)


def is_crew_class(target: Any) -> bool:
    """True for a class decorated with CrewAI's ``@CrewBase``."""
    return isinstance(target, type) and getattr(target, "is_crew_class", False) is True


def _members(cls: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        found.update(vars(klass))
    return found


def _names(members: dict[str, Any], marker: str) -> set[str]:
    return {name for name, value in members.items() if getattr(value, marker, False) is True}


def _config(cls: type, attr: str, folder: Path) -> tuple[str, dict[str, Any]]:
    """(file label, parsed mapping) of the class's agents or tasks YAML, read by CrewAI's loader."""
    import yaml

    relative = getattr(cls, attr, None)
    base = Path(getattr(cls, "base_directory", folder))
    if not isinstance(relative, str):
        return f"{cls.__name__}.{attr}", {}
    path = (base / relative).resolve()
    root = folder.resolve()
    label = str(path.relative_to(root)) if path.is_relative_to(root) else relative
    if not path.is_relative_to(root):
        raise PermanentError(f"{cls.__name__}: {relative} resolves outside the plugin folder")
    if not path.is_file():
        return label, {}
    try:
        data = cls.load_yaml(path)  # type: ignore[attr-defined]
    except yaml.YAMLError as exc:
        raise PermanentError(f"{label}: malformed YAML: {getattr(exc, 'problem', None) or exc}") from exc
    for name, body in data.items():
        if not isinstance(body, dict):
            raise PermanentError(f"{label}: {name}: must be a mapping")
    return label, data


def _check_refs(label: str, name: str, key: str, value: Any, known: set[str], kind: str) -> None:
    values = value if isinstance(value, list) else [value]
    for ref in values:
        if isinstance(ref, str) and ref not in known:
            choices = ", ".join(sorted(known)) or "none"
            raise PermanentError(
                f"{label}: {name}.{key}: no @{kind} named {ref!r} in the crew class (defined: {choices})"
            )


def check_class(cls: type, folder: Path) -> list[str]:
    """Check a ``@CrewBase`` class and its YAML before building it; the models its YAML names.

    Raises :class:`PermanentError` naming the file and key of the first problem.
    """
    members = _members(cls)
    hooks = sorted(n for n, v in members.items() if any(hasattr(v, m) for m in _HOOK_MARKERS))
    if hooks:
        raise PermanentError(
            f"{cls.__name__}: crew hooks {hooks} are not supported: CrewAI registers them for the "
            "whole process, so they would run for every other crew in the worker"
        )
    names = {kind: _names(members, marker) for kind, marker in _KINDS.items()}
    names["tool"] |= {run_tools.FETCH_TOOL_NAME}
    agents_label, agents = _config(cls, "original_agents_config_path", folder)
    tasks_label, tasks = _config(cls, "original_tasks_config_path", folder)
    requested = []
    for name, body in agents.items():
        for key in AGENT_LLM_FIELDS:
            if body.get(key):
                requested.append(str(body[key]))
        for key, reason in AGENT_REFUSED.items():
            if key in body:
                raise PermanentError(f"{agents_label}: {name}.{key}: not allowed: {reason}")
        _check_refs(agents_label, name, "tools", body.get("tools") or [], names["tool"], "tool")
        for key, kind in (("step_callback", "callback"), ("cache_handler", "cache_handler")):
            if isinstance(body.get(key), str):
                _check_refs(agents_label, name, key, body[key], names[kind], kind)
    for name, body in tasks.items():
        checks = (
            ("agent", "agent"),
            ("context", "task"),
            ("tools", "tool"),
            ("output_json", "output_json"),
            ("output_pydantic", "output_pydantic"),
            ("callbacks", "callback"),
        )
        for key, kind in checks:
            if body.get(key):
                _check_refs(tasks_label, name, key, body[key], names[kind], kind)
        if body.get("human_input"):
            raise PermanentError(f"{tasks_label}: {name}.human_input: {HUMAN_INPUT_REASON}")
        output_file = body.get("output_file")
        if isinstance(output_file, str) and (problem := check_relative(output_file)):
            raise PermanentError(f"{tasks_label}: {name}.output_file {problem}")
    return requested


def _describe(exc: Exception) -> str:
    """One line for a pydantic validation error (CrewAI's models), else ``Type: message``."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and errors():
        first = errors()[0]
        more = f" (and {len(errors()) - 1} more)" if len(errors()) > 1 else ""
        return f"{getattr(exc, 'title', type(exc).__name__)}: {' '.join(str(first['msg']).split())}{more}"
    return f"{type(exc).__name__}: {exc}"


def _hint(cls: type, folder: Path, exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    kinds = {e.get("type") for e in errors()} if callable(errors) else set()
    if "missing_agent_in_task" not in kinds:
        return ""
    label, tasks = _config(cls, "original_tasks_config_path", folder)
    bare = [name for name, body in tasks.items() if not body.get("agent")]
    agents = ", ".join(sorted(_names(_members(cls), "is_agent"))) or "none"
    return f"; {label}: {', '.join(bare)}: no 'agent' (name one of: {agents})" if bare else ""


def build(cls: type, folder: Path, ctx: CrewContext) -> tuple[Any, Any]:
    """(the instance, its crew): ``cls()`` with ``self.ctx`` set, then ``@crew``. Errors name the class.

    Whatever fails after the instance exists, its memo entries are evicted
    before the error propagates (a failed build must not leave agents behind
    for a later instance that reuses its id).
    """
    from crewai.project.crew_base import CrewBaseMeta

    if not callable(getattr(cls, "crew", None)):
        raise PermanentError(f"{cls.__name__}: a @CrewBase class needs a @crew method named 'crew'")
    where = f"{cls.__name__} ({Path(inspect.getfile(cls)).name})"
    # What CrewBaseMeta.__call__ does, step by step: the instance has the run's context
    # before its own __init__, and is ours before CrewAI builds (and memoises) anything for it.
    instance: Any = object.__new__(cls)
    instance.ctx = ctx
    for name, factory in run_tools.tool_factories(ctx).items():
        if not hasattr(instance, name):  # a tool the class defines itself wins
            setattr(instance, name, factory)
    cls.__init__(instance)  # type: ignore[misc]
    try:
        CrewBaseMeta._initialize_crew_instance(instance, cls)
        crew = instance.crew()
    except PermanentError:
        evict(instance)
        raise
    except (KeyError, ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        evict(instance)
        raise PermanentError(
            f"{where}: building the crew failed: {_describe(exc)}{_hint(cls, folder, exc)}"
        ) from exc
    except BaseException:
        evict(instance)
        raise
    if not hasattr(crew, "kickoff"):
        evict(instance)
        raise PermanentError(f"{where}: crew() returned {type(crew).__name__}, not a CrewAI Crew")
    _unwrap_output_classes(instance, crew)
    return instance, crew


def _unwrap_output_classes(instance: Any, crew: Any) -> None:
    """Give tasks the ``@output_json``/``@output_pydantic`` classes their YAML names.

    CrewAI 1.15.30 maps such a name to the decorator's wrapper object, which
    ``Task`` silently drops (its validator accepts only a class): the task then
    asks for no structured output at all. The wrapped class is what was meant.
    """
    tasks = {getattr(task, "name", None): task for task in getattr(crew, "tasks", []) or []}
    for name, body in (getattr(instance, "tasks_config", None) or {}).items():
        task = tasks.get(name)
        for key in ("output_json", "output_pydantic"):
            wrapped = getattr(body.get(key), "_cls", None) if isinstance(body, dict) else None
            if task is not None and getattr(task, key, None) is None and isinstance(wrapped, type):
                setattr(task, key, wrapped)


def _marker(instance: Any) -> str:
    from crewai.project.utils import _make_hashable

    # A memo key is "<method>-(<args>, <kwargs>)"; args[0] is the instance.
    return "-((" + repr(_make_hashable(instance)) + ","


def evict(instance: Any) -> int:
    """Remove every memo cache entry of ``instance``; how many there were."""
    from crewai.project.utils import cache

    marker = _marker(instance)
    with cache._lock.w_locked():
        doomed = [key for key in cache._cache if marker in key]
        for key in doomed:
            del cache._cache[key]
    return len(doomed)


def memo_size() -> int:
    """Entries in CrewAI's process-wide memo cache now (for tests and benchmarks)."""
    from crewai.project.utils import cache

    with cache._lock.r_locked():
        return len(cache._cache)
