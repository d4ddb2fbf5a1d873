"""The run's LLM for crews that CrewAI builds itself (``@CrewBase`` classes and JSON crews).

A ``@CrewBase`` class or a ``crew.jsonc`` builds its agents inside CrewAI, with
whatever model its own files name (``llm:`` in agents.yaml, ``"llm"`` in
``agents/*.jsonc``, ``llm=`` in Python) or CrewAI's default model from the
environment. A plugin never picks its model, so while :func:`injecting` is
active in the current context (the run's crew thread), every model CrewAI
resolves through its ``create_llm`` is the run's LLM instead:

* nothing named in the crew's files is ever constructed (no provider client,
  no key needed), and CrewAI's environment default is never used;
* each model the crew asked for is recorded in :attr:`Injection.requested`
  (the run's report lists them: overridden, not silently dropped);
* outside :func:`injecting` (function entry points, other code) CrewAI
  behaves as it always does: those crews pass ``llm=ctx.llm`` and the
  framework refuses any other.

The context variable is per thread context, so crews running at once in a
threads pool each get their own run's LLM. :func:`install` wraps CrewAI 1.15's
``create_llm`` (pinned exactly in pyproject) once per process.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

#: Crew-level fields that name a model; they are set to the run's LLM when a crew sets them.
CREW_LLM_FIELDS = ("manager_llm", "planning_llm", "function_calling_llm", "chat_llm")
#: Agent fields that name a model.
AGENT_LLM_FIELDS = ("llm", "function_calling_llm")
#: Every CrewAI field (agent or crew) that names a model: what a plugin's YAML may not set.
MODEL_FIELDS = tuple(dict.fromkeys((*AGENT_LLM_FIELDS, *CREW_LLM_FIELDS)))


@dataclass
class Injection:
    """The run's LLM and the models the crew asked for instead (by name, in order, once each)."""

    llm: Any
    requested: list[str] = field(default_factory=list)

    def note(self, value: Any) -> None:
        """Record that the crew named ``value`` (a model name, config or LLM object)."""
        name = model_label(value)
        if name not in self.requested:
            self.requested.append(name)


_active: ContextVar[Injection | None] = ContextVar("first_sip_llm_injection", default=None)
_install_lock = threading.Lock()
_installed = False


def model_label(value: Any) -> str:
    """A short name for a model a crew named: never its settings (a config may carry a key)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        name = value.get("model") or value.get("model_name") or value.get("deployment_name")
        return str(name) if name else "a model config"
    return str(getattr(value, "model", None) or type(value).__name__)


@contextmanager
def injecting(llm: Any) -> Iterator[Injection]:
    """Within this block (this context only), CrewAI resolves every model to ``llm``."""
    injection = Injection(llm)
    token = _active.set(injection)
    try:
        yield injection
    finally:
        _active.reset(token)


@contextmanager
def resumed(injection: Injection) -> Iterator[Injection]:
    """Re-activate an earlier :func:`injecting` (kickoff after build), recording into the same object."""
    token = _active.set(injection)
    try:
        yield injection
    finally:
        _active.reset(token)


def _wrap(original: Callable[..., Any]) -> Callable[..., Any]:
    def create_llm(llm_value: Any = None) -> Any:
        injection = _active.get()
        if injection is None:
            return original(llm_value)
        if llm_value is not None and llm_value is not injection.llm:
            injection.note(llm_value)
        return injection.llm

    create_llm.__wrapped__ = original  # type: ignore[attr-defined]
    return create_llm


def install() -> None:
    """Route CrewAI's ``create_llm`` through the active injection (idempotent, thread-safe).

    CrewAI modules import the function by name, so every loaded ``crewai``
    module holding the original gets the wrapper. Called by
    :func:`app.execution.runtime.prepare` right after CrewAI is imported.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        from crewai.utilities import llm_utils

        original = llm_utils.create_llm
        wrapper = _wrap(original)
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] == "crewai" and getattr(module, "create_llm", None) is original:
                module.create_llm = wrapper  # type: ignore[attr-defined]
        import crewai.agent.core as agent_core

        if getattr(agent_core, "create_llm", None) is not wrapper:
            raise RuntimeError("CrewAI changed: Agent no longer resolves models through create_llm")
        _installed = True


def inject_into(crew: Any, injection: Injection) -> None:
    """Put the run's LLM on every agent and crew-level model field a crew still holds another in.

    After :func:`injecting` there should be none; this covers objects a
    plugin assigned after construction. Each replaced model is recorded.
    """
    llm = injection.llm
    for agent in getattr(crew, "agents", []) or []:
        if getattr(agent, "llm", None) is not llm:
            injection.note(agent.llm)
            agent.llm = llm
        for attr in AGENT_LLM_FIELDS[1:]:  # optional ones: None means "use the agent's llm"
            if getattr(agent, attr, None) not in (None, llm):
                injection.note(getattr(agent, attr))
                setattr(agent, attr, llm)
    for attr in CREW_LLM_FIELDS:
        value = getattr(crew, attr, None)
        if value is not None and value is not llm:
            injection.note(value)
            setattr(crew, attr, llm)
