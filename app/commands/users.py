"""``first-sip users``: create and show users."""

from __future__ import annotations

import typer

from app.commands.output import emit_json, guarded

app = typer.Typer(help="Users.", no_args_is_help=True)


@app.command("add")
@guarded
def add(
    email: str,
    timezone: str = typer.Option("UTC", "--timezone", "-t", help="IANA time zone, e.g. Europe/Berlin."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a user."""
    from app import api

    user = api.create_user(email, timezone)
    if as_json:
        emit_json(user.__dict__)
    else:
        typer.echo(f"user {user.id}: {user.email} ({user.timezone})")


@app.command("show")
@guarded
def show(user: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a user by id or email."""
    from app import api

    info = api.find_user(user)
    if as_json:
        emit_json(info.__dict__)
    else:
        typer.echo(f"user {info.id}: {info.email} ({info.timezone})")


@app.command("set-timezone")
@guarded
def set_timezone(user: str, timezone: str) -> None:
    """Change a user's time zone (their schedules move with it)."""
    from app import api

    info = api.set_timezone(api.find_user(user).id, timezone)
    typer.echo(f"user {info.id}: {info.email} ({info.timezone})")
