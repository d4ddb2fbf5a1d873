"""Shared helpers for the streams tests (no tests here): rows, broker inspection, idle ageing.

Rows are inserted directly through the models. What the consumer dispatched
is read back from the Celery broker itself: the Redis list of the ``runs``
queue, each kombu message decoded to the task's name, args and kwargs.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select

from app.celery_app import RUNS_QUEUE
from app.config import Settings, get_settings
from app.db.engine import session_scope
from app.db.models import PluginRow, PluginRun, RunStatus, User
from app.redis_client import get_redis
from app.streams import keys
from app.streams.consumer import StreamConsumer
from app.streams.dispatch import Dispatcher
from app.streams.producer import RunRef, publish_runs
from tests.conftest import unique_email

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
    return {_s(r["message_id"]): (_s(r["consumer"]), int(r["times_delivered"])) for r in rows}


def age(client: redis.Redis, plugin: str, *, ms: int = 10 * 60 * 1000) -> None:
    """Make every pending entry look idle for ``ms`` (same owner, same delivery count).

    Stands in for waiting out the visibility timeout in in-process tests:
    XCLAIM with IDLE and RETRYCOUNT changes nothing else.
    """
    for entry_id, (owner, count) in pending(client, plugin).items():
        client.xclaim(
            keys.stream(plugin), keys.GROUP, owner, 0, [entry_id], idle=ms, retrycount=count, justid=True
        )


def dead_letters(_client: redis.Redis, plugin: str) -> list[dict[str, str]]:
    """The plugin's dead letters as field dicts (binary-safe: bad bytes replaced), oldest first."""
    reply: Any = get_redis(decode_responses=False).xrange(keys.dead_letters(plugin))
    return [{_s(k): _s(v) for k, v in fields.items()} for _id, fields in reply]


def _s(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def settings(**overrides: Any) -> Settings:
    """The test settings with ``overrides``."""
    return get_settings().model_copy(update=overrides)


_consumers: list[StreamConsumer] = []


def make_consumer(
    name: str = "test-consumer", *, dispatcher: Dispatcher | None = None, **overrides: Any
) -> StreamConsumer:
    """An in-process consumer (call ``initialize`` and ``loop_once(now, block=False)``).

    Shut down after the test by :func:`shutdown_consumers` (its broker connection closed).
    """
    consumer = StreamConsumer(name=name, settings=settings(**overrides), dispatcher=dispatcher)
    _consumers.append(consumer)
    return consumer


@pytest.fixture(autouse=True)
def shutdown_consumers() -> Iterator[None]:
    """Autouse where imported: every consumer :func:`make_consumer` built is shut down after the test."""
    yield
    while _consumers:
        _consumers.pop().shutdown()


def later(now: datetime, seconds: float = 3600) -> datetime:
    """``now`` plus enough time for every periodic phase to be due again."""
    return now + timedelta(seconds=seconds)
