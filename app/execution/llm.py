"""The LLM a run uses: the configured CrewAI model, or the offline model in development.

Guarantees:

* :func:`make_llm` returns a *fresh* instance on every call; a run never
  shares its LLM (token usage is counted per instance, and provider clients
  keep per-instance state).
* ``FIRST_SIP_LLM_MODEL`` set: CrewAI's own ``LLM(model=...)`` (``provider/model``,
  e.g. ``openai/gpt-4o-mini`` or ``ollama/llama3.1``; provider keys come from
  the usual environment variables, ``OPENAI_BASE_URL`` points the OpenAI
  provider at a compatible server) with the framework's request timeout
  (:func:`app.llm_config.request_timeout`, so a hung provider becomes a
  retryable error before the run's limit), the client's own retries
  (``FIRST_SIP_LLM_MAX_RETRIES``) and the run gates' HTTP interceptor
  (:mod:`app.execution.gates`).
* Unset in development: :class:`~app.execution.offline_llm.OfflineLLM`
  (model ``offline/extractive``). Unset in production:
  :func:`app.llm_config.llm_problem` explains why the worker refuses to start,
  and :func:`make_llm` raises :class:`ConfigurationError`.
* :func:`startup_problem` constructs the configured LLM and its client the way
  a run would and returns one line naming what is wrong and how to fix it
  (missing key, missing provider package, unknown provider or model), never a
  secret's value.

This module imports CrewAI only inside :func:`make_llm`, :func:`startup_problem`
and :func:`construction_problem`; what the settings say about the model (its
name, its provider, whether it is usable at all) is in :mod:`app.llm_config`,
which light processes import.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from app.config import Settings, get_settings
from app.errors import ConfigurationError
from app.llm_config import OFFLINE_MODEL, llm_problem, provider_name, request_timeout
from app.logs import redact


def make_llm(settings: Settings | None = None, *, run_timeout: float | None = None) -> Any:
    """A new LLM instance for one run (a CrewAI ``BaseLLM``) whose requests end before ``run_timeout``."""
    settings = settings or get_settings()
    problem = llm_problem(settings)
    if problem:
        raise ConfigurationError(problem)
    from app.execution import runtime

    runtime.prepare()
    if settings.llm_model:
        from crewai import LLM

        from app.execution.crewai_hooks import gate_interceptor

        options: dict[str, Any] = {
            "timeout": request_timeout(settings, run_timeout),
            "max_retries": settings.llm_max_retries,
            "interceptor": gate_interceptor(),
        }
        if settings.llm_stream:
            options["stream"] = True
        if settings.openai_base_url and provider_name(settings).lower() == "openai":
            # Explicit, not just in the environment: CrewAI then accepts any model name for it.
            options["base_url"] = settings.openai_base_url
        return LLM(model=settings.llm_model, **options)
    from app.execution.offline_llm import OfflineLLM

    return OfflineLLM(model=OFFLINE_MODEL, delay_seconds=settings.offline_llm_delay_seconds)


def startup_problem(settings: Settings) -> str | None:
    """Construct the configured LLM and its HTTP client; one line on what is wrong, or None.

    Imports CrewAI. Makes no network request (``first-sip llm check`` does).
    """
    problem = llm_problem(settings)
    if problem or not settings.llm_model:
        return problem
    crewai_log = logging.getLogger("crewai")
    level = crewai_log.level
    # CrewAI logs its own multi-line advice before raising; our one line replaces it.
    crewai_log.setLevel(logging.CRITICAL)
    try:
        llm = make_llm(settings)
        build_client = getattr(llm, "_get_sync_client", None)
        if callable(build_client):
            build_client()  # where the provider classes look for their API key
    except Exception as exc:  # anything CrewAI raises here means every run would fail
        return construction_problem(settings.llm_model, exc)
    finally:
        crewai_log.setLevel(level)
    return None


def construction_problem(model: str, exc: BaseException) -> str:
    """One line explaining why CrewAI could not construct ``model`` (no secret values)."""
    from crewai import llm as crewai_llm

    text = _first_line(str(exc))
    prefix, _, name = model.partition("/")
    aliases: dict[str, str] = getattr(crewai_llm, "PROVIDER_ALIASES", {})
    where = f"FIRST_SIP_LLM_MODEL={model}"
    if "native provider not available" in text:
        extra = text.rsplit("install:", 1)[-1].strip().removeprefix("uv add").strip().strip("\"'")
        return (
            f"{where}: the {prefix} provider's package is not installed in this worker; "
            f"install {extra or 'the crewai extra for ' + prefix} (pip install '{extra}')"
        )
    if "did not match any supported native provider" in text:
        if prefix.lower() in aliases:
            openai = aliases[prefix.lower()] == "openai"
            hint = " or set OPENAI_BASE_URL for an OpenAI-compatible server" if openai else ""
            return (
                f"{where}: CrewAI does not know the model {name!r} of provider {prefix} "
                f"(misspelt?); use a model name the provider publishes{hint}"
            )
        known = ", ".join(sorted(set(aliases)))
        return f"{where}: unknown provider {prefix!r}; CrewAI's providers are: {known} (others need litellm)"
    if "api key" in text.lower() or "api_key" in text.lower():
        return f"{where}: {_key_hint(text, prefix)}"
    return redact(f"{where}: CrewAI could not construct the LLM: {type(exc).__name__}: {text}")


def _key_hint(text: str, prefix: str) -> str:
    match = re.search(r"\b[A-Z][A-Z0-9_]*_API_KEY\b", text)
    variable = match.group(0) if match else None
    if variable:
        return f"{variable} is not set: the {prefix} provider needs it in the worker's environment"
    return redact(f"the {prefix} provider has no API key: {text}")


def _first_line(text: str) -> str:
    # pydantic puts the useful part after "Value error, " and the input (never shown) after "[type=".
    for line in text.splitlines():
        line = line.strip()
        if "Value error," in line:
            return line.split("Value error,", 1)[1].split("[type=", 1)[0].strip()
    return text.strip().splitlines()[0] if text.strip() else ""
