"""Who flow control limits: a plugin's cap and the model's budget, from manifests and settings.

One function per fact, used by the consumer, the worker and ``status`` alike,
so they never disagree about a cap (given the same environment).
"""

from __future__ import annotations

from app.config import Settings
from app.flow.budget import ModelBudget
from app.llm_config import model_name


def plugin_cap(plugin: str, manifest_cap: int | None, settings: Settings) -> int | None:
    """The plugin's cap on runs in flight: FIRST_SIP_MAX_CONCURRENCY's entry, else the manifest's."""
    overrides = settings.max_concurrency_overrides
    return overrides.get(plugin, manifest_cap)


def model_budget(settings: Settings) -> ModelBudget:
    """The configured model's budget (``limit`` None when FIRST_SIP_LLM_RPM is unset: pause only)."""
    return ModelBudget(
        model_name(settings), limit=settings.llm_rpm, window_seconds=settings.llm_budget_window_seconds
    )
