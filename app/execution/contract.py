"""The plugin crew contract: what the framework hands a crew and what it expects back.

A plugin's entry point (``entry_point: crew/main.py:build_crew`` in its
manifest) is called once per run, in the run's own thread, as
``build_crew(ctx: CrewContext) -> CrewPlan``:

* ``ctx.settings`` are the run's effective settings, already validated against
  the plugin's current schema (read-only);
* ``ctx.llm`` is a fresh LLM instance for this run only; every agent must use
  it (a plugin never picks its model; the framework checks);
* ``ctx.folder`` is the plugin folder and :meth:`CrewContext.resolve` confines a
  relative path to it;
* :meth:`CrewContext.crew_from_yaml` builds the crew from ``agents.yaml`` and
  ``tasks.yaml`` next to the entry point;
* ``ctx.workdir`` is the run's own scratch folder (removed after the run; the
  files left in it are recorded with the output); every task's
  ``output_file`` is resolved inside it;
* ``ctx.stopped`` is set when the framework gave up on the run (timeout,
  cancellation); long plugin loops may check it;
* :meth:`CrewContext.fetch` is the one way a plugin fetches a URL (see
  :mod:`app.net.fetch`): public http(s) addresses only, a total deadline, a
  size cap, and it ends when ``ctx.stopped`` is set.

The entry point returns a :class:`CrewPlan` (``ctx.plan(crew, inputs)``): the
crew, the inputs that fill its ``{placeholders}``, and an optional JSON-able
``report`` recorded with the output. An entry point may also be a CrewAI
``@CrewBase`` class or a JSON crew (see :mod:`app.execution.entry`). This
module imports no CrewAI.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from app.errors import PermanentError
from app.execution.llm_injection import CREW_LLM_FIELDS
from app.plugins.paths import PathEscapeError, resolve_inside

if TYPE_CHECKING:
    from app.net.fetch import Fetcher, FetchResponse

# The same pattern CrewAI's interpolate_only() uses, so we report exactly the
# placeholders CrewAI would fail on (with a KeyError-like ValueError) at kickoff.
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)}")


@dataclass
class CrewPlan:
    """What an entry point returns: a CrewAI ``Crew``, its kickoff inputs, facts to record."""

    crew: Any
    inputs: dict[str, Any] = field(default_factory=dict)
    #: JSON-able facts the framework records as ``output["report"]`` (e.g. unreadable feeds).
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CrewContext:
    """Everything a plugin's entry point may use. One per run; never shared between runs."""

    run_id: str
    plugin: str
    settings: Mapping[str, Any]
    llm: Any
    folder: Path
    #: The folder holding the entry point file (where agents.yaml and tasks.yaml live).
    crew_folder: Path
    #: The run's scratch folder: files written here are recorded with the output, then removed.
    workdir: Path | None = None
    stopped: threading.Event = field(default_factory=threading.Event, compare=False)
    #: The fetcher behind :meth:`fetch`; None means the one the process settings describe.
    fetcher: Fetcher | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(
        cls,
        *,
        run_id: str,
        plugin: str,
        settings: Mapping[str, Any],
        llm: Any,
        folder: Path,
        crew_folder: Path,
        workdir: Path | None = None,
        fetcher: Fetcher | None = None,
    ) -> CrewContext:
        """A context whose settings are a read-only view (a crew cannot change the recorded input)."""
        return cls(
            run_id,
            plugin,
            MappingProxyType(dict(settings)),
            llm,
            folder,
            crew_folder,
            workdir,
            fetcher=fetcher,
        )

    def resolve(self, relative: str) -> Path:
        """``relative`` inside the plugin folder; :class:`PermanentError` if it would leave it."""
        try:
            return resolve_inside(self.folder, relative)
        except PathEscapeError as exc:
            raise PermanentError(f"plugin {self.plugin}: {exc}") from exc

    def fetch(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        deadline_seconds: float | None = None,
        max_bytes: int | None = None,
    ) -> FetchResponse:
        """GET ``url`` through the framework's safe fetcher; :class:`app.net.errors.FetchError` if not.

        Refused before any connection: non-http(s) URLs, credentials in URLs, and
        any host that resolves to a non-public address (unless the operator's
        ``FETCH_ALLOW_NETWORKS`` lists it). Bounded by ``FETCH_DEADLINE_SECONDS``
        in total and ``FETCH_MAX_BYTES`` (the arguments may only lower them), and
        cut off when the run is given up. ``error.reason`` is safe to show users.
        """
        from app.net.fetch import default_fetcher

        fetcher = self.fetcher or default_fetcher()
        return fetcher.fetch(
            url, headers=headers, stopped=self.stopped, deadline_seconds=deadline_seconds, max_bytes=max_bytes
        )

    def crew_from_yaml(
        self,
        *,
        agents: str = "agents.yaml",
        tasks: str = "tasks.yaml",
        tools: Iterable[Any] | Mapping[str, Any] = (),
        models: Iterable[type] | Mapping[str, type] = (),
    ) -> Any:
        """A sequential CrewAI crew built from the YAML files next to the entry point.

        ``tools`` (CrewAI tools, named by their ``name``) and ``models``
        (pydantic classes, named by their class name) are what the YAML's
        ``tools:``, ``output_json:`` and ``output_pydantic:`` may name.
        """
        from app.execution.crew_yaml import crew_from_yaml

        return crew_from_yaml(self, agents_file=agents, tasks_file=tasks, tools=tools, models=models)

    def plan(
        self, crew: Any, inputs: Mapping[str, Any], *, report: Mapping[str, Any] | None = None
    ) -> CrewPlan:
        """Shorthand for ``CrewPlan(crew, dict(inputs), dict(report or {}))``."""
        return CrewPlan(crew, dict(inputs), dict(report or {}))


