"""One attempt of a run as recorded in ``plugin_runs.attempt_log``: outcome, times, error, token usage.

Guarantees: :func:`record` returns plain JSON with the same keys for every
outcome; token counts are the attempt's own (read from the run's fresh LLM
instance, so a failed or timed-out attempt's spend is kept too) and zero when
the attempt never built an LLM. :func:`usage_of` never raises.
"""

from __future__ import annotations

import logging
from datetime import datetime
from enum import StrEnum
from typing import Any

from app.execution.outcome import token_usage

log = logging.getLogger(__name__)

#: The longest error kept per attempt (the run's own error_message keeps the last one in full).
MAX_ATTEMPT_ERROR_CHARS = 500
USAGE_KEYS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "successful_requests",
    "cached_prompt_tokens",
)


class AttemptOutcome(StrEnum):
    """How one attempt ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"  # transient failure; another attempt is scheduled
    TIMED_OUT = "timed_out"
    LOST = "lost"  # cancelled or taken over while running


def usage_of(llm: Any) -> dict[str, int]:
    """The token usage of ``llm`` so far; zeros if there is no LLM or it cannot tell."""
    if llm is None:
        return dict.fromkeys(USAGE_KEYS, 0)
    try:
        return token_usage(llm)
    except Exception as exc:  # a broken usage counter must never lose the outcome
        log.warning("could not read the run's token usage: %s", exc)
        return dict.fromkeys(USAGE_KEYS, 0)


def record(
    *,
    attempt: int,
    outcome: AttemptOutcome,
    started_at: datetime,
    finished_at: datetime,
    usage: dict[str, int],
    error: str | None = None,
) -> dict[str, Any]:
    """One ``attempt_log`` entry."""
    if error is not None and len(error) > MAX_ATTEMPT_ERROR_CHARS:
        error = error[: MAX_ATTEMPT_ERROR_CHARS - 1] + "…"
    return {
        "attempt": attempt,
        "outcome": outcome.value,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "duration_seconds": round((finished_at - started_at).total_seconds(), 3),
        "error": error,
        **{key: int(usage.get(key, 0)) for key in USAGE_KEYS},
    }


def totals(log_entries: list[dict[str, Any]] | None) -> dict[str, int]:
    """Token usage summed over every attempt in ``log_entries``."""
    summed = dict.fromkeys(USAGE_KEYS, 0)
    for entry in log_entries or []:
        for key in USAGE_KEYS:
            value = entry.get(key, 0)
            summed[key] += value if isinstance(value, int) else 0
    return summed
