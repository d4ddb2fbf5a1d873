"""``first-sip release`` and ``first-sip flower``: what the Procfile runs besides Celery."""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys

import typer

from app.commands.output import fail


def release() -> None:
    """Migrate the database to head, check every plugin's crew builds, then sync plugins.

    A plugin that fails the check (unmet requirement, entry point that does not
    import, crew that does not build) is disabled with the reason; the others
    sync. Any failure of the release itself exits non-zero (the deploy stops).
    """
    from app.logs import configure_logging
    from app.release import release as run_release

    configure_logging()
    # Any failure exits non-zero through the CLI's error boundary (one line, no SQL, no secret);
    # a broken plugin is not a failure: it is skipped, reported, and the others are synced.
    report = run_release()
    for problem in report.problems:
        typer.echo(f"plugin skipped: {problem}", err=True)
    for note in report.notes:
        typer.echo(note)
    for line in report.sync.lines():
        typer.echo(line)


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower(
    port: int = typer.Option(None, "--port", envvar="PORT", help="Port (default $PORT or 5555)."),
    address: str = typer.Option("0.0.0.0", "--address", help="Address to listen on."),  # noqa: S104
) -> None:
    """Start Flower with authentication (FLOWER_BASIC_AUTH); refuses a public address without it."""
    from app.config import get_settings

    settings = get_settings()
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else ""
    if not auth and not _is_loopback(address):
        fail(
            f"refusing to start Flower on {address} without authentication: "
            "set FLOWER_BASIC_AUTH=user:password (or --address 127.0.0.1 for a local look)",
            code=2,
        )
    celery = shutil.which("celery", path=os.path.dirname(sys.executable)) or "celery"
    env = dict(os.environ)
    # Secrets go through the environment (Flower reads FLOWER_*), never argv where `ps` shows them.
    if auth:
        env["FLOWER_BASIC_AUTH"] = auth
    env["FLOWER_COOKIE_SECRET"] = settings.secret_key.get_secret_value()
    args = [
        celery,
        "-A",
        "app.celery_app:celery_app",
        "flower",
        f"--port={port or 5555}",
        f"--address={address}",
        "--purge_offline_workers=300",
    ]
    os.execve(celery, args, env)  # noqa: S606 -- exec: signals from the platform reach Flower directly


def demo(
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for the digest."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show this process's log lines."),
) -> None:
    """Run the whole pipeline locally on the embedded default and print a digest."""
    from app.demo import run_demo

    raise typer.Exit(run_demo(timeout=timeout, verbose=verbose))
