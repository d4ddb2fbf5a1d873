"""The LLM a run uses: the configured CrewAI model, or the offline model in development.

Guarantees:

* :func:`make_llm` returns a *fresh* instance on every call; a run never
  shares its LLM (token usage is counted per instance, and provider clients
  keep per-instance state).
* ``FIRST_SIP_LLM_MODEL`` set: CrewAI's own ``LLM(model=...)`` (any model name
  CrewAI accepts, e.g. ``openai/gpt-4o-mini`` or ``ollama/llama3.1``; provider
  keys come from the usual environment variables).
* Unset in development: :class:`~app.execution.offline_llm.OfflineLLM`
  (model ``offline/extractive``). Unset in production: :func:`llm_problem`
  explains why the worker refuses to start, and :func:`make_llm` raises
  :class:`ConfigurationError`.

This module imports CrewAI only inside :func:`make_llm`, so the worker's
startup check can use it without paying for CrewAI in the parent process.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings, get_settings
from app.errors import ConfigurationError

#: Recorded as the model of runs the offline model wrote.
OFFLINE_MODEL = "offline/extractive"


def llm_problem(settings: Settings) -> str | None:
    """Why this process cannot run crews with these settings, or None if it can."""
    if not settings.llm_model and settings.app_env == "production":
        return (
            "FIRST_SIP_LLM_MODEL is not set: a production worker needs a real model "
            "(for example openai/gpt-4o-mini with OPENAI_API_KEY); the offline model is for development"
        )
    return None


def model_name(settings: Settings) -> str:
    """The model name recorded with each run's output."""
    return settings.llm_model or OFFLINE_MODEL


def make_llm(settings: Settings | None = None, *, interceptor: Any = None) -> Any:
    """A new LLM instance for one run (a CrewAI ``BaseLLM``).

    ``interceptor``: a CrewAI transport interceptor for the configured model's HTTP
    requests (flow control's provider gate); the offline model makes none.
    """
    settings = settings or get_settings()
    problem = llm_problem(settings)
    if problem:
        raise ConfigurationError(problem)
    from app.execution import runtime

    runtime.prepare()
    if settings.llm_model:
        from crewai import LLM

        return LLM(model=settings.llm_model, interceptor=interceptor)
    from app.execution.offline_llm import OfflineLLM

    return OfflineLLM(model=OFFLINE_MODEL, delay_seconds=settings.offline_llm_delay_seconds)
