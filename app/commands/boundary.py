"""The command line's one error boundary: every failure becomes one clear line and an exit code.

Guarantees, for every ``first-sip`` command (the root group's
:meth:`GuardedGroup.invoke` wraps them all):

* No traceback ever reaches the user. Exit codes: 0 success, 1 a failure
  (service down, not found, wrong state, unexpected error), 2 input the user
  can fix (bad arguments, invalid settings, bad configuration).
* PostgreSQL or Redis not answering is reported as that service, at its
  ``host:port`` (never a password), with the variable to check.
* Messages never contain the SQL of a failed statement, never a known secret
  value (:func:`app.logs.redact`), never an unprintable character, and never
  more than a few hundred characters of any value the user gave.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

log = logging.getLogger(__name__)

#: Exit code for input the user can fix (invalid settings, bad arguments).
EXIT_INVALID = 2
#: Typer's own ways of ending a command (exit codes, usage errors): never rewritten.
_PASS_THROUGH = (typer.Exit, typer.Abort, typer.TyperException)
PASS_THROUGH = _PASS_THROUGH
#: At most this many settings errors are listed (the rest are counted).
MAX_ISSUES = 20


def where(url: str) -> str:
    """``host:port`` of a service URL: never its user or password."""
    from app.config import address

    return address(url)


def _safe(text: str, limit: int = 300) -> str:
    from app.logs import redact
    from app.plugins.jsonsafe import clip

    first = text.strip().splitlines()[0] if text.strip() else ""
    return clip(redact(first), limit)


# While set (by :func:`explain`), report's lines are collected here instead of printed.
_collected: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("collected", default=None)


def _line(text: str) -> None:
    collected = _collected.get()
    if collected is None:
        typer.echo(text, err=True)
    else:
        collected.append(text)


def _echo(message: str) -> None:
    _line(f"error: {message}")


def explain(exc: BaseException) -> tuple[str, int]:
    """What :func:`report` would say about ``exc``, as one line (no ``error:`` prefix), and its
    exit code; prints nothing. For commands that print their errors as JSON."""
    lines: list[str] = []
    code = 1
    token = _collected.set(lines)
    try:
        report(exc)
    except typer.Exit as done:
        code = done.exit_code
    finally:
        _collected.reset(token)
    return " ".join(line.strip() for line in lines).removeprefix("error: "), code


def _service(exc: BaseException) -> str | None:
    """The one-line description of an unreachable service, if ``exc`` is one."""
    import redis
    from kombu.exceptions import OperationalError as KombuOperationalError
    from sqlalchemy import exc as sa_exc

    from app.config import get_settings

    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        url = get_settings().database_url
        if url.startswith("sqlite"):
            return f"the SQLite database {where(url)} cannot be used ({_reason(exc)}); check DATABASE_URL"
        reason = _reason(exc)
        return f"PostgreSQL at {where(url)} does not answer ({reason}); check DATABASE_URL and that it is up"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, KombuOperationalError)):
        url = get_settings().redis_url
        return f"Redis at {where(url)} does not answer ({_reason(exc)}); check REDIS_URL and that it is up"
    return None


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).lower()
    for needle, reason in (
        ("refused", "connection refused"),
        ("timeout", "timed out"),
        ("timed out", "timed out"),
        ("too many clients", "too many connections"),
        ("closed", "connection closed"),
        ("terminat", "connection closed"),
        ("authentication", "authentication failed"),
        ("does not exist", "database does not exist"),
        ("name or service not known", "unknown host"),
        ("loading", "still loading its data"),
    ):
        if needle in text:
            return reason
    return "connection failed"


def report(exc: BaseException) -> NoReturn:
    """Print ``exc`` as the command's error (see the module docstring) and exit."""
    from sqlalchemy import exc as sa_exc

    from app.errors import ConfigurationError, SettingsValidationError

    if isinstance(exc, SettingsValidationError):
        _echo(f"invalid settings for plugin {_safe(exc.plugin, 100)!r}:")
        for issue in exc.errors[:MAX_ISSUES]:
            _line(f"  {_safe(str(issue))}")
        if len(exc.errors) > MAX_ISSUES:
            _line(f"  ... and {len(exc.errors) - MAX_ISSUES} more")
        raise typer.Exit(EXIT_INVALID)
    if isinstance(exc, ConfigurationError):
        _echo(f"configuration: {_safe(str(exc), 1000)}")
        raise typer.Exit(EXIT_INVALID)
    try:
        service = _service(exc)
    except ConfigurationError as config_exc:
        _echo(f"configuration: {_safe(str(config_exc), 1000)}")
        raise typer.Exit(EXIT_INVALID) from None
    if service is not None:
        _echo(service)
        raise typer.Exit(1)
    if isinstance(exc, sa_exc.DBAPIError):
        # Never str(exc): SQLAlchemy's text carries the statement and its parameters.
        orig: Any = exc.orig
        _echo(f"the database refused the request: {type(orig).__name__}: {_safe(str(orig), 200)}")
        raise typer.Exit(1)
    if isinstance(exc, sa_exc.SQLAlchemyError):
        _echo(f"database error: {type(exc).__name__}")
        raise typer.Exit(1)
    _report_other(exc)


def _report_other(exc: BaseException) -> NoReturn:
    import redis

    from app.errors import FirstSipError

    if isinstance(exc, redis.ResponseError):
        _echo(f"Redis refused a command: {_safe(str(exc), 200)}")
        raise typer.Exit(1)
    if isinstance(exc, RecursionError):
        _echo("the input is nested too deeply")
        raise typer.Exit(EXIT_INVALID)
    if isinstance(exc, ValueError):
        _echo(_safe(str(exc)))
        raise typer.Exit(EXIT_INVALID)
    if isinstance(exc, FirstSipError):
        _echo(_safe(str(exc), 1000))
        raise typer.Exit(1)
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        _echo(_safe(f"{name}{exc.strerror or exc}"))
        raise typer.Exit(1)
    log.debug("unexpected error in a command", exc_info=exc)
    _echo(f"unexpected {type(exc).__name__}: {_safe(str(exc), 200)} (this is a bug: please report it)")
    raise typer.Exit(1)


class GuardedGroup(TyperGroup):
    """The root command group: any exception a subcommand raises goes through :func:`report`."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            report(exc)
