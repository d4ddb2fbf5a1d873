"""The ``first-sip`` command line: a thin layer over the API and the services.

Each area lives in ``app/commands/<area>.py`` and registers its own sub-app
here. Commands import their heavy dependencies lazily so ``--help`` is fast
and light commands never import CrewAI.
"""

from __future__ import annotations

import typer

from app.commands import consumer, db, dlq, llm, ops, plugins, runs, status, users

cli = typer.Typer(
    name="first-sip",
    help="First Sip plugin runner: plugins, runs, schedules and the processes that carry them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cli.add_typer(plugins.app, name="plugins")
cli.add_typer(db.app, name="db")
cli.add_typer(users.app, name="users")
cli.add_typer(runs.app, name="runs")
cli.command("configure")(runs.configure)
cli.command("run")(runs.run)
cli.command("status")(status.status)
cli.command("release")(ops.release)
cli.command("flower")(ops.flower)
cli.command("demo")(ops.demo)
cli.command("consumer")(consumer.consumer)
cli.add_typer(dlq.app, name="dlq")
cli.add_typer(llm.app, name="llm")


def main() -> None:
    """Console-script entry point."""
    cli()
