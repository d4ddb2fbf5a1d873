"""``first-sip status``: the pipeline at a glance, per plugin, and the model's flow control."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from app.commands.output import emit_json, guarded

if TYPE_CHECKING:
    from app.status import ModelStatus


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


@guarded
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Per plugin: stream, pending, oldest idle, group lag, dead letters, schedule lag, tokens, runs."""
    from app.status import pipeline_status

    rows = pipeline_status()
    if as_json:
        emit_json([asdict(r) for r in rows])
        return
    header = (
        f"{'plugin':<24} {'stream':>6} {'pending':>7} {'oldest':>6} {'lag':>5} {'dead':>5} "
        f"{'sched lag':>9} {'tokens 24h':>10} {'flight':>7} {'waiting':>7} {'queue':<10} runs (24h)"
    )
    typer.echo(header)
    for r in rows:
        runs = ", ".join(f"{k}={v}" for k, v in sorted(r.runs_24h.items())) or "-"
        name = r.plugin + ("" if r.enabled else " (off)")
        lag = "-" if r.group_lag is None else str(r.group_lag)
        flight = "-" if r.max_concurrency is None else f"{_or_unknown(r.in_flight)}/{r.max_concurrency}"
        waiting = "-" if r.waiting is None else str(r.waiting)
        typer.echo(
            f"{name:<24} {r.stream_length:>6} {r.pending:>7} "
            f"{_fmt_seconds(r.oldest_pending_idle_seconds):>6} "
            f"{lag:>5} {r.dead_letters:>5} {_fmt_seconds(r.schedule_lag_seconds):>9} "
            f"{r.tokens_24h:>10} {flight:>7} {waiting:>7} {r.queue:<10} {runs}"
        )
        if r.redis_error:
            typer.echo(f"  redis: {r.redis_error}", err=True)
        if r.stream_error:
            e = r.stream_error
            typer.echo(
                f"  stream unusable since {e.get('since', '?')} ({e.get('count', '?')} errors): "
                f"{e.get('error', '')}; its runs wait, other plugins are not affected",
                err=True,
            )
    if not rows:
        typer.echo("no plugins in the database (run 'first-sip plugins sync')", err=True)
    elif rows[0].model is not None:
        typer.echo(_model_line(rows[0].model))


def _or_unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def _model_line(model: ModelStatus) -> str:
    if model.budget_limit is None:
        budget = f"{model.budget_used} requests in the last {model.window_seconds:g}s (no budget set)"
    else:
        budget = f"budget {model.budget_used}/{model.budget_limit} per {model.window_seconds:g}s"
    from app.db.models import utcnow

    paused = "not paused"
    if model.paused_until is not None:
        left = (model.paused_until - utcnow()).total_seconds()
        paused = f"paused until {model.paused_until:%H:%M:%S} UTC ({max(left, 0):.0f}s, provider 429)"
    return f"model {model.name}: {budget}; {paused}"
