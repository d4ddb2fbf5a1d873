"""Errors the streams package raises on purpose (one small tree under :class:`FirstSipError`).

Malformed entries are not errors: :func:`app.streams.envelope.parse_entry`
returns them as values and the consumer dead-letters them.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from app.errors import FirstSipError, NotFoundError, RunStateError

#: PostgreSQL is unreachable (down, restarting, network): wait and retry, entries stay pending.
DB_ERRORS: tuple[type[Exception], ...] = (sa_exc.OperationalError, sa_exc.InterfaceError)


class StreamError(FirstSipError):
    """Base class for stream, consumer and dead-letter errors."""


class DeadLetterNotFoundError(StreamError, NotFoundError):
    """No dead letter has the given id (in the given plugin, if one was named)."""


class AmbiguousDeadLetterError(StreamError):
    """A bare dead-letter id matches entries of several plugins: name it as ``plugin/id``."""


class NotReplayableError(StreamError, RunStateError):
    """The dead letter names no run, or its run is in a state a replay must not touch."""
