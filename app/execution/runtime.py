"""The CrewAI runtime of one worker process: environment, process-wide patches, fork safety.

Guarantees:

* :func:`configure_environment` sets CrewAI's telemetry, tracing and version
  check off (``setdefault``: an operator who sets them explicitly wins) and
  never imports CrewAI; it runs before any import of CrewAI.
* A worker's configuration comes only from its environment: importing CrewAI
  calls python-dotenv's ``load_dotenv()``, which would silently fill in
  variables from a stray ``.env`` (found from the current directory or from the
  folders above CrewAI's own files). :func:`configure_environment` sets
  ``PYTHON_DOTENV_DISABLED=1`` (always: not overridable), so no ``.env`` is
  ever read in a worker. Use the environment (or your process manager's env
  file) instead.
* :func:`prepare` imports CrewAI once per process (thread-safe, idempotent),
  removes two pieces of process-wide machinery that are wrong for a shared
  worker (see :func:`_patch_crewai`), routes CrewAI's model resolution through
  the run's LLM where a run asks for it (:mod:`app.execution.llm_injection`)
  and subscribes each run's trace to CrewAI's tool events
  (:mod:`app.execution.trace`).
* :func:`after_fork` makes a prefork pool child safe to run crews even if its
  parent had imported CrewAI: the event bus forgets the parent's threads and
  locks. It also marks the process as a pool child, so the worker knows it may
  exit to stop a crew thread it had to abandon.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

#: CrewAI switches we turn off unless the operator set them.
CREWAI_ENV_DEFAULTS = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
}

_prepare_lock = threading.Lock()
_prepared = False
_pool_child = False


def configure_environment() -> None:
    """Turn CrewAI telemetry, tracing and the version check off unless configured; never read ``.env``."""
    for key, value in CREWAI_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # Forced, not a default: a .env next to the worker must never become its configuration.
    os.environ["PYTHON_DOTENV_DISABLED"] = "1"


def prepare() -> None:
    """Import CrewAI and apply this project's process-wide settings (once per process)."""
    global _prepared
    if _prepared:
        return
    with _prepare_lock:
        if _prepared:
            return
        configure_environment()
        import crewai  # noqa: F401  (the expensive import happens here, on purpose)

        _patch_crewai()
        from app.execution import crewai_hooks, crewai_logs, inner_retries, llm_injection, trace
        from app.flow import worker as flow

        llm_injection.install()
        trace.install()
        crewai_hooks.install()
        inner_retries.install()
        crewai_logs.install()
        flow.install()
        _prepared = True


class _DiscardTaskOutputs:
    """Stands in for CrewAI's TaskOutputStorageHandler: stores nothing."""

    def update(self, task_index: int, log: dict[str, Any]) -> None:
        """Discard one task's log."""

    def add(self, *args: Any, **kwargs: Any) -> None:
        """Discard one task's output."""

    def reset(self) -> None:
        """Nothing to clear."""

    def load(self) -> list[dict[str, Any]]:
        """Nothing was stored."""
        return []


_named_locks: dict[str, threading.Lock] = {}
_named_locks_guard = threading.Lock()


@contextmanager
def _process_lock(name: str, *, timeout: float = 120) -> Iterator[None]:
    with _named_locks_guard:
        lock = _named_locks.setdefault(name, threading.Lock())
    if not lock.acquire(timeout=timeout):
        raise TimeoutError(f"could not acquire CrewAI lock {name!r} within {timeout} s")
    try:
        yield
    finally:
        lock.release()


def _patch_crewai() -> None:
    """Remove CrewAI machinery meant for a single interactive user.

    1. Every ``Crew`` writes each task's output *and its inputs* (a user's
       settings and articles) to one SQLite file in the home directory, for
       ``crewai replay``. In a worker that is user data left on disk, a file
       every concurrent crew contends for, and a CREATE TABLE per crew. The
       storage is replaced by one that keeps nothing (run output lives in
       PostgreSQL).
    2. CrewAI's named locks go through ``REDIS_URL`` when it is set: keys
       outside our prefix, and one lock shared by every worker on every host
       with the same home path. Our locks are per process.
    3. CrewAI's console panels (an "LLM Error" box on stdout for every failed
       call, until the first Crew switches them off) are off: the worker logs
       each outcome once, in its own format.
    4. Every ``BaseLLM.call`` runs inside CrewAI's own rate-limit retry loop
       (3 tries, sleeping the provider's Retry-After): a 429 would cost three
       requests per call and keep the crew asleep past our time limit. The
       framework's attempts are the retry policy, so the loop makes one try.

    Both are private to CrewAI 1.15.x (pinned exactly in pyproject); a changed
    internal fails loudly here rather than silently writing files.
    """
    from crewai import Crew
    from crewai_core import lock_store

    private = Crew.__private_attributes__.get("_task_output_handler")
    if private is None:
        raise RuntimeError("CrewAI changed: Crew._task_output_handler is gone; review app/execution/runtime")
    private.default_factory = _DiscardTaskOutputs
    lock_store.set_lock_backend(_process_lock)
    from crewai.events.event_listener import event_listener

    event_listener.formatter.verbose = False
    from crewai.llms import retry

    if not hasattr(retry, "_LLM_RATE_LIMIT_MAX_ATTEMPTS"):
        raise RuntimeError("CrewAI changed: no rate-limit retry setting; review app/execution/runtime")
    retry._LLM_RATE_LIMIT_MAX_ATTEMPTS = 1  # type: ignore[misc]


def after_fork() -> None:
    """Reset CrewAI's event bus in a freshly forked pool child and mark it as one.

    The bus is a singleton that lazily starts a thread pool and an event loop
    thread; a fork copies the objects but not the threads, and may copy a lock
    in the held state. Forgetting them makes the next emit start fresh ones.
    """
    global _pool_child
    _pool_child = True
    import sys

    module = sys.modules.get("crewai.events.event_bus")
    if module is None:
        return  # the parent never imported CrewAI: nothing to reset
    bus = module.crewai_event_bus
    from crewai.utilities.rw_lock import RWLock

    type(bus)._instance_lock = threading.RLock()
    bus._rwlock = RWLock()
    bus._futures_lock = threading.Lock()
    bus._pending_futures = set()
    bus._executor_initialized = False
    bus._has_pending_events = False
    bus._shutting_down = False


def in_pool_child() -> bool:
    """True in a prefork pool child (where exiting is how an abandoned crew thread is stopped)."""
    return _pool_child
