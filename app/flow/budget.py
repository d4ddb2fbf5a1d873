"""A model's request budget (a rolling window shared by every worker) and the 429 pause.

Guarantees:

* :meth:`ModelBudget.take` lets a request through only while fewer than
  ``limit`` were let through in the last window (a sliding log, exact: never
  ``limit + 1`` in any rolling window, unlike fixed-window counters that allow
  twice the limit across a boundary) and the model is not paused. Atomic
  across processes (one script).
* The window is widened by :func:`window_ms`'s margin: a request reaches the
  provider a little after the gate, and not every request equally late, so a
  provider counting arrivals in its own windows still never sees more.
* :meth:`ModelBudget.pause` pauses the model for everyone; a later, shorter
  pause never shortens a longer one.
* :func:`wait_turn` waits for a turn, bounded by a deadline and a stop event.
* :func:`publish` records a model's budget (limit, window) as a process that
  enforces it runs it; :func:`published` reads what the cluster published,
  newest first, so ``first-sip status`` shows the cluster's model and budget,
  not whatever the environment of the shell running it says.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from app import keys
from app.errors import CallRefused, TransientError
from app.flow.scripts import PAUSE, TAKE, Call, eval_all, script

#: Slack added to every budget window (see the module docstring): 2 % plus 100 ms.
WINDOW_MARGIN_FRACTION = 0.02
WINDOW_MARGIN_MS = 100


class BudgetWaitExpired(CallRefused, TransientError):
    """A request could not get a turn in the model's budget before the run had to stop waiting.

    A gate's refusal (the request is not sent) and transient (the run is retried later).
    """


def window_ms(window_seconds: float) -> int:
    """The window the gate enforces, in ms: the configured one plus the margin."""
    return int(window_seconds * 1000 * (1 + WINDOW_MARGIN_FRACTION)) + WINDOW_MARGIN_MS


@dataclass(frozen=True)
class BudgetState:
    """One answer of the budget script."""

    granted: bool
    #: How long to wait before asking again (0 when granted).
    wait_seconds: float
    #: Requests let through in the current window.
    used: int
    #: Seconds the 429 pause has left (0: not paused).
    paused_seconds: float

    @classmethod
    def from_reply(cls, reply: Any) -> BudgetState:
        """Parse the script's ``{granted, wait ms, used, pause ms}``."""
        return cls(bool(int(reply[0])), int(reply[1]) / 1000, int(reply[2]), int(reply[3]) / 1000)


class ModelBudget:
    """The budget and pause of one model. ``limit`` None: no budget, only the pause applies."""

    def __init__(self, model: str, *, limit: int | None, window_seconds: float) -> None:
        self.model, self.limit, self.window_seconds = model, limit, window_seconds

    def call(self, *, take: bool) -> Call:
        """The scripted call: take a turn, or only look (``take=False``)."""
        member = f"{time.time_ns()}-{secrets.token_hex(4)}" if take else ""
        args = [self.limit or 0, window_ms(self.window_seconds), member]
        return TAKE, [keys.budget(self.model), keys.pause(self.model)], args

    def _run(self, client: Any, *, take: bool) -> BudgetState:
        (reply,) = eval_all(client, [self.call(take=take)])
        if isinstance(reply, Exception):
            raise reply
        return BudgetState.from_reply(reply)

    def take(self, client: Any) -> BudgetState:
        """Let one request through if the budget and the pause allow; else say how long to wait."""
        return self._run(client, take=True)

    def peek(self, client: Any) -> BudgetState:
        """The same answer as :meth:`take` would give, without taking anything."""
        return self._run(client, take=False)

    def pause(self, client: Any, seconds: float) -> float:
        """Pause the model cluster-wide for ``seconds`` (never shortening a pause); seconds left."""
        until_ms = int((time.time() + seconds) * 1000)
        left = script(PAUSE)(
            keys=[keys.pause(self.model)], args=[int(seconds * 1000), until_ms], client=client
        )
        return int(left) / 1000


def wait_turn(
    client: Any,
    budget: ModelBudget,
    *,
    stopped: threading.Event,
    deadline: float | None = None,
    clock: Any = time.monotonic,
) -> float:
    """Block until ``budget`` lets one request through; returns the seconds waited.

    Raises :class:`BudgetWaitExpired` if the turn would come after ``deadline`` (a
    ``clock()`` value) or ``stopped`` is set first: the caller's run then ends or is
    retried later; the request is never sent.
    """
    started = clock()
    while True:
        if stopped.is_set():  # the framework gave up on the run: it sends nothing more
            raise BudgetWaitExpired(f"LLM model {budget.model}: the run was stopped; request not sent")
        state = budget.take(client)
        if state.granted:
            return float(clock() - started)
        now = clock()
        if deadline is not None and now + state.wait_seconds > deadline:
            raise BudgetWaitExpired(
                f"LLM model {budget.model}: no request allowed before the run's deadline "
                f"({'paused after a 429' if state.paused_seconds else 'request budget used up'}; "
                f"next turn in {state.wait_seconds:.1f} s)"
            )
        # Waking early is pointless (the script says when); a stop ends the wait at once.
        stopped.wait(state.wait_seconds)


def publish(client: Any, budget: ModelBudget) -> None:
    """Record ``budget`` as the one this process enforces (raises ``redis.RedisError``)."""
    value = {"limit": budget.limit, "window_seconds": budget.window_seconds, "at": time.time()}
    client.hset(keys.flow_models(), budget.model, json.dumps(value))


def published(client: Any) -> list[ModelBudget]:
    """The budgets the cluster's processes published, the most recently published first."""
    found: list[tuple[float, ModelBudget]] = []
    for model, raw in (client.hgetall(keys.flow_models()) or {}).items():
        try:
            value = json.loads(raw)
            limit = value.get("limit")
            budget = ModelBudget(
                model.decode() if isinstance(model, bytes) else str(model),
                limit=int(limit) if limit is not None else None,
                window_seconds=float(value["window_seconds"]),
            )
            found.append((float(value.get("at") or 0), budget))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # not ours to explain: status shows the local view instead
    return [budget for _, budget in sorted(found, key=lambda item: -item[0])]
