"""The consumer process: signals, backoff, heartbeat and the one-line summary around the loop.

Guarantees:

* SIGTERM or SIGINT stops reading: the iteration in progress finishes (what it
  read is dispatched), the broker connection is returned, the heartbeat
  released, and the process exits 0. A blocking read lasts at most
  ``stream_block_ms``; if anything still holds the process
  :data:`SHUTDOWN_GRACE_SECONDS` after the signal (a black-holed socket, say),
  or a second signal arrives, it exits at once with status 1. Either way,
  entries it did not finish stay pending and the group reclaims them.
* Redis, broker and PostgreSQL outages never end the process: it logs what it
  is waiting for, retries with capped exponential backoff (with jitter), and
  logs again when the service is back.
* The heartbeat is honest (:class:`HealthReporter`): it is refreshed after
  iterations that worked, and every failed iteration is recorded in it, so
  ``consumer --check`` fails once the loop has failed a few times in a row
  even though the process is alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from urllib.parse import urlsplit

import redis
from kombu.exceptions import KombuError

from app.backoff import Backoff
from app.config import get_settings
from app.streams import heartbeat
from app.streams.consumer import StreamConsumer
from app.streams.errors import DB_ERRORS

log = logging.getLogger(__name__)

#: Redis or the Celery broker unreachable: back off and retry, entries stay pending.
CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    KombuError,
    ConnectionError,
)
#: The signal-to-exit budget is 10 s; leave a margin for interpreter teardown.
SHUTDOWN_GRACE_SECONDS = 8.0


def _force_exit() -> None:
    log.error(
        "consumer did not stop within %.0fs; exiting now (its pending entries are reclaimed by the group)",
        SHUTDOWN_GRACE_SECONDS,
    )
    logging.shutdown()
    os._exit(1)


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM/SIGINT: set ``stop`` and arm the grace timer; a second signal exits at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            _force_exit()
        log.info("received %s: finishing the current iteration, then stopping", signal.Signals(signum).name)
        stop.set()
        timer = threading.Timer(SHUTDOWN_GRACE_SECONDS, _force_exit)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or ''}".rstrip(":") or url.split("://")[0]


def _waiting(kind: str, exc: BaseException, delay: float) -> None:
    settings = get_settings()
    if kind == "redis":
        what = f"Redis at {_where(settings.redis_url)}"
        hint = "check REDIS_URL and that Redis is up"
    else:
        what = f"PostgreSQL at {_where(settings.database_url)}"
        hint = "check DATABASE_URL and that PostgreSQL is up"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log.warning(
        "waiting for %s (%s): nothing is lost, entries stay pending; retrying in %.1fs (%s)",
        what,
        first,
        delay,
        hint,
    )


def _attempt(action: str, fn: Callable[[], None], backoff: Backoff, stop: threading.Event) -> bool:
    """Run ``fn()``; on failure log what we wait for and sleep. True if it succeeded."""
    try:
        fn()
    except CONNECTION_ERRORS as exc:
        delay = backoff.next()
        _waiting("redis", exc, delay)
    except DB_ERRORS as exc:
        delay = backoff.next()
        _waiting("postgres", exc, delay)
    except redis.ResponseError as exc:
        delay = backoff.next()
        log.error(
            "Redis refused a command during %s (%s); retrying in %.1fs. Entries stay pending. A key of "
            "ours may have been overwritten (e.g. with SET): check the key named in the error.",
            action,
            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            delay,
        )
    except Exception:
        delay = backoff.next()
        log.exception(
            "unexpected error during %s; retrying in %.1fs. Entries stay pending. This is a bug: "
            "report it with this traceback.",
            action,
            delay,
        )
    else:
        if backoff.failures:
            log.info("%s works again: resuming", action)
        backoff.reset()
        return True
    stop.wait(delay)
    return False


class HealthReporter:
    """Writes the heartbeat after each iteration: refreshed when it worked, failures counted when not."""

    def __init__(self, name: str, *, every: float) -> None:
        self.name, self.every = name, every
        self.failures = 0
        self.failing_since: datetime | None = None
        self._last = -1e9

    def ok(self) -> None:
        """An iteration worked: refresh the heartbeat (at most every ``every`` seconds while healthy)."""
        if self.failures or time.monotonic() - self._last >= self.every:
            self.failures, self.failing_since = 0, None
            heartbeat.beat(self.name)
            self._last = time.monotonic()

    def failed(self) -> None:
        """An iteration raised: count it in the heartbeat (best effort: Redis may be what failed)."""
        self.failures += 1
        self.failing_since = self.failing_since or datetime.now(UTC)
        # Best effort: if Redis is what failed, --check cannot read it either, and the key expires.
        with contextlib.suppress(redis.RedisError):
            heartbeat.beat(self.name, failures=self.failures, failing_since=self.failing_since)


def run(
    *,
    consumer: StreamConsumer | None = None,
    stop: threading.Event | None = None,
    install_signals: bool = True,
) -> int:
    """Run a consumer until ``stop`` is set (or SIGTERM/SIGINT); returns the exit status."""
    settings = get_settings()
    stop = stop or threading.Event()
    if install_signals:
        install_signal_handlers(stop)
    consumer = consumer or StreamConsumer()
    started = time.monotonic()
    backoff = Backoff()
    ready = False
    while not ready and not stop.is_set():
        ready = _attempt("start-up", lambda: consumer.initialize(datetime.now(UTC)), backoff, stop)
    if not ready:
        log.info("consumer %s stopped before start-up completed", consumer.name)
        return 0
    health = HealthReporter(consumer.name, every=settings.consumer_heartbeat_seconds)
    _attempt("the first heartbeat", health.ok, backoff, stop)
    log.info("consumer %s ready: reading %s", consumer.name, ", ".join(consumer.plugins) or "no streams yet")

    def iteration() -> None:
        try:
            stats = consumer.loop_once(datetime.now(UTC))
        except Exception:
            health.failed()
            raise
        health.ok()
        if not stats.read and (not consumer.plugins or settings.stream_block_ms <= 0):
            # Nothing blocked in the read: idle here instead of spinning.
            stop.wait(min(1.0, settings.reclaim_interval_seconds))

    while not stop.is_set():
        _attempt("the consumer loop", iteration, backoff, stop)
    consumer.shutdown()
    try:
        heartbeat.release(consumer.name)
    except CONNECTION_ERRORS:
        log.info("could not delete the heartbeat key (Redis unreachable); it expires by itself")
    log.info(
        "consumer %s stopped after %.1fs: %s",
        consumer.name,
        time.monotonic() - started,
        consumer.totals.summary(),
    )
    return 0
