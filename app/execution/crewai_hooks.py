"""Connects :mod:`app.execution.gates` to CrewAI: global hooks and an HTTP interceptor.

Guarantees:

* :func:`install` registers one global before-LLM-call hook and one
  before-tool-call hook per process (idempotent). They run the gates of the
  run bound to the calling context and turn a refusal into CrewAI's
  ``HookAborted`` (which CrewAI never retries and never swallows), chained to
  the gate's :class:`~app.errors.CallRefused`.
* :func:`gate_interceptor` returns a transport interceptor for the provider
  classes that take one; it runs the ``"http"`` gates before every request the
  provider's client sends, so a client's own retry of a stopped run never
  leaves the process.

Imports CrewAI: only the worker uses it (through :func:`app.execution.runtime.prepare`
and :func:`app.execution.llm.make_llm`).
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from crewai.hooks import register_before_llm_call_hook, register_before_tool_call_hook
from crewai.hooks.dispatch import HookAborted
from crewai.llms.hooks.base import BaseInterceptor

from app.errors import CallRefused, FirstSipError
from app.execution import gates

_installed = False
_install_lock = threading.Lock()


class GateRefused(HookAborted, FirstSipError):
    """CrewAI's form of a gate's refusal (a ``HookAborted``); ``__cause__`` is the :class:`CallRefused`."""


def _abort(exc: CallRefused) -> GateRefused:
    error = GateRefused(str(exc), source="first-sip gates")
    error.__cause__ = exc
    return error


def _before_llm_call(context: Any) -> None:
    llm = getattr(context, "llm", None)
    try:
        gates.before_llm_call(str(getattr(llm, "model", None) or "?"))
    except CallRefused as exc:
        raise _abort(exc) from exc


def _before_tool_call(context: Any) -> None:
    try:
        gates.before_tool_call(str(getattr(context, "tool_name", None) or "?"))
    except CallRefused as exc:
        raise _abort(exc) from exc


def install() -> None:
    """Register the gates as CrewAI global hooks (once per process)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        register_before_llm_call_hook(_before_llm_call)
        register_before_tool_call_hook(_before_tool_call)
        _installed = True


def _target(request: httpx.Request) -> str:
    return f"{request.url.host}{request.url.path}"


class GateInterceptor(BaseInterceptor[httpx.Request, httpx.Response]):
    """Runs the ``"http"`` gates before each provider request; passes responses through."""

    def on_outbound(self, message: httpx.Request) -> httpx.Request:
        """Raise :class:`CallRefused` (the request is not sent) if a gate refuses it."""
        gates.before_http_request(_target(message))
        return message

    def on_inbound(self, message: httpx.Response) -> httpx.Response:
        """Unchanged; the response observers see its status and headers (flow control's 429 pause)."""
        gates.after_http_response(message.status_code, message.headers)
        return message

    async def aon_outbound(self, message: httpx.Request) -> httpx.Request:
        """Same as :meth:`on_outbound`."""
        return self.on_outbound(message)

    async def aon_inbound(self, message: httpx.Response) -> httpx.Response:
        """Same as :meth:`on_inbound`."""
        return self.on_inbound(message)


_interceptor = GateInterceptor()


def gate_interceptor() -> GateInterceptor:
    """The process's interceptor (stateless: the run is found through the context)."""
    return _interceptor
