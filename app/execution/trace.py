"""What went wrong inside a run that still completed: tool errors and structured-output failures.

CrewAI does not fail a task when a tool raises (the agent reads the error as
an observation and carries on) or when a final answer does not validate
against the task's ``output_json``/``output_pydantic`` model (the raw text is
kept). Guarantees:

* :func:`install` subscribes once per process to CrewAI 1.15's tool events
  (``ToolUsageErrorEvent``, ``ToolValidateInputErrorEvent`` and
  ``ToolSelectionErrorEvent`` per failed attempt, ``ToolFailureDetectedEvent``
  per failed call). The event bus
  runs handlers in its own threads with a copy of the emitting context, so
  each event lands in the :class:`RunTrace` of the run whose crew thread
  emitted it (:func:`collecting`), never in another run's.
* :meth:`RunTrace.tool_errors` groups them by tool and error (redacted,
  bounded) with the number of failed calls and attempts.
* Structured output: CrewAI 1.15 *raises* pydantic's ``ValidationError`` out
  of the kickoff when the answer is JSON that does not validate (and keeps
  the raw text when it is not JSON at all). Inside a run (:func:`collecting`)
  :func:`install` makes both the same: the task keeps its raw answer, the run
  goes on, and the failure is recorded; outside a run CrewAI behaves as it
  always does. :func:`output_problems` lists every task whose requested
  structured output is missing, grouped like tool errors
  (``{"task", "model", "error", "count"}``).
* :func:`failures` turns them into a :class:`PermanentError` when the
  plugin's manifest lists them in ``fail_on``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from app.errors import PermanentError
from app.logs import redact

MAX_ERROR_CHARS = 300
MAX_DISTINCT = 20

#: Events of one attempt of a tool call that went wrong (CrewAI retries a raising tool).
_ATTEMPT_EVENTS = {
    "ToolUsageErrorEvent": "",
    "ToolValidateInputErrorEvent": "invalid input: ",
    "ToolSelectionErrorEvent": "unknown tool: ",
}
#: The event of a tool call that failed for good (its result told the agent so).
_FAILURE_EVENT = "ToolFailureDetectedEvent"


def _text(value: Any) -> str:
    if isinstance(value, BaseException):
        detail = str(value).strip()
        value = f"{type(value).__name__}: {detail}" if detail else type(value).__name__
    text = redact(" ".join(str(value).split()))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


@dataclass
class RunTrace:
    """Tool problems seen during one run.

    CrewAI retries a raising tool a few times before it gives the agent the
    error; each attempt and the final failure are separate events, handled in
    the bus's threads in no guaranteed order. So both are kept and grouped
    when read: one entry per (tool, error) with the number of failed calls
    (``count``) and of failed attempts (``attempts``).
    """

    _attempts: list[tuple[str, str]] = field(default_factory=list)
    _failures: list[tuple[str, str, str]] = field(default_factory=list)
    _outputs: list[tuple[str, str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_output_problem(self, task: str, model: str, error: str) -> None:
        """A task's answer that did not validate against its ``output_json``/``output_pydantic`` model."""
        with self._lock:
            self._outputs.append((task, model, error))

    def output_problems(self) -> list[tuple[str, str, str]]:
        """The recorded (task, model, error) triples, in order."""
        with self._lock:
            return list(self._outputs)

    def add_attempt(self, tool: str, error: str) -> None:
        """One failed attempt of a tool call."""
        with self._lock:
            self._attempts.append((tool, error))

    def add_failure(self, tool: str, reason: str, message: str) -> None:
        """One tool call that failed (``reason`` as CrewAI's ``ToolFailureReason`` value)."""
        with self._lock:
            self._failures.append((tool, reason, message))

    def tool_errors(self) -> list[dict[str, Any]]:
        """``[{"tool", "error", "count", "attempts"}]`` in first-seen order, at most MAX_DISTINCT."""
        with self._lock:
            attempts, failures = list(self._attempts), list(self._failures)
        last_error = {tool: error for tool, error in attempts}
        tried = {tool: sum(1 for t, _ in attempts if t == tool) for tool, _ in attempts}
        grouped: dict[tuple[str, str], int] = {}
        for tool, reason, message in failures:
            error = last_error.get(tool, message) if reason == "exception" else f"{reason}: {message}"
            grouped[(tool, error)] = grouped.get((tool, error), 0) + 1
        failed_tools = {tool for tool, _ in grouped}
        for tool, error in attempts:  # attempts whose call never reported a failure
            if tool not in failed_tools:
                grouped[(tool, error)] = grouped.get((tool, error), 0) + 1
        entries = [
            {"tool": t, "error": e, "count": n, "attempts": tried.get(t, 0)} for (t, e), n in grouped.items()
        ]
        return entries[:MAX_DISTINCT]


_current: ContextVar[RunTrace | None] = ContextVar("first_sip_run_trace", default=None)
_install_lock = threading.Lock()
_installed = False


@contextmanager
def collecting() -> Iterator[RunTrace]:
    """Collect the tool events of crews run in this context into a new :class:`RunTrace`."""
    trace = RunTrace()
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


