"""Shared CLI output helpers: JSON for scripts, rich for people, errors to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str, sort_keys=True))


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def is_tty() -> bool:
    """True when stdout is a terminal (progress displays and colours allowed)."""
    return sys.stdout.isatty()
