"""Helpers the streams tests share: rows, broker inspection, idle ageing, consumers in and out of process.

Rows are inserted directly through the models. What the consumer dispatched
is read back from the Celery broker itself: the Redis list of the ``runs``
queue, each kombu message decoded to the task's name, args and kwargs.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select

from app import keys
from app.celery_app import RUNS_QUEUE
from app.config import Settings, get_settings
from app.db.engine import session_scope
from app.db.models import PluginRow, PluginRun, RunStatus, User
from app.redis_client import as_text, get_redis
from app.streams.consumer import StreamConsumer
from app.streams.dispatch import Dispatcher
from app.streams.producer import RunRef, publish_runs
from tests.conftest import shut_down_after_test, unique_email
from tests.processes import ManagedProcess

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def add_plugin(name: str, *, enabled: bool = True) -> int:
    """Insert a plugin row; returns its id."""
    with session_scope() as session:
        row = PluginRow(name=name, version="1.0.0", enabled=enabled)
        session.add(row)
        session.flush()
        return row.id


def add_runs(plugin: str, n: int, *, status: RunStatus = RunStatus.PENDING, **values: Any) -> list[uuid.UUID]:
    """Insert ``n`` runs of ``plugin`` (created if missing) for one new user."""
    with session_scope() as session:
        plugin_id = session.scalar(select(PluginRow.id).where(PluginRow.name == plugin))
        if plugin_id is None:
            row = PluginRow(name=plugin, version="1.0.0")
            session.add(row)
            session.flush()
            plugin_id = row.id
        user = User(email=unique_email())
        session.add(user)
        session.flush()
        rows = [PluginRun(user_id=user.id, plugin_id=plugin_id, status=status, **values) for _ in range(n)]
        session.add_all(rows)
        session.flush()
        return [r.run_id for r in rows]


def publish(plugin: str, n: int, *, now: datetime = T0, client: redis.Redis | None = None) -> list[uuid.UUID]:
    """Insert ``n`` pending runs and publish them through the producer (committed)."""
    run_ids = add_runs(plugin, n)
    with session_scope() as session:
        user_ids = dict(session.execute(select(PluginRun.run_id, PluginRun.user_id)).tuples().all())
        publish_runs(session, [RunRef(r, plugin, user_ids[r]) for r in run_ids], now=now, client=client)
    return run_ids


def run_row(run_id: uuid.UUID) -> PluginRun:
    """The run's current row."""
    with session_scope() as session:
        row = session.scalar(select(PluginRun).where(PluginRun.run_id == run_id))
        assert row is not None
        return row


def set_run(run_id: uuid.UUID, **values: Any) -> None:
    """Overwrite columns of a run (test setup only: real code goes through app.db.runs)."""
    with session_scope() as session:
        row = session.scalar(select(PluginRun).where(PluginRun.run_id == run_id))
        assert row is not None
        for key, value in values.items():
            setattr(row, key, value)


@dataclass(frozen=True)
class Task:
    """One task message found in the broker's ``runs`` queue."""

    name: str
    run_id: str
    kwargs: dict[str, Any]


def broker_tasks(client: redis.Redis) -> list[Task]:
    """Every task in the ``runs`` queue, oldest first (kombu LPUSHes, workers BRPOP)."""
    raw = client.lrange(keys.celery_prefix() + RUNS_QUEUE, 0, -1)
    tasks = []
    for message in reversed(raw):  # type: ignore[arg-type]
        doc = json.loads(message)
        args, kwargs, _embed = json.loads(base64.b64decode(doc["body"]))
        tasks.append(Task(doc["headers"]["task"], args[0], kwargs))
    return tasks


def clear_broker(client: redis.Redis) -> None:
    """Empty the ``runs`` queue."""
    client.delete(keys.celery_prefix() + RUNS_QUEUE)


def pending(client: redis.Redis, plugin: str) -> dict[str, tuple[str, int]]:
    """Pending entries of the group: id -> (consumer, delivery count)."""
    rows = client.xpending_range(keys.stream(plugin), keys.GROUP, "-", "+", 10_000)
    return {as_text(r["message_id"]): (as_text(r["consumer"]), int(r["times_delivered"])) for r in rows}


def age(client: redis.Redis, plugin: str, *, ms: int = 10 * 60 * 1000) -> None:
    """Make every pending entry look idle for ``ms`` (same owner, same delivery count).

    Stands in for waiting out the visibility timeout in in-process tests:
    XCLAIM with IDLE and RETRYCOUNT changes nothing else.
    """
    for entry_id, (owner, count) in pending(client, plugin).items():
        client.xclaim(
            keys.stream(plugin), keys.GROUP, owner, 0, [entry_id], idle=ms, retrycount=count, justid=True
        )


def dead_letters(plugin: str) -> list[dict[str, str]]:
    """The plugin's dead letters as field dicts (binary-safe: bad bytes replaced), oldest first."""
    # A client of its own that keeps bytes: a dead letter may hold the garbage that killed it.
    reply: Any = get_redis(decode_responses=False).xrange(keys.dead_letters(plugin))
    return [{as_text(k): as_text(v) for k, v in fields.items()} for _id, fields in reply]


def settings(**overrides: Any) -> Settings:
    """The test settings with ``overrides``."""
    return get_settings().model_copy(update=overrides)


def make_consumer(
    name: str = "test-consumer", *, dispatcher: Dispatcher | None = None, **overrides: Any
) -> StreamConsumer:
    """An in-process consumer (call ``initialize`` and ``loop_once(now, block=False)``).

    Shut down after the test (its broker connection closed) by the conftest.
    """
    consumer = StreamConsumer(name=name, settings=settings(**overrides), dispatcher=dispatcher)
    shut_down_after_test(consumer)
    return consumer


def later(now: datetime, seconds: float = 3600) -> datetime:
    """``now`` plus enough time for every periodic phase to be due again."""
    return now + timedelta(seconds=seconds)


# ---- the consumer as a real process ------------------------------------------------------------

#: Short timeouts so a test sees reclaims, heartbeats and refreshes within seconds.
FAST = {
    "VISIBILITY_TIMEOUT_SECONDS": "2",
    "RECLAIM_INTERVAL_SECONDS": "0.3",
    "STREAM_BLOCK_MS": "200",
    "CONSUMER_HEARTBEAT_SECONDS": "0.5",
    "PLUGIN_REFRESH_SECONDS": "0.5",
    "MAX_DELIVERIES": "100",
}
#: A limit for a hung test, never a performance threshold.
WAIT = 60.0


def wait_until(condition: Callable[[], object], what: str, *, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_consumer(label: str = "consumer", **env: str) -> tuple[ManagedProcess, str]:
    """A running consumer process and its consumer name."""
    process = ManagedProcess(label, [sys.executable, "-m", "app", "consumer"], env={**FAST, **env})
    process.start(ready=r"consumer \S+ ready", timeout=WAIT)
    match = re.search(r"consumer (\S+) ready", process.output)
    assert match is not None
    return process, match.group(1)


@contextmanager
def running(label: str = "consumer", **env: str) -> Iterator[tuple[ManagedProcess, str]]:
    """A consumer process (``FAST`` settings, ``env`` on top) for the block; killed at the end."""
    process, name = start_consumer(label, **env)
    try:
        yield process, name
    finally:
        process.kill()
