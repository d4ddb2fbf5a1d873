"""``first-sip llm check``: one tiny real request to the configured model, the way a run makes it.

Guarantees: :func:`check` constructs the LLM exactly as the worker does
(:func:`app.execution.llm.make_llm`: same model, request timeout, client retries),
sends one short prompt and reports the model, the provider's answer, the
latency and the token usage the provider reported; any failure becomes a
:class:`LLMCheckFailed` whose message is the one line a run's error would
show (model, host, HTTP status; never a key). Imports CrewAI, like the
worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from app.config import Settings
from app.errors import FirstSipError
from app.execution.llm import make_llm, startup_problem
from app.llm_config import OFFLINE_MODEL, model_name

PROMPT = "Reply with the single word: ok"


class LLMCheckFailed(FirstSipError):
    """The configured LLM could not be constructed or did not answer."""


@dataclass(frozen=True)
class CheckResult:
    """What one check request showed."""

    model: str
    answer: str
    latency_seconds: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    offline: bool = False


def check(settings: Settings) -> CheckResult:
    """Send one tiny request to the configured model; :class:`LLMCheckFailed` naming the problem."""
    from app.execution.outcome import classify_failure, token_usage

    model = model_name(settings)
    problem = startup_problem(settings)
    if problem:
        raise LLMCheckFailed(problem)
    llm = make_llm(settings)
    started = time.monotonic()
    try:
        answer: Any = llm.call([{"role": "user", "content": PROMPT}])
    except Exception as exc:  # whatever the provider did, say it in one line
        raise LLMCheckFailed(classify_failure(exc, model=model).message) from None
    latency = time.monotonic() - started
    usage = token_usage(llm)
    return CheckResult(
        model=model,
        answer=str(answer).strip(),
        latency_seconds=round(latency, 3),
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        total_tokens=usage["total_tokens"],
        offline=model == OFFLINE_MODEL,
    )
