"""The consumer as a real process: signals, health check, scale-out, crashes, restarts, outages.

Each test starts ``python -m app consumer`` with a short visibility timeout and
observes real outcomes: the group's pending list, the Celery broker's queue,
the run rows and the exit status. Waits are bounded by generous limits that
only catch hangs; no assertion depends on how fast anything is.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from app.db.engine import session_scope
from app.db.models import RunStatus
from app.streams.producer import RunRef, publish_runs
from tests.streams_support import (
    add_plugin,
    add_runs,
    broker_tasks,
    clear_broker,
    pending,
    publish,
    run_row,
    running,
    set_run,
    wait_until,
)

pytestmark = pytest.mark.slow


def check() -> int:
    return subprocess.run(
        [sys.executable, "-m", "app", "consumer", "--check"], capture_output=True
    ).returncode


def owned_by(client: redis.Redis, plugin: str, name: str) -> set[str]:
    return {entry for entry, (owner, _count) in pending(client, plugin).items() if owner == name}


def test_health_check_and_sigterm_drain(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    assert check() == 1
    with running() as (consumer, name):
        wait_until(lambda: check() == 0, "a live heartbeat")
        # A bad message never crashes the process: it is dead-lettered and reading goes on.
        redis_client.xadd(_stream("alpha"), {"v": "1", "payload": "\x00 not json"})
        wait_until(lambda: redis_client.xlen(_stream("alpha") + ":dead") == 1, "the garbage dead-lettered")
        publish("alpha", 3000)
        wait_until(lambda: owned_by(redis_client, "alpha", name), "the consumer to read entries")
        code, _seconds = consumer.stop(signal.SIGTERM, timeout=10)  # raises if it takes longer
        assert code == 0
        assert re.search(r"consumer \S+ stopped after .*dispatched=\d+", consumer.output)
    # Everything it read was dispatched before it exited; the rest is pending or unread.
    dispatched = {t.kwargs["entry_id"] for t in broker_tasks(redis_client)}
    assert owned_by(redis_client, "alpha", name) == dispatched
    assert check() == 1  # a clean stop releases the heartbeat


def test_two_consumers_split_a_stream(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    # No reclaim during the test: every dispatch counted here comes from a first read.
    quiet = {"VISIBILITY_TIMEOUT_SECONDS": "3600"}
    with running("consumer-a", **quiet) as (_a, name_a), running("consumer-b", **quiet) as (_b, name_b):
        run_ids = []
        for _ in range(30):
            run_ids += publish("alpha", 10)
            time.sleep(0.02)
        wait_until(lambda: len(broker_tasks(redis_client)) >= 300, "300 dispatches")
        tasks = broker_tasks(redis_client)
    entries = [t.kwargs["entry_id"] for t in tasks]
    assert len(entries) == len(set(entries)) == 300  # no entry handed to Celery twice
    assert sorted(t.run_id for t in tasks) == sorted(str(r) for r in run_ids)
    # However the two split the work (one may even have read it all), every entry was read by
    # exactly one of them: the group's pending list names one owner per entry.
    held = pending(redis_client, "alpha")
    assert set(held) == set(entries)
    assert {owner for owner, _count in held.values()} <= {name_a, name_b}
    assert all(count == 1 for _owner, count in held.values())  # each delivered once


def test_sigkilled_consumer_entries_are_reclaimed_by_another(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    with running("doomed") as (doomed, doomed_name):
        run_ids = publish("alpha", 500)
        wait_until(lambda: owned_by(redis_client, "alpha", doomed_name), "the doomed consumer to read")
        doomed.kill()  # SIGKILL, mid-batch or between batches: no chance to clean up
    orphaned = owned_by(redis_client, "alpha", doomed_name)
    assert orphaned
    clear_broker(redis_client)
    with running("survivor") as (_survivor, name):
        # After the visibility timeout (2 s here) the survivor takes every orphan over.
        wait_until(lambda: not owned_by(redis_client, "alpha", doomed_name), "the orphans to be reclaimed")
        wait_until(lambda: len(pending(redis_client, "alpha")) == 500, "all 500 entries read")
        seen: set[str] = set()

        def drained() -> bool:
            # Play the worker: take what reached the broker (a queued run is re-sent only once
            # Celery's queue is empty, so an undrained queue would hold the orphans back).
            seen.update(t.run_id for t in broker_tasks(redis_client))
            clear_broker(redis_client)
            return seen == {str(r) for r in run_ids}

        wait_until(drained, "every run dispatched again")
    assert owned_by(redis_client, "alpha", name) == set(pending(redis_client, "alpha"))


def test_restart_with_a_stable_name_resumes_its_pending_entries(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    # A visibility timeout far beyond the test: only the ID 0 read at start can resume them.
    env = {"CONSUMER_NAME": "stable-1", "VISIBILITY_TIMEOUT_SECONDS": "3600"}
    with running("first", **env) as (first, _name):
        run_ids = publish("alpha", 20)
        wait_until(lambda: len(broker_tasks(redis_client)) == 20, "20 dispatches")
        assert first.stop(signal.SIGTERM, timeout=10)[0] == 0
    set_run(run_ids[0], status=RunStatus.COMPLETED)  # finished meanwhile: acked, not re-sent
    clear_broker(redis_client)
    with running("again", **env) as (again, _name):
        wait_until(lambda: len(broker_tasks(redis_client)) == 19, "19 re-dispatches")
        wait_until(lambda: len(pending(redis_client, "alpha")) == 19, "the finished run's entry acked")
        assert "settling 20 pending entries" in again.output
    assert {t.run_id for t in broker_tasks(redis_client)} == {str(r) for r in run_ids[1:]}


def test_long_run_with_a_live_lease_is_not_redispatched(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    # A worker holds the run under a live lease from the start: every reclaim round must keep it.
    lease = datetime.now(UTC) + timedelta(hours=1)
    (run_id,) = add_runs("alpha", 1, status=RunStatus.PROCESSING, lease_expires_at=lease)
    with session_scope() as session:
        (published,) = publish_runs(session, [RunRef(run_id, "alpha", run_row(run_id).user_id)], now=lease)
    entry = published.stream_id
    with running(VISIBILITY_TIMEOUT_SECONDS="1", RECLAIM_INTERVAL_SECONDS="0.1"):
        wait_until(lambda: len(broker_tasks(redis_client)) == 1, "the first dispatch")
        last_idle = 0

        def reset_seen() -> bool:
            # A reclaim round that finds the run alive resets the entry's idle time.
            nonlocal last_idle
            (row,) = redis_client.xpending_range(_stream("alpha"), "workers", entry, entry, 1)
            idle = int(row["time_since_delivered"])
            dropped, last_idle = idle < last_idle, idle
            return dropped

        for _ in range(3):
            wait_until(reset_seen, "a reclaim round to look at the live run")
        # Each round's claim counts a delivery for a moment and then takes it back: it settles at 1.
        wait_until(lambda: pending(redis_client, "alpha")[entry][1] == 1, "the delivery count back at 1")
        assert len(broker_tasks(redis_client)) == 1  # looked at three times, never re-sent
        set_run(run_id, lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))  # the worker died
        wait_until(lambda: len(broker_tasks(redis_client)) == 2, "the re-dispatch after the lease expired")


def _stream(plugin: str) -> str:
    from app import keys

    return keys.stream(plugin)
