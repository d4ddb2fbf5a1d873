"""``first-sip consumer``: run the stream consumer, or ``--check`` this host's one for health checks."""

from __future__ import annotations

import typer


def consumer(
    check: bool = typer.Option(
        False,
        "--check",
        help="Exit 0 if this host's consumer is alive and its loop works (heartbeat), else 1.",
    ),
) -> None:
    """Read every plugin's stream in the consumer group and hand runs to the Celery workers."""
    if check:
        _check()
        return
    from app.logs import configure_logging
    from app.streams.consumer_process import run

    configure_logging()
    raise typer.Exit(run())


def _check() -> None:
    from app.streams import heartbeat

    # Redis not answering is reported by the CLI's error boundary (one line, exit 1).
    found = heartbeat.health()
    if found is None:
        typer.echo("unhealthy: no consumer heartbeat on this host", err=True)
        raise typer.Exit(1)
    if not found.healthy:
        since = found.failing_since.isoformat(timespec="seconds") if found.failing_since else "?"
        typer.echo(
            f"unhealthy: consumer {found.consumer} is running but its loop failed {found.failures} "
            f"iterations in a row (since {since}); see its log",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo(f"alive: {found.consumer}")
