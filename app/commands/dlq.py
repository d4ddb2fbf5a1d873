"""``first-sip dlq``: list, replay and purge dead-lettered stream entries."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import typer

from app.commands.output import emit_json, fail

app = typer.Typer(help="Dead-lettered stream entries: list, replay, purge.", no_args_is_help=True)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


#: Longest age ``--older-than`` accepts (older is "everything": use a large value within it).
MAX_AGE = timedelta(days=100 * 366)


def parse_duration(text: str) -> timedelta:
    """``90``, ``45s``, ``30m``, ``12h``, ``7d`` or ``2w`` as a timedelta; raises ValueError."""
    match = re.fullmatch(r"\s*([0-9]{1,12})\s*([smhdw]?)\s*", text.lower())
    if not match:
        shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
        raise ValueError(f"not a duration: {shown} (use e.g. 45s, 30m, 12h, 7d; at most 100 years)")
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds > MAX_AGE.total_seconds():
        raise ValueError("--older-than is at most 100 years")
    return timedelta(seconds=seconds)


@app.command("list")
def list_(
    plugin: str | None = typer.Argument(None, help="Only this plugin's dead letters."),
    limit: int = typer.Option(
        100, "--limit", min=1, max=100_000, help="At most this many per plugin, newest first."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show dead letters: reference, reason, deliveries, run and when."""
    from app.streams.dlq import list_dead_letters

    letters = list_dead_letters(plugin, limit=limit)
    if as_json:
        emit_json(
            [
                {
                    "ref": d.ref,
                    "reason": d.reason,
                    "message": d.message,
                    "delivery_count": d.delivery_count,
                    "original_id": d.original_id,
                    "run_id": d.run_id,
                    "dead_at": d.dead_at,
                    "fields": d.fields,
                }
                for d in letters
            ]
        )
        return
    for d in letters:
        when = d.dead_at.isoformat(timespec="seconds") if d.dead_at else "?"
        typer.echo(f"{d.ref:<44} {d.reason:<16} x{d.delivery_count:<3} {d.run_id or '-'} {when}  {d.message}")
    if not letters:
        typer.echo("no dead letters", err=True)


@app.command("replay")
def replay(
    ref: str | None = typer.Argument(None, help="<plugin>/<id> (or a bare id unique across plugins)."),
    all_: bool = typer.Option(False, "--all", help="Replay every dead letter (of --plugin, if given)."),
    plugin: str | None = typer.Option(None, "--plugin", help="With --all: only this plugin."),
    failed: bool = typer.Option(
        False, "--failed", help="Also replay runs that failed for another reason than the dead letter."
    ),
) -> None:
    """Give dead-lettered runs a fresh attempt: the run goes back to pending and gets a new entry.

    Completed, cancelled and running runs are never touched, nor (without
    --failed) a run that failed for another reason than its dead letter; their
    dead letters are kept. A replayed run keeps its earlier error in its history.
    """
    from app.streams import dlq

    if bool(ref) == all_:
        fail("give either a dead-letter reference or --all", code=2)
    results: list[Any]
    if all_:
        results = dlq.replay_all(plugin, include_failed=failed)
    else:
        results = [dlq.replay(ref or "", include_failed=failed)]
    for r in results:
        status = f"replayed as {r.new_entry_id}" if r.replayed else f"kept: {r.detail}"
        typer.echo(f"{r.ref}: run {r.run_id or '-'} {status}")
    if any(not r.replayed for r in results):
        raise typer.Exit(1)


@app.command("purge")
def purge(
    older_than: str = typer.Option(..., "--older-than", help="Age, e.g. 7d, 12h, 30m."),
    plugin: str | None = typer.Option(None, "--plugin", help="Only this plugin's dead letters."),
) -> None:
    """Delete dead letters older than the given age."""
    from app.streams.dlq import purge as purge_dead_letters

    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        fail(str(exc), code=2)
    result = purge_dead_letters(age, plugin)
    for name, count in sorted(result.removed.items()):
        if count:
            typer.echo(f"{name}: removed {count}")
    typer.echo(
        f"removed {result.total} dead letter(s) older than {result.cutoff.isoformat(timespec='seconds')}"
    )
