"""CrewAI's own error output in a worker: demoted, so each failure is logged once, by us.

On a provider failure CrewAI 1.15 reports the same error three more times, in
its own words, with the provider's error body (which echoes the end of the
API key on a 401): the provider class through the *root* logger ("OpenAI API
call failed: ..."), once per layer that catches it; its flow runtime through
``crewai.flow.runtime`` ("Error executing listener ..."); and its event bus
prints "[CrewAIEventsBus] Warning: Event pairing mismatch" to the console.
The worker already logs the run's outcome once, classified and with the key
masked (:mod:`app.execution.provider_errors`).

Guarantees after :func:`install` (once per worker process, from
:func:`app.execution.runtime.prepare`):

* a record at ERROR or above that CrewAI emits (a ``crewai`` logger, or the
  root logger called from CrewAI's files) becomes a DEBUG record: shown only
  when the worker logs at DEBUG, dropped otherwise. Warnings and below, and
  every other library's records, are untouched;
* the event bus's scope-mismatch console warnings are off.

Loggers CrewAI creates after :func:`install` (modules it imports lazily later)
are not covered; the known ones above exist by then.
"""

from __future__ import annotations

import logging
import os
import threading

_lock = threading.Lock()
_installed = False


class DemoteCrewAIErrors(logging.Filter):
    """Turns CrewAI's ERROR+ records into DEBUG ones; drops them unless DEBUG is on."""

    def __init__(self, package_dir: str) -> None:
        super().__init__()
        self.package_dir = package_dir

    def _from_crewai(self, record: logging.LogRecord) -> bool:
        if record.name == "crewai" or record.name.startswith("crewai."):
            return True
        return record.name == "root" and record.pathname.startswith(self.package_dir)

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep every record but CrewAI's errors, which are kept (as DEBUG) only at DEBUG."""
        if record.levelno < logging.ERROR or not self._from_crewai(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def install() -> None:
    """Demote CrewAI's error output in this process (idempotent; imports CrewAI)."""
    global _installed
    with _lock:
        if _installed:
            return
        import crewai
        from crewai.events import event_context

        demote = DemoteCrewAIErrors(os.path.dirname(crewai.__file__) + os.sep)
        # A logger's filters see only the records logged through it: the root logger (CrewAI's
        # providers call logging.error) and each of CrewAI's named loggers.
        logging.getLogger().addFilter(demote)
        for name in list(logging.Logger.manager.loggerDict):
            if name == "crewai" or name.startswith("crewai."):
                logging.getLogger(name).addFilter(demote)
        config = event_context._default_config
        config.mismatch_behavior = event_context.MismatchBehavior.SILENT
        config.empty_pop_behavior = event_context.MismatchBehavior.SILENT
        _installed = True
