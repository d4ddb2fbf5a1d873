"""Structured logging: bound context (run_id, plugin, user_id), JSON off a terminal.

Guarantees: :func:`configure_logging` is idempotent and owns only the root
logger's handler; every record carries the fields bound with :func:`bind` in
the current context; known secret values (settings secrets, database and Redis
passwords, the values of ``*_KEY``/``*_TOKEN``/``*_SECRET``/``*_PASSWORD``
variables such as ``OPENAI_API_KEY``) are replaced by ``***`` before a record is
written, whichever logger wrote it: the record factory redacts every record's
message and traceback when it is made, so a third-party logger with a handler of
its own (not ours) writes them masked too, and our formatters redact each field
before JSON escaping could hide a secret (a quote, a backslash, a non-ASCII letter).

Short secrets: a value of :data:`MIN_ANYWHERE` characters or more is redacted
wherever it appears. A shorter one (``redis://:abc@host``) is redacted too, but
only where it stands as a value: right after ``=`` or ``:`` (URL passwords,
``key=value``, ``key: value``, JSON ``"key": "value"``) and up to a delimiter,
so a three-letter password never turns every ``abc`` in a log into ``***``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)
# ``_KEY`` covers ``*_API_KEY`` and ``AWS_SECRET_ACCESS_KEY``; a harmless value masked is the lesser harm.
_SECRET_ENV_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_CREDENTIALS")
#: Secrets at least this long are redacted anywhere; shorter ones only in value position.
MIN_ANYWHERE = 6
_configured = False


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every record logged in this context (thread/task local)."""
    current = _context.get() or {}
    token = _context.set({**current, **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bound() -> dict[str, Any]:
    """The fields bound in the current context."""
    return dict(_context.get() or {})


def secret_values() -> list[str]:
    """Values that must never be written to a log, a run row or an error message."""
    from app.config import get_settings

    values = []
    try:
        settings = get_settings()
    except Exception:  # configuration errors are reported elsewhere
        settings = None
    if settings is not None:
        values.append(settings.secret_key.get_secret_value())
        if settings.flower_basic_auth:
            auth = settings.flower_basic_auth.get_secret_value()
            values.extend([auth, auth.partition(":")[2]])
        for url in (settings.database_url, settings.redis_url):
            password = urlsplit(url).password
            if password:
                values.append(password)
    values.extend(v for k, v in os.environ.items() if k.endswith(_SECRET_ENV_SUFFIXES))
    return sorted({v for v in values if v}, key=len, reverse=True)


def _in_value_position(secret: str) -> re.Pattern[str]:
    # After "=" or ":" (optionally a space and a quote), and followed by a delimiter or the end.
    return re.compile(r"(?<=[=:])(\s?[\"']?)" + re.escape(secret) + r"(?=[\"'\s,;&@/)}\]]|$)")


def redact(text: str, secrets: list[str] | None = None) -> str:
    """``text`` with every secret value replaced by ``***`` (short ones in value position only)."""
    for value in secret_values() if secrets is None else secrets:
        if len(value) >= MIN_ANYWHERE:
            text = text.replace(value, "***")
        elif value in text:
            text = _in_value_position(value).sub(lambda m: m.group(1) + "***", text)
    return text


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in bound().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and not k.startswith("_")}


def _masked(value: Any, secrets: list[str]) -> Any:
    """``value`` (a log record's fields) with every string redacted; other objects as masked text."""
    if isinstance(value, str):
        return redact(value, secrets)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {redact(str(k), secrets): _masked(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, secrets) for v in value]
    return redact(str(value), secrets)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, bound fields, exception."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info or record.exc_text:
            doc["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        # Redacted before json.dumps escapes the text (an escaped secret would no longer match).
        return json.dumps(_masked(doc, self._secrets))


class ConsoleFormatter(logging.Formatter):
    """Readable on a terminal: ``time level logger: message key=value ...``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        return redact(f"{line} {extras}" if extras else line, self._secrets)


#: What the record factory masks: the secrets of the last :func:`configure_logging`.
_factory_secrets: list[str] = []


def _redacting_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        secrets = _factory_secrets
        if not secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it for the handler to report, as logging does
            return record
        record.msg, record.args = redact(message, secrets), None
        if record.exc_info:
            # Formatters print exc_text when set: the traceback text, masked once here.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    return factory


def configure_logging(level: str | None = None, *, json_output: bool | None = None) -> None:
    """Install the project's handler on the root logger (once per process)."""
    global _configured
    level = level or os.environ.get("LOG_LEVEL", "INFO")
    root = logging.getLogger()
    root.setLevel(level.upper())
    if _configured:
        return
    if json_output is None:
        json_output = not sys.stderr.isatty()
    secrets = secret_values()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(secrets) if json_output else ConsoleFormatter(secrets))
    handler.addFilter(_ContextFilter())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # alembic.runtime.plugins: one INFO line per autogenerate plugin on every migration run.
    for noisy in ("httpx", "LiteLLM", "urllib3", "asyncio", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _factory_secrets[:] = secrets
    make = logging.getLogRecordFactory()
    if not getattr(make, "redacts", False):
        logging.setLogRecordFactory(_redacting_factory(make))
    _configured = True
