"""``first-sip llm check``: is the configured model usable from here?"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import typer

from app.commands.output import emit_json, guarded

app = typer.Typer(help="The configured LLM.", no_args_is_help=True)

#: Longest answer echoed on the terminal.
MAX_ANSWER_CHARS = 120
T = TypeVar("T")


@contextlib.contextmanager
def _crewai_silenced() -> Iterator[None]:
    """No output but ours while the check runs.

    On a failed call CrewAI prints an event-bus warning on stdout (which would break
    ``--json``) and logs the provider's raw error through the root logger, whose first
    use installs a stderr handler (``logging.basicConfig``). A null handler on the root
    stops that; the prints are dropped. The one line we print says what went wrong.
    """
    root = logging.getLogger()
    handlers = list(root.handlers)
    root.handlers[:] = [logging.NullHandler()]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.handlers[:] = handlers


def _quietly(func: Callable[[], T]) -> T:
    with _crewai_silenced():
        return func()


@app.command("check")
@guarded
def check(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Make one tiny real request with the worker's settings; print model, latency and tokens.

    Exits non-zero with one line naming the problem (missing key or package, unknown model,
    HTTP status from the provider) if the model cannot be used: on stderr, or with ``--json``
    as ``{"ok": false, "error": "..."}`` on stdout (exit 1, or 2 for invalid settings).
    """
    from app.commands.boundary import PASS_THROUGH, explain
    from app.config import get_settings
    from app.execution.llm_check import check as run_check

    try:
        result = _quietly(lambda: run_check(get_settings()))
    except PASS_THROUGH:
        raise
    except Exception as exc:
        if not as_json:
            raise  # the CLI's error boundary prints the one line
        message, code = explain(exc)
        emit_json({"ok": False, "error": message})
        raise typer.Exit(code) from None
    if as_json:
        emit_json({"ok": True, **result.__dict__})
        return
    answer = (
        result.answer if len(result.answer) <= MAX_ANSWER_CHARS else result.answer[:MAX_ANSWER_CHARS] + "…"
    )
    note = " (the offline development model; no provider was called)" if result.offline else ""
    typer.echo(
        f"model {result.model}{note}: answered in {result.latency_seconds:.2f} s, "
        f"tokens {result.total_tokens} (prompt {result.prompt_tokens}, completion {result.completion_tokens})"
    )
    typer.echo(f"answer: {answer!r}")
