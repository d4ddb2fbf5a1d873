"""The three shapes of a plugin's entry point, built into one checked crew.

``entry_point`` in ``plugin.yaml`` is one of:

* ``crew/main.py:build_crew`` — a function ``build_crew(ctx) -> CrewPlan``
  (the plugin builds the crew; every agent must use ``ctx.llm``);
* ``crew/crew.py:MyCrew`` — a class decorated with CrewAI's ``@CrewBase``
  (what ``crewai create crew NAME --classic`` generates);
* ``crew/crew.jsonc`` — a CrewAI JSON crew (what ``crewai create crew NAME``
  generates), loaded by CrewAI's own ``load_crew``.

The framework tells them apart by the reference (a ``.json``/``.jsonc`` file)
and by what the name is (a ``@CrewBase`` class or a function). Guarantees of
:func:`build`, whatever the shape:

* a class gets the run's context as ``self.ctx`` and a JSON crew through
  :func:`app.execution.run_tools.current_context`; both may name the
  framework's tools (``fetch_url``);
* for a class or a JSON crew, the run's LLM is injected into every agent (a
  model the crew names is replaced and listed in the report), and the inputs are
  :func:`framework_inputs`, then the JSON crew's own defaults, then the run's
  effective settings;
* whatever the shape, options unsafe in a shared worker are refused or made
  safe (:mod:`app.execution.shared_worker`: knowledge, embedders and code
  execution refused naming the file and field; memory turned off; crew
  planning given the run's LLM);
* every agent uses the run's LLM (:func:`app.execution.contract.check_llm`),
  every ``{placeholder}`` is filled (:func:`~app.execution.contract.check_inputs`),
  every file the crew writes is inside the run's folder, and CrewAI's console
  output is off (it would put users' content in the worker's log);
* :meth:`BuiltCrew.running` is the scope to kick the crew off in; leaving it
  evicts a ``@CrewBase`` instance's entries from CrewAI's memo cache.

Problems are :class:`PermanentError` naming the file, key or task.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.errors import PermanentError
from app.execution import crewbase, json_crew, llm_injection, run_tools, shared_worker, workdir
from app.execution.contract import CrewContext, CrewPlan, check_inputs, check_llm
from app.execution.crew_loader import entry_point_file, load_entry_point

if TYPE_CHECKING:
    from app.plugins.registry import Plugin

JSON_SUFFIXES = (".json", ".jsonc")
#: Keys of ``report`` the framework writes; a plugin's own report may not use it.
FRAMEWORK_REPORT_KEY = "framework"


@dataclass
class BuiltCrew:
    """A crew ready to kick off, how it was built, and what the framework changed on it."""

    plan: CrewPlan
    shape: str
    injection: llm_injection.Injection | None = None
    instance: Any = None
    memory_disabled: bool = False
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Kick the crew off inside this block: the LLM stays injected; the memo is evicted after."""
        try:
            if self.injection is None:
                yield
            else:
                with llm_injection.resumed(self.injection):
                    yield
        finally:
            if self.instance is not None:
                crewbase.evict(self.instance)

    def report(self) -> dict[str, Any]:
        """The framework's facts about how the crew was built (``report["framework"]``)."""
        return {
            "entry_point": self.shape,
            "model_overrides": list(self.injection.requested) if self.injection else [],
            "memory_disabled": self.memory_disabled,
        }


def framework_inputs(now: datetime | None = None) -> dict[str, Any]:
    """Inputs every class or JSON crew gets (a setting of the same name wins)."""
    now = now or datetime.now(UTC)
    return {"current_year": str(now.year), "current_date": now.date().isoformat()}