def placeholders(texts: Iterable[str | None]) -> set[str]:
    """Every ``{name}`` placeholder CrewAI would interpolate in ``texts``."""
    found: set[str] = set()
    for text in texts:
        if text:
            found.update(PLACEHOLDER_RE.findall(text))
    return found


def crew_templates(crew: Any) -> list[tuple[str, str | None]]:
    """(where, template) for every agent and task text CrewAI interpolates at kickoff."""
    out: list[tuple[str, str | None]] = []
    for agent in getattr(crew, "agents", []):
        name = getattr(agent, "role", "?")
        for attr in ("role", "goal", "backstory"):
            out.append((f"agent {name!r} {attr}", getattr(agent, attr, None)))
    for index, task in enumerate(getattr(crew, "tasks", [])):
        name = getattr(task, "name", None) or f"#{index + 1}"
        for attr in ("description", "expected_output", "output_file"):
            out.append((f"task {name!r} {attr}", getattr(task, attr, None)))
    return out


def check_inputs(crew: Any, inputs: Mapping[str, Any]) -> None:
    """Raise :class:`PermanentError` naming each placeholder the inputs do not fill, and where."""
    missing: dict[str, list[str]] = {}
    for where, template in crew_templates(crew):
        for name in sorted(placeholders([template])):
            if name not in inputs:
                missing.setdefault(name, []).append(where)
    if missing:
        parts = [f"{{{name}}} (in {', '.join(places)})" for name, places in sorted(missing.items())]
        raise PermanentError("crew inputs are missing placeholder values: " + "; ".join(parts))


def check_llm(crew: Any, llm: Any) -> None:
    """Raise :class:`PermanentError` if any agent or crew-level LLM is not the framework's ``llm``.

    A plugin never picks its model: an agent built without ``llm=ctx.llm`` would
    silently fall back to CrewAI's default (a paid model named by environment).
    """
    for agent in getattr(crew, "agents", []):
        role = getattr(agent, "role", "?")
        if getattr(agent, "llm", None) is not llm:
            raise PermanentError(f"agent {role!r} does not use the framework's LLM (pass llm=ctx.llm)")
        if getattr(agent, "function_calling_llm", None) not in (None, llm):
            raise PermanentError(
                f"agent {role!r} sets its own function_calling_llm; plugins never pick a model"
            )
    for attr in CREW_LLM_FIELDS:
        if getattr(crew, attr, None) not in (None, llm):
            raise PermanentError(f"the crew sets {attr}; plugins never pick a model")
