"""Turning down CrewAI's own retry layers, so one attempt of a run is one bounded try.

A provider error inside a crew would otherwise be retried by three layers
before our attempt sees it: the provider client (``max_retries``, set by
:func:`app.execution.llm.make_llm` from ``FIRST_SIP_LLM_MAX_RETRIES``), CrewAI's
rate-limit loop around every LLM call (one try: :mod:`app.execution.runtime`)
and the agent's ``max_retry_limit`` (the whole task again, here). Our attempts
(``MAX_ATTEMPTS``, backoff in ``next_attempt_at``) are the retry policy.

Guarantee: after :func:`turn_down`, no agent of the crew (its manager
included) re-runs a task after an error, whatever built the crew, so one LLM
call of one attempt makes at most ``1 + FIRST_SIP_LLM_MAX_RETRIES`` requests.
This module imports no CrewAI.
"""

from __future__ import annotations

from typing import Any


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
        if hasattr(agent, "max_retry_limit"):
            agent.max_retry_limit = 0
