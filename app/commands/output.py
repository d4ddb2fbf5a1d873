"""Shared CLI output helpers: JSON for scripts, rich for people, typed errors to exit codes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer

from app.commands.boundary import EXIT_INVALID

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["EXIT_INVALID", "emit_json", "fail", "guarded", "is_tty"]


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, default=str, sort_keys=True))


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print ``message`` (made printable, cut to a sane length) on stderr and exit with ``code``."""
    from app.plugins.jsonsafe import clip

    typer.echo(f"error: {clip(message, 1000)}", err=True)
    raise typer.Exit(code)


def is_tty() -> bool:
    """True when stdout is a terminal (progress displays and colours allowed)."""
    return sys.stdout.isatty()


def guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Report any error ``func`` raises through the CLI's error boundary (:mod:`app.commands.boundary`).

    The root group applies the same boundary to every command; this decorator
    remains for commands invoked on their own (tests, other entry points).
    """
    from app.commands.boundary import PASS_THROUGH, report

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except PASS_THROUGH:
            raise
        except Exception as exc:
            report(exc)

    return wrapper
