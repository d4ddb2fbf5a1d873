"""Turning down CrewAI's own retry layers, so one attempt of a run is one bounded try.

A provider error inside a crew would otherwise be retried by three layers
before our attempt sees it: the provider client (``max_retries``, set by
:func:`app.execution.llm.make_llm` from ``FIRST_SIP_LLM_MAX_RETRIES``), CrewAI's
rate-limit loop around every LLM call (one try: :mod:`app.execution.runtime`)
and the agent's ``max_retry_limit`` (the whole task again, here). Our attempts
(``MAX_ATTEMPTS``, backoff in ``next_attempt_at``) are the retry policy.

Guarantees:

* after :func:`turn_down`, no agent of the crew re-runs a task after an
  error, whatever built the crew (a plugin's own ``max_retry_limit`` is
  overridden);
* after :func:`install` (once per worker process, from
  :func:`app.execution.runtime.prepare`), the same holds for the manager
  agent CrewAI creates itself at kickoff for a hierarchical crew
  (``process=hierarchical`` with ``manager_llm``): that agent does not exist
  yet when :func:`turn_down` runs, and CrewAI gives it the default of 2
  task retries;

so one LLM call of one attempt makes at most ``1 + FIRST_SIP_LLM_MAX_RETRIES``
requests. Only :func:`install` imports CrewAI.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_install_lock = threading.Lock()
_installed = False


def _turn_down_agent(agent: Any) -> None:
    if hasattr(agent, "max_retry_limit"):
        agent.max_retry_limit = 0


def turn_down(crew: Any) -> None:
    """Set ``max_retry_limit = 0`` on every agent of ``crew`` (a plugin's own value is overridden)."""
    agents = list(getattr(crew, "agents", None) or [])
    manager = getattr(crew, "manager_agent", None)
    if manager is not None:
        agents.append(manager)
    for task in getattr(crew, "tasks", None) or []:
        agent = getattr(task, "agent", None)
        if agent is not None and all(agent is not a for a in agents):
            agents.append(agent)
    for agent in agents:
        _turn_down_agent(agent)


def install() -> None:
    """Turn down the manager agent of every hierarchical crew this process kicks off (idempotent).

    Wraps CrewAI 1.15's ``Crew._create_manager_agent`` (pinned exactly in
    pyproject; a changed internal fails loudly here), which builds or adopts
    the manager at each kickoff.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        from crewai import Crew

        original = getattr(Crew, "_create_manager_agent", None)
        if original is None:
            raise RuntimeError("CrewAI changed: Crew._create_manager_agent is gone; review inner_retries")

        @functools.wraps(original)
        def create_manager_agent(self: Any) -> None:
            original(self)
            _turn_down_agent(self.manager_agent)

        Crew._create_manager_agent = create_manager_agent  # type: ignore[method-assign]
        _installed = True
