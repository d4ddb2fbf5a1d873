"""Shared CLI output helpers: JSON for scripts, rich for people, typed errors to exit codes."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")

#: Exit code for input the user can fix (invalid settings, bad arguments).
EXIT_INVALID = 2


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


def guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Turn the project's typed errors into one clear line on stderr and an exit code.

    Settings errors list every ``path: message`` and exit 2; other known
    errors exit 1; unknown exceptions propagate (they are bugs).
    """
    from app.errors import ConfigurationError, FirstSipError, SettingsValidationError

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except SettingsValidationError as exc:
            typer.echo(f"error: invalid settings for plugin {exc.plugin!r}:", err=True)
            for issue in exc.errors:
                typer.echo(f"  {issue}", err=True)
            raise typer.Exit(EXIT_INVALID) from None
        except ConfigurationError as exc:
            fail(f"configuration: {exc}", code=EXIT_INVALID)
        except ValueError as exc:
            fail(str(exc), code=EXIT_INVALID)
        except FirstSipError as exc:
            fail(str(exc))

    return wrapper
