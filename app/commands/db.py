"""``first-sip db``: migrations."""

from __future__ import annotations

import typer

app = typer.Typer(help="Database migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from app.db import migrate

    migrate.upgrade(revision=revision)
    typer.echo(f"database at {revision}")
