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
    import redis

    from app.streams import heartbeat

    try:
        name = heartbeat.alive()
    except redis.RedisError as exc:
        typer.echo(f"unhealthy: cannot read the heartbeat from Redis: {exc}", err=True)
        raise typer.Exit(1) from None
    if name is None:
        typer.echo("unhealthy: no consumer heartbeat on this host", err=True)
        raise typer.Exit(1)
    typer.echo(f"alive: {name}")
