"""Helpers shared by the execution tests: rows, dispatch, waiting, execution records.

Rows are inserted directly through the models (plugins through the real sync),
tasks are sent to a real Celery worker through the broker, and outcomes are
read back from PostgreSQL and from the files the test plugins append to.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import select

from app import keys
from app.db.engine import session_scope
from app.db.models import TERMINAL_STATUSES, PluginRow, PluginRun, RunStatus, User, utcnow
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins

ROOT = Path(__file__).resolve().parents[2]
TEST_PLUGINS = Path(__file__).resolve().parent
#: PLUGINS_DIR for workers that run the test plugins and the real ones.
PLUGINS_DIR = os.pathsep.join([str(TEST_PLUGINS), str(ROOT / "plugins")])

#: Generous: a limit for a hung test, never a performance threshold.
WAIT_SECONDS = 90.0


def sync_test_plugins() -> dict[str, int]:
    """Sync the test plugins and the real ones into the database; name -> plugin id."""
    with session_scope() as session:
        sync_plugins(session, discover(PLUGINS_DIR))
        return {row.name: row.id for row in session.scalars(select(PluginRow))}


def make_user() -> int:
    """A new user's id."""
    with session_scope() as session:
        user = User(email=f"exec-{uuid.uuid4().hex[:10]}@example.com", timezone="UTC")
        session.add(user)
        session.flush()
        return user.id


def make_run(plugin: str, settings: dict[str, Any], *, status: RunStatus = RunStatus.QUEUED) -> uuid.UUID:
    """Insert a run of ``plugin`` for a new user with ``settings`` as its stored input."""
    plugin_ids = sync_test_plugins()
    user_id = make_user()
    run_id = uuid.uuid4()
    with session_scope() as session:
        session.add(
            PluginRun(
                run_id=run_id,
                user_id=user_id,
                plugin_id=plugin_ids[plugin],
                trigger="manual",
                status=status,
                input=settings,
            )
        )
    return run_id


def get_run(run_id: uuid.UUID) -> PluginRun:
    """The run row as it is now."""
    with session_scope() as session:
        row = session.scalar(select(PluginRun).where(PluginRun.run_id == run_id))
        assert row is not None, f"no run {run_id}"
        session.expunge(row)
        return row


def dispatch(run_id: uuid.UUID, **stream: str) -> None:
    """Send ``execute_run`` through the broker, as the stream consumer would (same task id)."""
    from app.celery_app import celery_app
    from app.task_names import task_id_for
    from app.tasks import execute_run

    # A fresh connection declares the queue again, so a test elsewhere that
    # deleted the session's Redis keys cannot make this message unroutable.
    with celery_app.connection_for_write() as connection:
        execute_run.apply_async(
            args=[str(run_id)],
            kwargs=stream,
            task_id=task_id_for(run_id, stream.get("entry_id")),
            connection=connection,
        )


def wait_for(
    run_id: uuid.UUID, *statuses: RunStatus, attempts: int | None = None, timeout: float = WAIT_SECONDS
) -> PluginRun:
    """Poll until the run is in one of ``statuses`` (default: any terminal one) after ``attempts``."""
    wanted = set(statuses) or set(TERMINAL_STATUSES)
    deadline = time.monotonic() + timeout
    row = get_run(run_id)
    while RunStatus(row.status) not in wanted or (attempts is not None and row.attempts < attempts):
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is {row.status} ({row.error_message}), wanted {wanted}")
        time.sleep(0.1)
        row = get_run(run_id)
    return row


def records(path: Path, run_id: uuid.UUID) -> list[str]:
    """What the test plugin recorded for ``run_id``: ``start``/``done``, in order."""
    if not path.exists():
        return []
    prefix = f"{run_id} "
    return [line[len(prefix) :] for line in path.read_text().splitlines() if line.startswith(prefix)]


def wait_for_record(path: Path, run_id: uuid.UUID, what: str, *, count: int = 1) -> None:
    """Poll until the plugin recorded ``what`` for ``run_id`` at least ``count`` times."""
    deadline = time.monotonic() + WAIT_SECONDS
    while records(path, run_id).count(what) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id}: {what!r} x{count} never recorded: {records(path, run_id)}")
        time.sleep(0.05)


def wait_until_past(moment: Any) -> None:
    """Sleep until the wall clock is past ``moment`` (an aware datetime)."""
    while utcnow() <= moment:
        time.sleep(0.05)


def pending_entry(client: redis.Redis, plugin: str, run_id: uuid.UUID) -> dict[str, str]:
    """A stream entry naming the run, read by a consumer so it is pending; the task's stream kwargs."""
    stream = keys.stream(plugin)
    try:
        client.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    payload = {"run_id": str(run_id), "plugin": plugin, "user_id": 1, "enqueued_at": utcnow().isoformat()}
    entry_id = client.xadd(stream, {keys.FIELD_VERSION: "1", keys.FIELD_PAYLOAD: json.dumps(payload)})
    client.xreadgroup(keys.GROUP, "test-consumer", {stream: ">"}, count=100)
    assert is_pending(client, stream, str(entry_id))
    return {"stream": stream, "group": keys.GROUP, "entry_id": str(entry_id)}


def is_pending(client: redis.Redis, stream: str, entry_id: str) -> bool:
    """True while the entry is in the group's pending list (delivered, not acknowledged)."""
    return bool(client.xpending_range(stream, keys.GROUP, min=entry_id, max=entry_id, count=1))


def wait_for_entry_acked(client: redis.Redis, entry: dict[str, str]) -> None:
    """Poll until the worker acknowledged the entry."""
    deadline = time.monotonic() + 60
    while is_pending(client, entry["stream"], entry["entry_id"]):
        assert time.monotonic() < deadline, f"entry {entry['entry_id']} still pending"
        time.sleep(0.05)
