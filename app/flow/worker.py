"""The worker's side of flow control: a run's slot, and the gate before every LLM request.

Guarantees:

* :class:`RunSlot` holds a capped plugin's slot from the claim to the run's
  end, renewed with the run's lease (so a SIGKILLed worker's slot expires with
  its lease), and gives it back at the end, ringing the consumers' doorbell so
  a held-back entry is dispatched at once. Redis trouble never fails a run: a
  slot that could not be renewed or released expires by itself.
* :func:`before_llm_request` lets a request through only when the model's
  budget and pause allow, waiting (bounded by the run's deadline and its stop
  event) when they do not. :func:`after_rate_limited` pauses the model for the
  whole cluster after a provider's 429.
* :func:`install` puts both on every provider HTTP request of every run (the
  per-run gates of :mod:`app.execution.gates`, run by the transport interceptor
  under the provider's client): its own retries count against the budget too,
  and a 429 the client retries by itself still pauses the model. Providers whose
  CrewAI class takes no interceptor (the LiteLLM fallback) have no request gate;
  the consumer's dispatch still honours the budget and any pause.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import redis

from app.config import Settings, get_settings
from app.flow import slots
from app.flow.budget import publish, wait_turn
from app.flow.policy import model_budget
from app.redis_client import get_redis

if TYPE_CHECKING:
    from app.execution.contract import CrewContext
    from app.execution.gates import Call

log = logging.getLogger(__name__)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "first_sip_run_deadline", default=None
)


class RunSlot:
    """The in-flight slot of one attempt of a run (no Redis at all for uncapped plugins)."""

    def __init__(
        self, plugin: str, run_id: str, *, attempt: int, lease_seconds: float, client: Any = None
    ) -> None:
        self.plugin, self.run_id, self.lease_seconds = plugin, run_id, lease_seconds
        self.member = slots.member(run_id, attempt)
        self._client = client
        #: None until the plugin's cap is known: a run that fails before (a broken plugin) may
        #: still hold the consumer's dispatch slot, so release() then gives it back to be sure.
        self.capped: bool | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = get_redis()
        return self._client

    def hold(self, cap: int | None) -> None:
        """Called once the plugin's cap is known: take (or keep) the slot if the plugin is capped."""
        self.capped = cap is not None
        if self.capped:
            self._renew("hold")

    def renew(self) -> None:
        """With every lease renewal: the slot lives as long as the lease."""
        if self.capped:
            self._renew("renew")

    def _renew(self, what: str) -> None:
        try:
            slots.hold(self.client, self.plugin, self.member, lease_seconds=self.lease_seconds)
        except redis.RedisError as exc:
            log.warning("could not %s the run's flow-control slot (it expires with the lease): %s", what, exc)

    def release(self) -> None:
        """The run ended (any outcome): give the slot back and wake a consumer."""
        if self.capped is False:
            return
        try:
            slots.release(self.client, self.plugin, self.member)
        except redis.RedisError as exc:
            log.warning("could not release the run's flow-control slot (it expires with the lease): %s", exc)


def before_llm_request(
    *, stopped: threading.Event, deadline: float | None = None, settings: Settings | None = None
) -> None:
    """Wait for the model's budget and pause to allow one request (see :func:`wait_turn`).

    ``deadline`` is a ``time.monotonic()`` value. Redis unreachable: the request goes
    ahead (the provider's own limit still answers with a 429, which is handled).
    """
    settings = settings or get_settings()
    try:
        waited = wait_turn(get_redis(), model_budget(settings), stopped=stopped, deadline=deadline)
    except redis.RedisError as exc:
        log.warning("LLM budget check failed (sending the request anyway): %s", exc)
        return
    if waited >= 1:
        log.info("waited %.1f s for a turn in the LLM request budget", waited)


def after_rate_limited(retry_after: float | None, *, settings: Settings | None = None) -> float:
    """A provider answered 429: pause the model for everyone for its Retry-After (or the default).

    Returns the pause's seconds left (0 if Redis was unreachable).
    """
    settings = settings or get_settings()
    if not settings.llm_pause_on_429:
        return 0.0
    seconds = settings.llm_pause_seconds if retry_after is None or retry_after <= 0 else retry_after
    seconds = min(seconds, settings.llm_pause_max_seconds)
    budget = model_budget(settings)
    try:
        left = budget.pause(get_redis(), seconds)
    except redis.RedisError as exc:
        log.warning("could not pause model %s after a 429: %s", budget.model, exc)
        return 0.0
    log.warning("provider rate-limited model %s: dispatch and requests paused for %.1f s", budget.model, left)
    return left


@contextmanager
def run_deadline(deadline: float) -> Iterator[None]:
    """Within the block (and crew threads started in it), requests wait for turns until ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value: the run's time limit.
    """
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def budget_gate(call: Call) -> None:
    """The per-run gate: each provider HTTP request waits for a turn in the model's budget."""
    if call.kind == "http":
        before_llm_request(stopped=call.ctx.stopped, deadline=_deadline.get())


def pause_on_429(ctx: CrewContext, status: int, headers: Mapping[str, str]) -> None:
    """The response observer: a provider's 429 pauses the model for the whole cluster."""
    if status != 429:
        return
    from app.execution.provider_errors import retry_after_of

    after_rate_limited(retry_after_of(SimpleNamespace(headers=headers)))  # type: ignore[arg-type]


def install() -> None:
    """Add the budget gate and the 429 observer to this worker process (idempotent).

    Also publishes the model's budget for ``first-sip status`` (best effort).
    """
    from app.execution import gates

    gates.add_gate(budget_gate)
    gates.add_response_observer(pause_on_429)
    publish_budget()


def publish_budget(settings: Settings | None = None, *, client: Any = None) -> None:
    """Publish the model budget this process enforces (see :func:`app.flow.budget.publish`)."""
    try:
        publish(client or get_redis(), model_budget(settings or get_settings()))
    except redis.RedisError as exc:
        log.warning("could not publish the LLM budget for status: %s", exc)