def _on_tool_event(source: Any, event: Any) -> None:
    trace = _current.get()
    if trace is None:
        return  # a crew outside any run (tests, tools of the framework's own)
    tool = str(getattr(event, "tool_name", None) or "?")
    kind = type(event).__name__
    if kind == _FAILURE_EVENT:
        failure = getattr(event, "failure", None)
        reason = getattr(getattr(failure, "reason", None), "value", None) or "failed"
        trace.add_failure(tool, str(reason), _text(getattr(failure, "message", None) or "failed"))
        return
    error = getattr(event, "error", None)
    trace.add_attempt(tool, _ATTEMPT_EVENTS.get(kind, "") + (_text(error) if error else "failed"))


def _validation_error(exc: Any) -> str:
    """One line for a pydantic ``ValidationError``: how many, and the first one's place and message."""
    errors = exc.errors() if callable(getattr(exc, "errors", None)) else []
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    location = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
    count = exc.error_count() if callable(getattr(exc, "error_count", None)) else 1
    line = f"{count} validation error(s); first: {location}: {first.get('msg')}"
    return _text(line)


def _record_invalid_output(task: Any, exc: Exception) -> bool:
    """Record ``exc`` for ``task`` in the current run; False outside a run (CrewAI's behaviour stands)."""
    run = _current.get()
    if run is None:
        return False
    model = _model_of(task)
    name = getattr(task, "name", None) or "?"
    run.add_output_problem(str(name), getattr(model, "__name__", "?"), _validation_error(exc))
    return True


def _tolerant_export(task_class: Any) -> None:
    """Wrap ``Task._export_output`` (and its async twin) so a run keeps going past an invalid answer."""
    from pydantic import ValidationError

    original, original_async = task_class._export_output, task_class._aexport_output

    def _export_output(self: Any, result: Any) -> tuple[Any, Any]:
        try:
            return original(self, result)  # type: ignore[no-any-return]
        except ValidationError as exc:
            if not _record_invalid_output(self, exc):
                raise
            return None, None

    async def _aexport_output(self: Any, result: Any) -> tuple[Any, Any]:
        try:
            return await original_async(self, result)  # type: ignore[no-any-return]
        except ValidationError as exc:
            if not _record_invalid_output(self, exc):
                raise
            return None, None

    task_class._export_output = _export_output
    task_class._aexport_output = _aexport_output


def install() -> None:
    """Subscribe to CrewAI's tool events and make invalid structured output a recorded problem.

    Once per process, after CrewAI is imported.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        from crewai import Task
        from crewai.events.event_bus import crewai_event_bus
        from crewai.events.types import tool_usage_events

        for name in [*_ATTEMPT_EVENTS, _FAILURE_EVENT]:
            crewai_event_bus.register_handler(getattr(tool_usage_events, name), _on_tool_event)
        _tolerant_export(Task)
        _installed = True


def settle() -> None:
    """Wait (bounded) for event handlers of events already emitted: the bus runs them in threads."""
    from crewai.events.event_bus import crewai_event_bus

    crewai_event_bus.flush(timeout=10.0)


def _model_of(task: Any) -> Any:
    return getattr(task, "output_pydantic", None) or getattr(task, "output_json", None)


def output_problems(crew: Any, result: Any, run: RunTrace | None = None) -> list[dict[str, Any]]:
    """Tasks that asked for structured output and did not get it.

    ``[{"task", "model", "error", "count"}]``, one entry per (task, model,
    error), at most MAX_DISTINCT: what ``run`` recorded while the crew ran
    (answers CrewAI refused), then tasks whose output is missing for another
    reason (CrewAI could not turn the answer into JSON at all).
    """
    from pydantic import ValidationError

    found: list[tuple[str, str, str]] = run.output_problems() if run is not None else []
    recorded = {task for task, _, _ in found}
    outputs = list(getattr(result, "tasks_output", None) or [])
    for task, output in zip(getattr(crew, "tasks", []) or [], outputs, strict=False):
        model = _model_of(task)
        structured = getattr(output, "pydantic", None) is not None or getattr(output, "json_dict", None)
        name = str(getattr(task, "name", None) or "?")
        if model is None or structured or name in recorded:
            continue
        try:
            model.model_validate_json(str(getattr(output, "raw", "") or ""))
            error = "CrewAI could not convert the answer"
        except ValidationError as exc:
            error = _validation_error(exc)
        found.append((name, model.__name__, _text(error)))
    grouped: dict[tuple[str, str, str], int] = {}
    for key in found:
        grouped[key] = grouped.get(key, 0) + 1
    entries = [{"task": t, "model": m, "error": e, "count": n} for (t, m, e), n in grouped.items()]
    return entries[:MAX_DISTINCT]


def failures(fail_on: list[str], *, tool_errors: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    """Raise :class:`PermanentError` if the plugin asked for any of what happened to fail its run."""
    reasons = []
    if "tool_errors" in fail_on and tool_errors:
        shown = "; ".join(f"{e['tool']}: {e['error']} (x{e['count']})" for e in tool_errors[:3])
        reasons.append(f"tool errors: {shown}")
    if "output_validation" in fail_on and outputs:
        shown = "; ".join(
            f"task {o['task']!r} ({o['model']}): {o['error']} (x{o.get('count', 1)})" for o in outputs[:3]
        )
        reasons.append(f"structured output did not validate: {shown}")
    if reasons:
        raise PermanentError("failed by the plugin's fail_on: " + " | ".join(reasons))
