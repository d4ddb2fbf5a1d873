"""``first-sip plugins``: validate, list, sync and create plugins."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from app.commands.output import emit_json, fail

if TYPE_CHECKING:
    from app.plugins.registry import Registry

app = typer.Typer(help="Plugin discovery, validation and sync.", no_args_is_help=True)

PluginsDir = typer.Option(None, "--plugins-dir", help="Plugins folder (default: PLUGINS_DIR).")


def _registry(plugins_dir: Path | None) -> Registry:
    from app.config import get_settings
    from app.plugins.registry import discover

    # Problems are printed by the command itself; keep the log quiet.
    logging.getLogger("app.plugins.registry").setLevel(logging.ERROR)
    return discover(plugins_dir or get_settings().plugins_dir)


@app.command("validate")
def validate(
    plugins_dir: Path | None = PluginsDir,
    build: bool = typer.Option(
        True, "--build/--no-build", help="Import each entry point and build its crew (in a subprocess)."
    ),
    timeout: float = typer.Option(None, "--timeout", help="Seconds per plugin build (default: settings)."),
) -> None:
    """Print every problem (file, key, reason); exit 1 if there is any.

    Checks manifests, schemas, default settings and requirements.txt, then
    builds every crew the way a worker would, with the offline model.
    """
    from app.config import get_settings
    from app.plugins.buildcheck import BuildCheckError, check_registry

    registry = _registry(plugins_dir)
    notes: list[str] = []
    if build and registry.plugins:
        try:
            notes = check_registry(registry, timeout=timeout or get_settings().plugin_check_timeout_seconds)
        except BuildCheckError as exc:
            fail(str(exc))
    for problem in registry.problems:
        typer.echo(str(problem))
    for note in notes:
        typer.echo(note)
    if registry.problems:
        typer.echo(f"{len(registry.problems)} problem(s); {len(registry.plugins)} plugin(s) valid", err=True)
        raise typer.Exit(1)
    if not registry.plugins:
        typer.echo("no plugins found", err=True)
        return
    built = " (crews built)" if build else ""
    typer.echo(f"ok: {len(registry.plugins)} plugin(s) valid{built}: {', '.join(sorted(registry.plugins))}")


@app.command("list")
def list_plugins(
    plugins_dir: Path | None = PluginsDir,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the plugins that loaded (and how many were skipped)."""
    registry = _registry(plugins_dir)
    rows = [
        {
            "name": p.name,
            "version": p.manifest.version,
            "capabilities": list(p.manifest.capabilities),
            "description": p.manifest.description,
            "folder": str(p.folder),
        }
        for p in sorted(registry.plugins.values(), key=lambda p: p.name)
    ]
    if as_json:
        emit_json({"plugins": rows, "problems": [str(p) for p in registry.problems]})
        return
    for row in rows:
        caps = ",".join(row["capabilities"]) or "-"
        typer.echo(f"{row['name']:<28} {row['version']:<10} {caps:<22} {row['description']}")
    if registry.problems:
        typer.echo(f"({len(registry.problems)} problem(s): run 'first-sip plugins validate')", err=True)


@app.command("sync")
def sync(
    plugins_dir: Path | None = PluginsDir,
    build: bool = typer.Option(
        False, "--build/--no-build", help="Build each crew first, as release does (in a subprocess)."
    ),
    timeout: float = typer.Option(None, "--timeout", help="Seconds per plugin build (default: settings)."),
) -> None:
    """Upsert the plugins on disk into the database; disable those that are gone or cannot run.

    With ``--build`` every crew is built first, as ``release`` does. Without
    it, a plugin whose crew did not build at the last check stays disabled
    with that reason (only a passing build check enables it again).
    """
    from app.config import get_settings
    from app.db.engine import session_scope
    from app.plugins.buildcheck import BuildCheckError, check_registry
    from app.plugins.registry import missing_roots
    from app.plugins.sync import sync_plugins

    folder = plugins_dir or get_settings().plugins_dir
    missing = missing_roots(folder)
    if missing:
        # Syncing an empty registry would disable every plugin: a typo must not do that.
        fail(f"plugins folder not found: {', '.join(missing)}; nothing synced")
    registry = _registry(folder)
    notes: list[str] = []
    if build and registry.plugins:
        try:
            notes = check_registry(registry, timeout=timeout or get_settings().plugin_check_timeout_seconds)
        except BuildCheckError as exc:
            fail(f"{exc}; nothing synced")
    for problem in registry.problems:
        typer.echo(f"skipped: {problem}", err=True)
    for note in notes:
        typer.echo(note)
    # Database errors go to the CLI's error boundary: one line naming the service, no SQL.
    with session_scope() as session:
        report = sync_plugins(session, registry)
    for line in report.lines():
        typer.echo(line)


@app.command("new")
def new(
    name: str = typer.Argument(
        ...,
        help='The plugin name: lower-case letters, digits, dashes, underscores ("news brief" -> news_brief).',
    ),
    plugins_dir: Path | None = PluginsDir,
) -> None:
    """Create a plugin with a classic CrewAI @CrewBase crew (YAML agents and tasks), ready to run."""
    from app.config import get_settings
    from app.errors import FirstSipError
    from app.plugins.scaffold import scaffold

    root = plugins_dir or Path(str(get_settings().plugins_dir).split(os.pathsep)[0])
    try:
        folder = scaffold(root, name)
    except FirstSipError as exc:
        fail(str(exc))
    typer.echo(f"created {folder}")
    typer.echo(f"  edit {folder / 'crew'}: crew.py, config/agents.yaml, config/tasks.yaml")
    typer.echo(f"  then: first-sip plugins validate --plugins-dir {root}")
