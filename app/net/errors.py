"""Errors the fetcher raises (one small tree under :class:`FirstSipError`).

Every error carries a ``reason`` that is safe to show a user (it goes into a
run's report and a digest): it never says whether an internal address has
something listening, and never repeats server-chosen text. Until a server has
answered, every failure reads :data:`UNREACHABLE`: an address the policy
refuses, a closed port, a refused, reset or lost connection, and a deadline
passed while connecting or waiting for the answer are indistinguishable.
"""

from __future__ import annotations

from app.errors import FirstSipError, TransientError

#: The one reason given for every failure before a server answered (refused, timed out, reset, lost).
UNREACHABLE = "unreachable"
#: The reason given for every address the policy refuses: the same words, so a report cannot
#: tell a refused address from a closed port (the class, FetchRefused, says which to code).
ADDRESS_NOT_ALLOWED = UNREACHABLE


class FetchError(FirstSipError):
    """A URL could not be fetched; ``reason`` says why, in words safe to show the user."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class FetchRefused(FetchError):
    """The URL, or an address or redirect it leads to, is not allowed: no connection was made to it."""


class FetchFailed(FetchError):
    """The server answered with an error or broke a limit (size, redirects, encoding)."""

    def __init__(self, reason: str, *, status_code: int | None = None) -> None:
        super().__init__(reason)
        #: The HTTP status for an error response (the run's retry policy reads it: 429, 5xx retry).
        self.status_code = status_code


class FetchUnreachable(FetchFailed, TransientError):
    """An allowed address could not be connected to (refused, timed out, reset, name not found)."""


class FetchTimedOut(FetchFailed, TransientError):
    """The fetch passed its total deadline; the connection was closed."""


class FetchStopped(FetchFailed):
    """The run was given up on (``ctx.stopped``) while fetching; the connection was closed."""
