"""What a run produced, in the shape recorded in PostgreSQL, and how a failure is classified.

Guarantees:

* :func:`shape_output` returns plain JSON: ``content`` (the crew's final
  output), ``tasks`` (name, agent, raw per task, and ``json`` when the task
  produced structured output), ``token_usage`` (prompt, completion, total,
  successful requests), ``model``, ``duration_seconds``, the ``report`` and
  the ``files`` the crew left in the run's folder. ``content`` and each
  ``raw`` are :func:`app.safe_text.safe_markdown`: no HTML, only http(s) links.
* :func:`is_transient` says whether a retry may succeed: provider connection
  errors, timeouts talking to a provider and rate limits, recognised by
  exception type (names too, so litellm/openai/httpx errors are recognised
  without importing those libraries), by an HTTP status (408, 429, 5xx
  transient; any other 4xx permanent, see :mod:`app.execution.provider_errors`)
  or as a malformed answer raised inside the provider client, anywhere in the
  exception's cause chain. Anything else is permanent.
* :func:`classify_failure` is what the worker records: for a provider failure
  the message names the model, the provider's host and the HTTP status, and
  carries the provider's Retry-After.
* :func:`error_message` is ``"ExceptionType: message"`` with known secrets
  redacted and a bounded length; it never includes settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.errors import PermanentError, TransientError
from app.execution import provider_errors
from app.execution.provider_errors import chain, is_transient_status, status_of
from app.logs import redact
from app.safe_text import safe_markdown

MAX_ERROR_CHARS = 2000
#: A run's output is a briefing, not a data dump; larger means a plugin bug.
MAX_OUTPUT_BYTES = 2_000_000

# Class names (anywhere in the MRO) that mean "the provider or the network
# failed, try later": openai/anthropic SDKs, litellm, httpx, requests.
TRANSIENT_TYPE_NAMES = frozenset(
    {
        "RateLimitError",
        "APIConnectionError",
        "APITimeoutError",
        "ServiceUnavailableError",
        "InternalServerError",
        "Timeout",
        "TimeoutException",
        "TransportError",
        "ConnectTimeout",
        "ReadTimeout",
        "ConnectionError",
        "OverloadedError",
    }
)


@dataclass(frozen=True)
class Failure:
    """How a failed attempt is recorded and whether it is retried."""

    message: str
    transient: bool
    #: Seconds the provider asked us to wait before the next request, if it did.
    retry_after: float | None = None


def is_transient(exc: BaseException) -> bool:
    """True if retrying later may succeed (see the module docstring)."""
    for err in chain(exc):
        if isinstance(err, PermanentError):
            return False
        status = status_of(err)
        if status is not None:
            return is_transient_status(status)
        if isinstance(err, TransientError | ConnectionError | TimeoutError):
            return True
        if any(cls.__name__ in TRANSIENT_TYPE_NAMES for cls in type(err).__mro__):
            return True
    provider = provider_errors.classify(exc)  # e.g. a malformed answer raised inside the provider client
    return provider is not None and provider.transient


def error_message(exc: BaseException) -> str:
    """``"ExceptionType: message"``, secrets redacted, at most MAX_ERROR_CHARS characters."""
    text = str(exc).strip()
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return _bounded(redact(message))


def _bounded(message: str) -> str:
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return message


def classify_failure(exc: BaseException, *, model: str) -> Failure:
    """The run's error for ``exc`` and whether to retry; provider failures name ``model`` and the status."""
    if any(isinstance(err, PermanentError) for err in chain(exc)):
        return Failure(error_message(exc), transient=False)
    provider = provider_errors.classify(exc)
    if provider is not None:
        message = _bounded(redact(provider_errors.mask_keys(provider.describe(model))))
        return Failure(message, transient=provider.transient, retry_after=provider.retry_after)
    return Failure(error_message(exc), transient=is_transient(exc))


def token_usage(llm: Any) -> dict[str, int]:
    """The run's token usage, read from its own LLM instance.

    Not ``Crew.usage_metrics``: CrewAI sums each agent's LLM lifetime totals,
    so two agents sharing the run's LLM would count every token twice.
    """
    summary = llm.get_token_usage_summary()
    return {
        "prompt_tokens": int(summary.prompt_tokens),
        "completion_tokens": int(summary.completion_tokens),
        "total_tokens": int(summary.total_tokens),
        "successful_requests": int(summary.successful_requests),
        "cached_prompt_tokens": int(summary.cached_prompt_tokens),
    }


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _task(output: Any) -> dict[str, Any]:
    shaped: dict[str, Any] = {
        "name": _text(getattr(output, "name", None)) or None,
        "agent": _text(getattr(output, "agent", None)),
        "raw": safe_markdown(_text(getattr(output, "raw", None))),
    }
    pydantic = getattr(output, "pydantic", None)
    structured = (
        pydantic.model_dump(mode="json") if pydantic is not None else getattr(output, "json_dict", None)
    )
    if isinstance(structured, dict):
        shaped["json"] = structured
    return shaped


def shape_output(
    result: Any,
    *,
    llm: Any,
    model: str,
    duration_seconds: float,
    report: dict[str, Any],
    files: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON recorded as the run's output; :class:`PermanentError` if it is empty or too large."""
    # Written by a model from untrusted input (feeds, pages): stored without HTML or unsafe links.
    content = safe_markdown(_text(getattr(result, "raw", None))).strip()
    if not content:
        raise PermanentError("the crew produced no output")
    output = {
        "content": content,
        "tasks": [_task(t) for t in getattr(result, "tasks_output", []) or []],
        "token_usage": token_usage(llm),
        "model": model,
        "duration_seconds": round(duration_seconds, 3),
        "report": report,
        "files": files or [],
    }
    try:
        size = len(json.dumps(output, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"the plugin's report is not JSON-serialisable: {exc}") from exc
    if size > MAX_OUTPUT_BYTES:
        raise PermanentError(f"the output is {size} bytes; the limit is {MAX_OUTPUT_BYTES}")
    return output
