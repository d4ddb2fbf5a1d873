"""``first-sip db``: migrations."""

from __future__ import annotations

import typer

app = typer.Typer(help="Database migrations.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from alembic.util import CommandError

    from app.db import migrate

    try:
        migrate.upgrade(revision=revision)
    except CommandError as exc:  # an unknown or unreachable revision: the user's input
        raise ValueError(f"cannot upgrade to that revision: {exc}") from None
    typer.echo(f"database at {revision}")
