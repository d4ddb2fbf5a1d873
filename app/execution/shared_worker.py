"""CrewAI options that do not belong in a worker shared by many users: refused, or made safe.

One source for what every entry-point shape is checked against (the YAML of
``ctx.crew_from_yaml``, a ``@CrewBase`` class's YAML, and every built crew,
whatever built it). Guarantees:

* :data:`AGENT_REFUSED` and :data:`CREW_REFUSED` name the fields that make
  CrewAI use a provider the run did not pick or storage outside the run
  (knowledge and its embedder: an embedding provider and a vector store in
  the worker's data folder; code execution), with the reason;
  :func:`refusals` lists each one a built crew sets, as
  ``<where>: agent '<role>'.<field>`` / ``<where>: crew.<field>``;
* :func:`make_safe` turns off CrewAI memory on the crew and its agents (it
  would keep one user's data where the next run reads it) and gives crew
  planning the run's LLM (CrewAI's planner would otherwise build its own
  ``gpt-4o-mini``); it says what it changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODEL_REASON = "plugins never pick a model: the framework gives every agent the run's LLM"
DATA_REASON = "it keeps one user's data where the next run can read it"
PROVIDER_REASON = (
    "it makes CrewAI call an embedding provider and keep a vector store in the worker's shared data folder"
)
CODE_REASON = "it runs generated code in the worker"
HUMAN_INPUT_REASON = "nobody can answer a worker's prompt"

#: Agent fields (YAML keys and attributes) a plugin may not set, and why.
AGENT_REFUSED = {
    "knowledge_sources": PROVIDER_REASON,
    "knowledge": PROVIDER_REASON,
    "knowledge_storage": PROVIDER_REASON,
    "knowledge_config": PROVIDER_REASON,
    "embedder": PROVIDER_REASON,
    "allow_code_execution": CODE_REASON,
    "code_execution_mode": CODE_REASON,
}
#: Crew fields a plugin may not set, and why.
CREW_REFUSED = {
    "knowledge_sources": PROVIDER_REASON,
    "knowledge": PROVIDER_REASON,
    "embedder": PROVIDER_REASON,
}
#: Fields whose defaults are harmless: only a value other than these is "set".
_UNSET: tuple[Any, ...] = (None, False, [], "safe")


def _set(value: Any) -> bool:
    return not any(value is unset or value == unset for unset in _UNSET)


def refusals(crew: Any, *, where: str) -> list[str]:
    """Every refused field the built ``crew`` or one of its agents sets (see the module docstring)."""
    found = []
    for attr, reason in CREW_REFUSED.items():
        if _set(getattr(crew, attr, None)):
            found.append(f"{where}: crew.{attr}: not allowed: {reason}")
    for agent in getattr(crew, "agents", []) or []:
        role = getattr(agent, "role", "?")
        for attr, reason in AGENT_REFUSED.items():
            if attr == "knowledge_config":
                continue  # retrieval settings; harmless without knowledge, which is checked
            if _set(getattr(agent, attr, None)):
                found.append(f"{where}: agent {role!r}.{attr}: not allowed: {reason}")
    return found


@dataclass
class Changes:
    """What :func:`make_safe` changed on a crew."""

    memory_disabled: bool = False
    planning_llm: bool = False


def make_safe(crew: Any, llm: Any) -> Changes:
    """Turn memory off and give planning the run's ``llm`` (see the module docstring)."""
    changes = Changes()
    if getattr(crew, "memory", False) or getattr(crew, "_memory", None) is not None:
        crew.memory, crew._memory = False, None
        changes.memory_disabled = True
    for agent in getattr(crew, "agents", []) or []:
        if getattr(agent, "memory", None) is not None:
            agent.memory = None
            changes.memory_disabled = True
    if getattr(crew, "planning", False) and getattr(crew, "planning_llm", None) is None:
        crew.planning_llm = llm
        changes.planning_llm = True
    return changes