def _function(target: Any, plugin: Plugin, ctx: CrewContext) -> BuiltCrew:
    plan = target(ctx)
    if not isinstance(plan, CrewPlan):
        raise PermanentError(
            f"plugin {plugin.name}: {plugin.manifest.entry_point} must return a CrewPlan "
            f"(ctx.plan(crew, inputs)), got {type(plan).__name__}"
        )
    if not hasattr(plan.crew, "kickoff"):
        raise PermanentError(f"plugin {plugin.name}: CrewPlan.crew is not a CrewAI crew")
    if FRAMEWORK_REPORT_KEY in plan.report:
        raise PermanentError(f"plugin {plugin.name}: report key {FRAMEWORK_REPORT_KEY!r} is reserved")
    return BuiltCrew(plan, "function")


def _settle(built: BuiltCrew, defaults: dict[str, Any], ctx: CrewContext) -> BuiltCrew:
    """What a class and a JSON crew share once CrewAI has built the crew."""
    crew = built.plan.crew
    assert built.injection is not None
    llm_injection.inject_into(crew, built.injection)
    built.plan.inputs = {**framework_inputs(), **defaults, **dict(ctx.settings)}
    return built


def _crew_class(cls: type, plugin: Plugin, ctx: CrewContext) -> BuiltCrew:
    requested = crewbase.check_class(cls, plugin.folder)
    with llm_injection.injecting(ctx.llm) as injection, run_tools.active(ctx):
        for model in requested:
            injection.note(model)
        instance, crew = crewbase.build(cls, plugin.folder, ctx)
        built = BuiltCrew(CrewPlan(crew), "crewbase", injection=injection, instance=instance)
        try:
            return _settle(built, {}, ctx)
        except BaseException:
            crewbase.evict(instance)
            raise


def _json_crew(plugin: Plugin, ctx: CrewContext) -> BuiltCrew:
    path = entry_point_file(plugin)[0]
    with llm_injection.injecting(ctx.llm) as injection, run_tools.active(ctx):
        crew, defaults = json_crew.load(path, folder=plugin.folder)
        return _settle(BuiltCrew(CrewPlan(crew), "json", injection=injection), defaults, ctx)


def _quiet(crew: Any) -> None:
    # CrewAI prints panels with every prompt and answer when verbose; in a worker that is
    # users' content in the log. Its console listener is one object for the whole process.
    crew.verbose = False
    for agent in getattr(crew, "agents", []) or []:
        agent.verbose = False
    try:
        from crewai.events.event_listener import event_listener
    except ImportError:
        return
    event_listener.verbose = False
    formatter = getattr(event_listener, "formatter", None)
    if formatter is not None:
        formatter.verbose = False


def build(plugin: Plugin, ctx: CrewContext) -> BuiltCrew:
    """The plugin's crew for this run, built and checked (see the module docstring)."""
    if plugin.manifest.entry_point.endswith(JSON_SUFFIXES):
        built = _json_crew(plugin, ctx)
    else:
        target = load_entry_point(plugin)
        if isinstance(target, type) and crewbase.is_crew_class(target):
            built = _crew_class(target, plugin, ctx)
        elif isinstance(target, type):
            raise PermanentError(
                f"plugin {plugin.name}: {plugin.manifest.entry_point} is a class without @CrewBase; "
                "name a build_crew(ctx) function or a @CrewBase class"
            )
        else:
            built = _function(target, plugin, ctx)
    try:
        crew = built.plan.crew
        if hasattr(crew, "verbose"):
            _quiet(crew)
        refused = shared_worker.refusals(crew, where=plugin.manifest.entry_point.partition(":")[0])
        if refused:
            raise PermanentError(f"plugin {plugin.name}: " + "; ".join(refused))
        built.memory_disabled = shared_worker.make_safe(crew, ctx.llm).memory_disabled
        check_llm(crew, ctx.llm)
        check_inputs(crew, built.plan.inputs)
        if ctx.workdir is not None:
            workdir.confine_outputs(crew, ctx.workdir, built.plan.inputs)
    except BaseException:
        if built.instance is not None:
            crewbase.evict(built.instance)
        raise
    return built
