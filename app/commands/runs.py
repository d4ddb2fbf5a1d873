"""``first-sip configure``, ``run``, ``runs list|show|cancel``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

from app.commands.output import emit_json, guarded, is_tty
from app.commands.settings_args import parse_settings

app = typer.Typer(help="Runs: list, show, cancel.", no_args_is_help=True)

SetOption = typer.Option(None, "--set", "-s", help="key=value (value read as JSON if it parses); repeatable.")
FileOption = typer.Option(None, "--file", "-f", help="A JSON file with settings.")
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")


@guarded
def configure(
    user: str = typer.Argument(..., help="User id or email."),
    plugin: str = typer.Argument(...),
    set_: list[str] = typer.Option(
        None, "--set", "-s", help="key=value merged into the stored settings (JSON if it parses); repeatable."
    ),
    unset: list[str] = typer.Option(
        None, "--unset", help="Remove KEY from the stored settings (back to its default); repeatable."
    ),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="A JSON object of settings, merged like --set (applied before --set)."
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Store exactly --file/--set (every other key back to its default)."
    ),
    enable: bool | None = typer.Option(
        None, "--enable/--disable", help="Turn the plugin on or off for this user; absent: unchanged."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Change a user's settings for a plugin: merged, validated, then saved (errors: one line per path).

    Nothing you do not name changes: --set and --file merge into what is stored,
    --unset removes keys, --enable/--disable touch only the flag, and --replace
    is the only way to drop every key at once. A first configuration is enabled.
    """
    from app import api

    settings = parse_settings(set_, file)
    info = api.configure_plugin(
        api.find_user(user).id,
        plugin,
        settings,
        enabled=enable,
        unset=[key.strip() for key in unset or []],
        replace=replace,
    )
    if as_json:
        emit_json(info.__dict__)
        return
    state = "enabled" if info.enabled else "disabled"
    when = info.next_run_at.isoformat() if info.next_run_at else "not scheduled"
    typer.echo(f"{info.plugin} for user {info.user_id}: {state}; next run {when}")
    if info.disabled_reason:
        typer.echo(f"  disabled because: {info.disabled_reason}", err=True)


def _print_output(info: object) -> None:
    from app.api import RunInfo

    assert isinstance(info, RunInfo)
    if info.status.value != "completed":
        typer.echo(f"run {info.run_id} {info.status.value}: {info.error_message or ''}".rstrip(), err=True)
        return
    content = info.content or ""
    if is_tty():
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(content))
    else:
        typer.echo(content)


def _wait_with_spinner(run_id: object, timeout: float) -> object:
    from app import api

    if not is_tty():
        return api.wait_for_run(str(run_id), timeout)
    from rich.console import Console

    with Console().status("waiting for the run…") as spinner:
        return api.wait_for_run(
            str(run_id),
            timeout,
            on_progress=lambda info: spinner.update(
                f"run {info.run_id}: {info.status.value} (attempt {max(info.attempts, 1)})"
            ),
        )


@guarded
def run(
    user: str = typer.Argument(..., help="User id or email."),
    plugin: str = typer.Argument(...),
    set_: list[str] = SetOption,
    file: Path | None = FileOption,
    wait: bool = typer.Option(False, "--wait", "-w", help="Wait for the run and print its output."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait with --wait."),
    key: str | None = typer.Option(None, "--idempotency-key", help="The same key returns the same run."),
    as_json: bool = JsonOption,
) -> None:
    """Trigger a run now (through the stream, like a scheduled one)."""
    import math

    from app import api

    if wait and not (math.isfinite(timeout) and timeout >= 0):
        raise ValueError("--timeout must be a finite number of seconds, 0 or more")
    overrides = parse_settings(set_, file)
    info = api.trigger_run(api.find_user(user).id, plugin, overrides or None, idempotency_key=key)
    if not wait:
        if as_json:
            emit_json(info.as_dict())
        else:
            typer.echo(f"run {info.run_id} {info.status.value}")
        return
    done = _wait_with_spinner(info.run_id, timeout)
    if as_json:
        emit_json(done.as_dict())  # type: ignore[attr-defined]
    else:
        _print_output(done)
    if done.status.value != "completed":  # type: ignore[attr-defined]
        raise typer.Exit(1)


@app.command("list")
@guarded
def list_runs(
    user: str | None = typer.Option(None, "--user", "-u"),
    plugin: str | None = typer.Option(None, "--plugin", "-p"),
    status: str | None = typer.Option(None, "--status"),
    limit: int = typer.Option(20, "--limit", "-n"),
    before: datetime | None = typer.Option(
        None, "--before", help="Only runs created before this time (UTC)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Recent runs, newest first."""
    from datetime import UTC

    from app import api

    user_id = api.find_user(user).id if user else None
    if before is not None and before.tzinfo is None:
        before = before.replace(tzinfo=UTC)
    runs = api.list_runs(user_id=user_id, plugin=plugin, status=status, limit=limit, before=before)
    if as_json:
        emit_json([r.as_dict() for r in runs])
        return
    for r in runs:
        typer.echo(
            f"{r.run_id}  {r.status.value:<10} {r.plugin:<24} user={r.user_id:<6} {r.trigger:<8} "
            f"{r.created_at:%Y-%m-%d %H:%M:%S}  attempts={r.attempts}"
        )
    if not runs:
        typer.echo("no runs", err=True)


@app.command("show")
@guarded
def show(run_id: str, as_json: bool = JsonOption) -> None:
    """One run: status, timings, error or output."""
    from app import api

    info = api.get_run(run_id)
    if as_json:
        emit_json(info.as_dict())
        return
    typer.echo(f"run {info.run_id}\n  plugin {info.plugin}  user {info.user_id}  trigger {info.trigger}")
    typer.echo(f"  status {info.status.value}  attempts {info.attempts}")
    typer.echo(f"  created {info.created_at}  started {info.started_at}  completed {info.completed_at}")
    if info.error_message:
        typer.echo(f"  error: {info.error_message}")
    _print_attempts(info)
    if info.content:
        typer.echo("")
        _print_output(info)


def _print_attempts(info: object) -> None:
    from app.api import RunInfo

    assert isinstance(info, RunInfo)
    if not info.attempt_log:
        return
    total = info.total_usage
    typer.echo(
        f"  tokens {total.get('total_tokens', 0)} (prompt {total.get('prompt_tokens', 0)}, "
        f"completion {total.get('completion_tokens', 0)}, {total.get('successful_requests', 0)} requests) "
        f"over {len(info.attempt_log)} attempt(s)"
    )
    for entry in info.attempt_log:
        line = (
            f"    attempt {entry.get('attempt')}: {entry.get('outcome', '?'):<9} "
            f"{entry.get('duration_seconds', 0):>7.1f} s {entry.get('total_tokens', 0):>8} tokens"
        )
        if entry.get("error"):
            line += f"  {entry['error']}"
        typer.echo(line)


@app.command("cancel")
@guarded
def cancel(run_id: str) -> None:
    """Cancel a run that has not finished."""
    from app import api

    info = api.cancel_run(run_id)
    typer.echo(f"run {info.run_id} {info.status.value}")
