"""``first-sip consumer``: run the stream consumer, or ``--check`` this host's one for health checks."""

from __future__ import annotations

import typer


def consumer(
    check: bool = typer.Option(
        False, "--check", help="Exit 0 if a consumer on this host is alive (heartbeat), 1 otherwise."
    ),
) -> None:
    """Read every plugin's stream in the consumer group and hand runs to the Celery workers."""
    if check:
        _check()
        return
    from app.logs import configure_logging
    from app.streams.runner import run

    configure_logging()
    raise typer.Exit(run())


def _check() -> None:
    from app.streams import heartbeat

    # Redis not answering is reported by the CLI's error boundary (one line, exit 1).
    name = heartbeat.alive()
    if name is None:
        typer.echo("unhealthy: no consumer heartbeat on this host", err=True)
        raise typer.Exit(1)
    typer.echo(f"alive: {name}")
