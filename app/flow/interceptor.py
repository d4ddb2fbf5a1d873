"""The provider gate: every HTTP request a run's LLM sends passes the model's budget and pause first.

It is a CrewAI transport interceptor (``LLM(..., interceptor=...)``), so it sits
under the provider SDK: it sees each HTTP request the SDK makes, its own retries
included (they count against the provider's limit too), and each response, so a
429 pauses the model for the whole cluster even when the SDK retries it by itself.
CrewAI's native providers (OpenAI, Anthropic, Azure, Bedrock, Gemini) support
interceptors; a model served through LiteLLM's fallback has no gate (the
consumer's dispatch still honours the budget and any pause).

Worker only: this module imports CrewAI.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from typing import Any

import httpx
from crewai.llms.hooks.base import BaseInterceptor

from app.config import Settings
from app.flow.worker import after_rate_limited, before_llm_request


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """The provider's wait hint: ``retry-after-ms`` (OpenAI), else ``Retry-After`` (seconds or a date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            continue
        return max(0.0, when.timestamp() - time.time())
    return None


class ProviderGate(BaseInterceptor[httpx.Request, httpx.Response]):
    """One run's gate (a fresh one per LLM instance, like the LLM itself)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopped = threading.Event()
        #: ``time.monotonic()`` after which a request that must wait is not sent at all.
        self.deadline: float | None = None

    def bind(self, *, stopped: threading.Event, deadline: float) -> None:
        """Tie the gate to the run: its stop event and its time limit bound every wait."""
        self.stopped, self.deadline = stopped, deadline

    def __deepcopy__(self, memo: dict[int, Any]) -> ProviderGate:
        # Holds a threading.Event; a copied LLM must share the run's gate anyway.
        return self

    def on_outbound(self, message: httpx.Request) -> httpx.Request:
        """Wait for a turn; raises BudgetWaitExpired (the request is not sent) past the deadline."""
        before_llm_request(stopped=self.stopped, deadline=self.deadline, settings=self.settings)
        return message

    def on_inbound(self, message: httpx.Response) -> httpx.Response:
        """A 429 pauses the model for everyone, for the provider's Retry-After."""
        if message.status_code == 429:
            after_rate_limited(retry_after_seconds(message.headers), settings=self.settings)
        return message

    async def aon_outbound(self, message: httpx.Request) -> httpx.Request:
        """:meth:`on_outbound` off the event loop (the wait blocks)."""
        return await asyncio.to_thread(self.on_outbound, message)

    async def aon_inbound(self, message: httpx.Response) -> httpx.Response:
        """:meth:`on_inbound` off the event loop (it talks to Redis)."""
        return await asyncio.to_thread(self.on_inbound, message)
