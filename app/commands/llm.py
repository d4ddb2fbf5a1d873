"""``first-sip llm check``: is the configured model usable from here?"""

from __future__ import annotations

import typer

from app.commands.output import emit_json, guarded

app = typer.Typer(help="The configured LLM.", no_args_is_help=True)

#: Longest answer echoed on the terminal.
MAX_ANSWER_CHARS = 120


@app.command("check")
@guarded
def check(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Make one tiny real request with the worker's settings; print model, latency and tokens.

    Exits 1 with one line naming the problem (missing key or package, unknown model,
    HTTP status from the provider) if the model cannot be used.
    """
    from app.config import get_settings
    from app.execution.llm_check import check as run_check

    result = run_check(get_settings())
    if as_json:
        emit_json(result.__dict__)
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
