"""The project's error tree. Every error a caller is expected to handle is here."""

from __future__ import annotations

from dataclasses import dataclass


class FirstSipError(Exception):
    """Base class for every error this project raises on purpose."""


class ConfigurationError(FirstSipError):
    """The environment's settings are missing or invalid."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file: where it is and why it is wrong."""

    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        key = f" [{self.key}]" if self.key else ""
        return f"{where}{key}: {self.message}"


class PluginError(FirstSipError):
    """A plugin folder is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


@dataclass(frozen=True)
class SettingsIssue:
    """One settings validation error: a JSON pointer into the settings and a message."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '/'}: {self.message}"


class SettingsValidationError(FirstSipError):
    """Settings do not validate against the plugin's schema; ``errors`` has all of them."""

    def __init__(self, plugin: str, errors: list[SettingsIssue]) -> None:
        self.plugin = plugin
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"invalid settings for plugin {plugin!r}:\n{lines}")


class NotFoundError(FirstSipError):
    """A user, plugin, run or dead letter named by the caller does not exist."""


class PluginDisabledError(FirstSipError):
    """The plugin exists but is disabled (its folder is gone or an operator disabled it)."""


class RunStateError(FirstSipError):
    """The run is not in a state that allows the requested operation."""


class TransientError(FirstSipError):
    """A failure worth retrying later (provider connection error, rate limit, timeout)."""


class PermanentError(FirstSipError):
    """A failure that a retry would only repeat (plugin bug, invalid input or output)."""


class CallRefused(FirstSipError):
    """A per-run gate refused an LLM call, provider request or tool call before it was made."""


class RunStopped(CallRefused):
    """The framework gave up on the run (time limit, cancellation): its crew may call nothing more."""


class RunFailed(FirstSipError):
    """Raised by ``execute_run`` when its run failed, so Celery and Flower show FAILURE with the error."""


class RetryScheduled(FirstSipError):
    """Carried by the Celery ``Retry`` of a run whose next attempt is scheduled (Flower shows RETRY)."""
