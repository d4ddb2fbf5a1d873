"""The model the settings configure, as light processes need to know it (no CrewAI).

Guarantees: every function here reads only :class:`~app.config.Settings`;
none imports CrewAI or the execution package, so the consumer (flow control
keys the model's request budget by :func:`model_name`) and the CLI use them
freely. Constructing the model is :mod:`app.execution.llm`'s job.
"""

from __future__ import annotations

from app.config import Settings

#: Recorded as the model of runs the offline model wrote.
OFFLINE_MODEL = "offline/extractive"


def llm_problem(settings: Settings) -> str | None:
    """Why this process cannot run crews with these settings, or None if it can (no CrewAI import)."""
    model = settings.llm_model
    if not model and settings.app_env == "production":
        return (
            "FIRST_SIP_LLM_MODEL is not set: a production worker needs a real model "
            "(for example openai/gpt-4o-mini with OPENAI_API_KEY); the offline model is for development"
        )
    if model and "/" not in model.strip("/"):
        return (
            f"FIRST_SIP_LLM_MODEL={model} names no provider: write it as <provider>/<model>, "
            "for example openai/gpt-4o-mini or anthropic/claude-3-5-haiku-latest"
        )
    return None


def model_name(settings: Settings) -> str:
    """The model name recorded with each run's output."""
    return settings.llm_model or OFFLINE_MODEL


def provider_name(settings: Settings) -> str:
    """The provider part of the configured model (``offline`` for the offline model)."""
    return model_name(settings).split("/", 1)[0]


def request_timeout(settings: Settings, run_timeout: float | None = None) -> float:
    """Seconds one provider request may take: the setting, at most half of ``run_timeout``."""
    if run_timeout is None:
        return settings.llm_timeout_seconds
    return min(settings.llm_timeout_seconds, run_timeout / 2)
