"""Cancellation announced through Redis, so the worker running a cancelled run stops its crew at once.

Cancelling writes the run row (the truth); the worker running it would only
see that at its next lease heartbeat (a third of ``LEASE_SECONDS``), and its
crew could make provider requests meanwhile. :func:`announce` publishes the
run id on one pub/sub channel (:func:`app.keys.cancellations`) after
the row is committed; every worker process listens (one daemon thread,
started with its first run) and sets ``ctx.stopped`` of a run it is running,
so the run's gates refuse its next LLM request and tool call.

Guarantees:

* :func:`watching` registers a run's stop event for the block; an announcement
  for a run this process is not running is ignored.
* Best effort on top of the heartbeat, never instead of it: an announcement
  lost (Redis down, the listener reconnecting, a cancel published before the
  listener subscribed) still stops the run at the next heartbeat, as before.
  Redis trouble never fails a cancel or a run.
* A forked pool child starts its own listener (threads do not survive a fork).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis

from app import keys
from app.redis_client import get_redis

log = logging.getLogger(__name__)

#: Seconds between reconnection tries of the listener after a Redis error.
RECONNECT_SECONDS = 1.0
#: Longest single wait for a message (shorter than the client's socket timeout).
POLL_SECONDS = 5.0

_lock = threading.Lock()
_running: dict[str, threading.Event] = {}
_listener_pid: int | None = None


def announce(run_id: str, *, client: Any = None) -> bool:
    """Tell every worker that ``run_id`` was cancelled (call after the cancel is committed).

    Returns False (and logs) if Redis could not be reached: the worker still stops at its
    next heartbeat.
    """
    try:
        (client or get_redis()).publish(keys.cancellations(), run_id)
    except redis.RedisError as exc:
        log.warning("could not announce the cancellation (the worker stops at its next heartbeat): %s", exc)
        return False
    return True


@contextmanager
def watching(run_id: str, stopped: threading.Event) -> Iterator[None]:
    """Within the block, an announced cancellation of ``run_id`` sets ``stopped``."""
    _ensure_listener()
    with _lock:
        _running[run_id] = stopped
    try:
        yield
    finally:
        with _lock:
            if _running.get(run_id) is stopped:
                del _running[run_id]


def _ensure_listener() -> None:
    global _listener_pid
    with _lock:
        if _listener_pid == os.getpid():
            return
        _listener_pid = os.getpid()
        _running.clear()  # a forked child's copy of its parent's runs is not its own
    threading.Thread(target=_listen, name="cancel-watch", daemon=True).start()


def _stop(run_id: str) -> None:
    with _lock:
        stopped = _running.get(run_id)
    if stopped is not None and not stopped.is_set():
        stopped.set()
        log.info("run %s was cancelled: its crew makes no further call", run_id)


def _listen() -> None:
    channel = keys.cancellations()
    while True:
        pubsub = None
        try:
            pubsub = get_redis().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            pubsub.subscribe(channel)
            while True:
                # A bounded wait (not listen()): the client's socket timeout never fires on a quiet
                # channel, and the client's health check pings the connection now and then.
                message = pubsub.get_message(timeout=POLL_SECONDS)
                if message is not None:
                    data = message.get("data")
                    _stop(data.decode() if isinstance(data, bytes) else str(data))
        except (redis.RedisError, OSError) as exc:
            log.debug("cancellation listener lost Redis (reconnecting): %s", exc)
        finally:
            if pubsub is not None:
                with suppress(redis.RedisError, OSError):
                    pubsub.close()
        time.sleep(RECONNECT_SECONDS)
