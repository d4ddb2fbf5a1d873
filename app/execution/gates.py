"""Per-run gates: checks that run before every LLM call, HTTP request to the provider and tool call.

A *gate* is a function ``gate(call: Call) -> None``. It returns to let the call
go on, or raises a :class:`~app.errors.CallRefused` to stop it (the call is not
made; CrewAI sees a denied hook and the crew ends with that error). Gates run
in the crew's own thread, in registration order; the first that raises wins.

Guarantees:

* The run a call belongs to is found through a context variable that
  :func:`bound` sets in the crew thread (the worker runs each crew thread in a
  copied context, so concurrent crews in one process never see each other's run).
  Outside a bound run (no crew of ours) no gate runs.
* :func:`refuse_if_stopped` is always the first gate: once the framework gave
  up on a run (time limit, cancellation, lost lease: ``ctx.stopped``), its crew
  makes no further LLM request and no further tool call.
* ``Call.kind`` says where the check runs: ``"llm"`` once per LLM call (CrewAI's
  before-LLM-call hook, before any retry CrewAI itself might make); ``"http"``
  before each HTTP request the provider client sends, its own retries included
  (providers whose CrewAI class takes an ``interceptor``: OpenAI and the
  OpenAI-compatible ones, Anthropic, Azure, Gemini, Bedrock); ``"tool"`` before
  each tool call. With ``FIRST_SIP_LLM_MAX_RETRIES=0`` (the default) one
  ``"llm"`` call is one ``"http"`` request.

This module imports no CrewAI; :mod:`app.execution.crewai_hooks` connects it to
CrewAI's hooks. Flow control (per-model request budgets) adds its gates with
:func:`add_gate` at worker start, and watches provider responses (a 429 pauses
the model for the whole cluster) with :func:`add_response_observer`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from app.errors import RunStopped

if TYPE_CHECKING:
    from app.execution.contract import CrewContext

CallKind = Literal["llm", "http", "tool"]


@dataclass(frozen=True)
class Call:
    """One call about to be made on behalf of a run."""

    ctx: CrewContext
    kind: CallKind
    #: The model (``"llm"``), the request's host and path (``"http"``) or the tool's name (``"tool"``).
    name: str


Gate = Callable[[Call], None]

_current_run: contextvars.ContextVar[CrewContext | None] = contextvars.ContextVar(
    "first_sip_current_run", default=None
)


def refuse_if_stopped(call: Call) -> None:
    """Refuse every call of a run the framework has given up on."""
    if call.ctx.stopped.is_set():
        raise RunStopped(
            f"run {call.ctx.run_id} was stopped by the framework (time limit or cancellation); "
            f"{call.kind} call {call.name!r} not made"
        )


_gates: list[Gate] = [refuse_if_stopped]


def add_gate(gate: Gate) -> None:
    """Run ``gate`` before every call of every run in this process (after the ones already added)."""
    if gate not in _gates:
        _gates.append(gate)


def remove_gate(gate: Gate) -> None:
    """Stop running ``gate``; :func:`refuse_if_stopped` cannot be removed."""
    if gate is not refuse_if_stopped and gate in _gates:
        _gates.remove(gate)


def gates() -> tuple[Gate, ...]:
    """The gates in the order they run."""
    return tuple(_gates)


@contextmanager
def bound(ctx: CrewContext) -> Iterator[None]:
    """Within the block (in this thread's context), calls belong to ``ctx``'s run."""
    token = _current_run.set(ctx)
    try:
        yield
    finally:
        _current_run.reset(token)


def current_run() -> CrewContext | None:
    """The run the calls in this context belong to, or None outside a crew of ours."""
    return _current_run.get()


def check(kind: CallKind, name: str) -> None:
    """Run every gate for a call of ``kind`` by the current run; raises to refuse it."""
    ctx = _current_run.get()
    if ctx is None:
        return
    call = Call(ctx, kind, name)
    for gate in tuple(_gates):
        gate(call)


def before_llm_call(model: str) -> None:
    """Gate one LLM call of the current run (``model`` as the LLM names it)."""
    check("llm", model)


def before_http_request(target: str) -> None:
    """Gate one HTTP request to the provider (``target``: host and path, never the query)."""
    check("http", target)


#: Sees each provider response of a run: ``(ctx, HTTP status, response headers)``.
ResponseObserver = Callable[["CrewContext", int, Mapping[str, str]], None]
_observers: list[ResponseObserver] = []


def add_response_observer(observer: ResponseObserver) -> None:
    """Call ``observer`` with every provider response of every run in this process."""
    if observer not in _observers:
        _observers.append(observer)


def after_http_response(status: int, headers: Mapping[str, str]) -> None:
    """Tell the observers about one provider response of the current run (none outside a run)."""
    ctx = _current_run.get()
    if ctx is None:
        return
    for observer in tuple(_observers):
        observer(ctx, status, headers)


def before_tool_call(tool: str) -> None:
    """Gate one tool call of the current run."""
    check("tool", tool)
