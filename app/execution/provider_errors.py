"""What a provider failure was: its HTTP status, Retry-After, host, and whether it is worth retrying.

Recognised without importing any provider SDK, anywhere in an exception's
cause chain:

* an HTTP status on the exception or its ``response`` (openai, anthropic,
  httpx, litellm all carry one): 408, 429 and 5xx are transient; every other
  4xx (400 bad request, 401/403 key refused, 404 unknown model, 422) is
  permanent, whatever the exception is named;
* a malformed or truncated answer: a decoding error (invalid JSON, a body cut
  short, an unexpected shape) raised inside the provider client or CrewAI's
  provider classes; transient, since the next answer may be whole.

Guarantees: :func:`describe` names the model, the provider's host (never its
credentials or query) and the status, and masks anything shaped like an API
key (``sk-...``, ``Bearer ...``); it never includes a setting's value.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

#: Modules whose code talks to providers: an error raised inside them is about the provider's answer.
PROVIDER_MODULES = (
    "openai",
    "anthropic",
    "httpx",
    "httpcore",
    "h11",
    "litellm",
    "google.genai",
    "botocore",
    "crewai.llms.providers",
    "crewai.llm",
)
#: Exception types that, raised inside a provider client, mean "the answer was malformed or cut short".
MALFORMED_TYPES: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
)
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
STATUS_MEANING = {
    400: "bad request",
    401: "authentication failed (check the API key)",
    403: "permission denied",
    404: "not found (unknown model or endpoint?)",
    408: "request timeout",
    409: "conflict",
    422: "unprocessable request",
    429: "rate limited",
}
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk|key|api)[-_][A-Za-z0-9*_\-]{6,}|Bearer\s+\S+", re.IGNORECASE)
MAX_DETAIL_CHARS = 500


@dataclass(frozen=True)
class ProviderFailure:
    """The provider-facing facts of one failure."""

    transient: bool
    #: The HTTP status the provider answered, if any.
    status: int | None
    #: Seconds the provider asked us to wait (``Retry-After`` / ``retry-after-ms``), if it did.
    retry_after: float | None
    #: The provider's host as the client saw it, if known.
    host: str | None
    #: What went wrong, e.g. ``HTTP 429 rate limited: ...`` or ``malformed response: ...``.
    summary: str

    def describe(self, model: str) -> str:
        """One line for the run's error: model, host, what happened."""
        where = f"{model} via {self.host}" if self.host else model
        return f"LLM provider error ({where}): {self.summary}"


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts, each once, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (its own or its response's)."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return status
    return None


def is_transient_status(status: int) -> bool:
    """408, 409, 425, 429 and every 5xx."""
    return status in TRANSIENT_STATUS or status >= 500


def retry_after_of(exc: BaseException, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date) header, if any."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or getattr(exc, "headers", None)
    if headers is None or not hasattr(headers, "get"):
        return None
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    raw = headers.get("retry-after") or headers.get("Retry-After")
    seconds = _number(raw)
    if seconds is not None or not isinstance(raw, str):
        return seconds
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 and number == number and number != float("inf") else None


def host_of(exc: BaseException) -> str | None:
    """The host of the request an exception names (``request`` or ``response.request``)."""
    request = getattr(exc, "request", None)
    if request is None:
        response = getattr(exc, "response", None)
        try:
            request = getattr(response, "request", None)
        except RuntimeError:  # httpx raises when a response has no request
            request = None
    host = getattr(getattr(request, "url", None), "host", None)
    return host if isinstance(host, str) and host else None


def raised_in_provider(exc: BaseException) -> bool:
    """True if the innermost non-standard-library frame that raised ``exc`` is provider code."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    for module in reversed(frames):
        if module.split(".", 1)[0] in sys.stdlib_module_names:
            continue
        return module.startswith(PROVIDER_MODULES)
    return False


def mask_keys(text: str) -> str:
    """``text`` with anything shaped like an API key or bearer token replaced."""
    return _KEY_LIKE.sub("<redacted>", text)


def _detail(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
    text = str(message or getattr(exc, "message", None) or exc).strip()
    text = " ".join(text.split())
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1] + "…"
    return mask_keys(text)


def classify(exc: BaseException) -> ProviderFailure | None:
    """The provider failure in ``exc``'s chain, or None if it is not about a provider."""
    errors = list(chain(exc))
    host = next((h for h in map(host_of, errors) if h), None)
    for err in errors:
        status = status_of(err)
        if status is None:
            continue
        meaning = STATUS_MEANING.get(status, "server error" if status >= 500 else "client error")
        retry_after = next((r for r in map(retry_after_of, errors) if r is not None), None)
        wait = f", Retry-After {retry_after:g} s" if retry_after is not None else ""
        return ProviderFailure(
            transient=is_transient_status(status),
            status=status,
            retry_after=retry_after,
            host=host,
            summary=f"HTTP {status} {meaning}{wait}: {_detail(err)}",
        )
    summary = _network_summary(errors)
    if summary is None:
        malformed = next((e for e in errors if _malformed(e)), None)
        if malformed is not None:
            summary = f"malformed response: {_name(malformed)}: {_detail(malformed)}"
    if summary is None:
        return None
    return ProviderFailure(transient=True, status=None, retry_after=None, host=host, summary=summary)


def _network_summary(errors: list[BaseException]) -> str | None:
    """A timeout, a truncated body or a failed connection anywhere in the chain; None if none."""

    def first(*names: str) -> BaseException | None:
        wanted = set(names)
        return next((e for e in errors if {c.__name__ for c in type(e).__mro__} & wanted), None)

    timeout = first("APITimeoutError", "TimeoutException", "ReadTimeout", "ConnectTimeout")
    if timeout is not None:
        return f"no answer within the request timeout ({_name(timeout)})"
    # Before connection errors: the SDK reports a body cut short as a connection error caused by it.
    truncated = first("RemoteProtocolError", "IncompleteRead")
    if truncated is not None:
        return f"truncated response: {_name(truncated)}: {_detail(truncated)}"
    if first("APIConnectionError", "ConnectError", "TransportError") is not None:
        cause = errors[-1]
        return f"connection failed: {_name(cause)}: {_detail(cause)}"
    return None


def _malformed(exc: BaseException) -> bool:
    return isinstance(exc, MALFORMED_TYPES) and raised_in_provider(exc)


def _name(exc: BaseException) -> str:
    return type(exc).__name__
