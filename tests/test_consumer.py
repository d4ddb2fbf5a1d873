"""The consumer in-process, one deterministic iteration at a time, against real Redis and PostgreSQL.

``loop_once(now, block=False)`` with an injected clock; the visibility timeout
is "waited out" by marking pending entries idle (``age``), so no test sleeps.
What was dispatched is read back from the Celery broker's ``runs`` queue.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from app import keys
from app.db.models import RunStatus
from app.streams.consumer import StreamConsumer
from app.streams.envelope import MAX_PAYLOAD_BYTES, Reason
from tests.streams_support import (
    add_plugin,
    age,
    broker_tasks,
    clear_broker,
    dead_letters,
    later,
    make_consumer,
    pending,
    publish,
    run_row,
    set_run,
)


def _started(
    name: str = "c1", *, plugins: tuple[str, ...] = ("alpha",), **overrides: Any
) -> tuple[StreamConsumer, datetime]:
    for plugin in plugins:
        add_plugin(plugin)
    consumer = make_consumer(name, **overrides)
    now = datetime.now(UTC)
    consumer.initialize(now)
    consumer.loop_once(now, block=False)  # settles its (empty) own history
    return consumer, now


def test_new_entries_are_dispatched_and_left_pending(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    consumer, now = _started()
    run_ids = publish("alpha", 3)
    stats = consumer.loop_once(now, block=False)
    assert stats.read == 3 and stats.dispatched == 3
    tasks = broker_tasks(redis_client)
    assert [t.run_id for t in tasks] == [str(r) for r in run_ids]
    assert {t.name for t in tasks} == {"app.tasks.execute_run"}
    entries = pending(redis_client, "alpha")
    assert len(entries) == 3 and {owner for owner, _ in entries.values()} == {"c1"}
    for task, run_id in zip(tasks, run_ids, strict=True):
        assert task.kwargs == {
            "plugin": "alpha",
            "attempt": 1,
            "stream": keys.stream("alpha"),
            "group": keys.GROUP,
            "entry_id": run_row(run_id).stream_id,
        }


def test_reads_every_stream_and_notices_new_plugins(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("off", enabled=False)
    consumer, now = _started()
    assert consumer.plugins == ["alpha"]  # a disabled plugin without a stream is not read
    assert redis_client.exists(keys.stream("alpha")) and not redis_client.exists(keys.stream("off"))
    publish("alpha", 2)
    publish("beta", 2)  # a plugin enabled after start
    assert consumer.loop_once(now, block=False).dispatched == 2
    stats = consumer.loop_once(later(now), block=False)  # the refresh is due: beta's group appears
    assert "beta" in consumer.plugins and stats.dispatched == 2
    assert len(broker_tasks(redis_client)) == 4


def test_garbage_is_dead_lettered_with_the_right_reason(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    consumer, now = _started()
    key = keys.stream("alpha")
    good = publish("alpha", 1)[0]
    wrong_plugin = json.dumps(
        {"run_id": str(good), "plugin": "beta", "user_id": 1, "enqueued_at": now.isoformat()}
    )
    garbage = {
        "not_json": {"v": "1", "payload": "{oops"},
        "no_payload": {"v": "1"},
        "no_run_id": {"v": "1", "payload": json.dumps({"plugin": "alpha"})},
        "unknown_v": {"v": "9", "payload": "{}"},
        "huge": {"v": "1", "payload": "x" * (MAX_PAYLOAD_BYTES + 1)},
        "binary": {b"v": b"1", b"payload": b"\xff\xfe\xfd\x00"},
        "wrong_stream": {"v": "1", "payload": wrong_plugin},
    }
    ids: dict[str, Any] = {name: redis_client.xadd(key, fields) for name, fields in garbage.items()}  # type: ignore[arg-type]
    stats = consumer.loop_once(later(now), block=False)
    assert stats.read == 8 and stats.dispatched == 1 and stats.dead_lettered == 7
    by_original = {d["dlq.original_id"]: d for d in dead_letters("alpha")}
    expected = {
        "not_json": Reason.NOT_JSON,
        "no_payload": Reason.MISSING_FIELD,
        "no_run_id": Reason.MISSING_FIELD,
        "unknown_v": Reason.UNKNOWN_VERSION,
        "huge": Reason.TOO_LARGE,
        "binary": Reason.NOT_UTF8,
        "wrong_stream": Reason.WRONG_STREAM,
    }
    for name, reason in expected.items():
        letter = by_original[ids[name]]
        assert letter["dlq.reason"] == reason and letter["dlq.message"], name
        assert letter["dlq.delivery_count"] == "1" and letter["dlq.consumer"] == "c1"
    assert by_original[ids["not_json"]]["payload"] == "{oops"  # the original fields travel along
    assert list(pending(redis_client, "alpha")) == [run_row(good).stream_id]  # only the good one
    # The valid run named by the wrong-stream entry is untouched: its row names another entry.
    consumer.loop_once(later(now, 7200), block=False)
    assert run_row(good).status == RunStatus.QUEUED


def test_reclaim_decides_by_the_run_row(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    consumer, now = _started()
    done, alive, expired, queued, retrying = publish("alpha", 5)
    missing = uuid.uuid4()  # an entry naming a run that does not exist
    payload = {"run_id": str(missing), "plugin": "alpha", "user_id": 1, "enqueued_at": now.isoformat()}
    redis_client.xadd(keys.stream("alpha"), {"v": "1", "payload": json.dumps(payload)})
    consumer.loop_once(now, block=False)
    assert len(broker_tasks(redis_client)) == 6
    set_run(done, status=RunStatus.COMPLETED)
    set_run(alive, status=RunStatus.PROCESSING, lease_expires_at=now + timedelta(hours=1))
    set_run(expired, status=RunStatus.PROCESSING, lease_expires_at=now - timedelta(seconds=1))
    set_run(retrying, status=RunStatus.PENDING, stream_id=None, next_attempt_at=now + timedelta(minutes=5))
    ids: dict[uuid.UUID, Any] = {r: run_row(r).stream_id for r in (done, alive, expired, queued, retrying)}
    age(redis_client, "alpha")
    # While Celery's queue still holds tasks, a queued run's task is waiting there: keep it.
    # Past the visibility timeout: a missing run is only dead-lettered once its entry is that old.
    stats = consumer.loop_once(later(now, 120), block=False)
    assert stats.reclaimed == 6 and stats.acked == 2 and stats.dead_lettered == 1
    assert stats.kept == 2 and stats.dispatched == 1  # alive and queued kept; expired re-dispatched
    assert pending(redis_client, "alpha")[ids[queued]][1] == 1  # no delivery counted
    clear_broker(redis_client)  # now the tasks are lost (e.g. the broker lost them)
    age(redis_client, "alpha")
    stats = consumer.loop_once(later(now, 240), block=False)
    assert stats.reclaimed == 3 and stats.kept == 1 and stats.dispatched == 2
    left = pending(redis_client, "alpha")
    assert ids[done] not in left and ids[retrying] not in left
    assert left[ids[alive]] == ("c1", 1)  # idle reset, no delivery counted
    assert left[ids[expired]][1] == 3 and left[ids[queued]][1] == 2
    redispatched = [t.run_id for t in broker_tasks(redis_client)]
    assert sorted(redispatched) == sorted([str(expired), str(queued)])
    (letter,) = dead_letters("alpha")
    assert letter["dlq.reason"] == Reason.RUN_NOT_FOUND
    # The live run's entry is not idle any more: the next round leaves it alone.
    stats = consumer.loop_once(later(now, 250), block=False)
    assert stats.reclaimed == 0


def test_poison_entry_dead_lettered_after_exactly_max_deliveries(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    consumer, now = _started(max_deliveries=3)
    run_id = publish("alpha", 1)[0]
    entry_id = run_row(run_id).stream_id
    consumer.loop_once(now, block=False)
    sent = [t.run_id for t in broker_tasks(redis_client)]
    for step in range(1, 10):
        if not pending(redis_client, "alpha"):
            break
        clear_broker(redis_client)  # each task is lost before a worker takes it
        age(redis_client, "alpha")
        consumer.loop_once(later(now, 10 * step), block=False)
        sent += [t.run_id for t in broker_tasks(redis_client)]
    assert sent == [str(run_id)] * 3
    (letter,) = dead_letters("alpha")
    assert letter["dlq.original_id"] == entry_id and letter["dlq.reason"] == Reason.MAX_DELIVERIES
    assert letter["dlq.delivery_count"] == "4"
    row = run_row(run_id)
    assert row.status == RunStatus.FAILED and "max_deliveries" in (row.error_message or "")


def test_deleted_and_trimmed_entries_are_republished(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    consumer, now = _started()
    gone, finished = publish("alpha", 2)
    consumer.loop_once(now, block=False)
    set_run(finished, status=RunStatus.COMPLETED)
    old_ids = {r: run_row(r).stream_id for r in (gone, finished)}
    age(redis_client, "alpha")
    redis_client.xtrim(keys.stream("alpha"), maxlen=0, approximate=False)  # someone trimmed too hard
    stats = consumer.loop_once(later(now, 10), block=False)
    assert stats.republished == 1
    row = run_row(gone)
    assert row.status == RunStatus.QUEUED and row.stream_id not in (None, old_ids[gone])
    assert set(pending(redis_client, "alpha")) == {row.stream_id}  # the new entry, dispatched
    assert [t.run_id for t in broker_tasks(redis_client)][-1] == str(gone)
    assert run_row(finished).stream_id == old_ids[finished]  # terminal: not republished


def test_own_pending_entries_are_settled_first_on_restart(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    first, now = _started("stable")
    done, waiting = publish("alpha", 2)
    first.loop_once(now, block=False)
    first.shutdown()
    set_run(done, status=RunStatus.COMPLETED)
    clear_broker(redis_client)  # its tasks never reached a worker (lost with the broker)
    again = make_consumer("stable")  # same name: its pending entries are its own
    again.initialize(now)
    stats = again.loop_once(now, block=False)
    assert stats.acked == 1 and stats.dispatched == 1 and stats.reclaimed == 0
    assert [t.run_id for t in broker_tasks(redis_client)] == [str(waiting)]
    assert list(pending(redis_client, "alpha")) == [run_row(waiting).stream_id]


def test_idle_consumers_with_nothing_pending_are_removed(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    from app.streams.groups import remove_idle_consumers

    _started()
    key = keys.stream("alpha")
    publish("alpha", 2)
    redis_client.xreadgroup(keys.GROUP, "busy", {key: ">"}, count=1)
    # "done" read an entry and acked it: it owns nothing any more.
    reply: Any = redis_client.xreadgroup(keys.GROUP, "done", {key: ">"}, count=1)
    ((_key, [(done_id, _fields)]),) = reply
    redis_client.xack(key, keys.GROUP, done_id)
    redis_client.xgroup_createconsumer(key, keys.GROUP, "never-read")
    removed = remove_idle_consumers(redis_client, "alpha", idle_ms=0, keep="c1")
    assert sorted(removed) == ["done", "never-read"]
    names = {c["name"] for c in redis_client.xinfo_consumers(key, keys.GROUP)}  # type: ignore[union-attr]
    assert names == {"c1", "busy"}  # c1 is the caller itself: kept however idle
    assert remove_idle_consumers(redis_client, "alpha", idle_ms=3_600_000, keep="c1") == []


def test_a_deleted_stream_gets_its_group_back(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    consumer, now = _started()
    publish("alpha", 1)
    consumer.loop_once(now, block=False)
    redis_client.delete(keys.stream("alpha"))  # the stream, its group and its pending list are gone
    consumer.loop_once(later(now, 10), block=False)  # reclaim and read both meet NOGROUP: no crash
    (run_id,) = publish("alpha", 1)
    stats = consumer.loop_once(later(now, 20), block=False)
    assert stats.dispatched == 1 and broker_tasks(redis_client)[-1].run_id == str(run_id)
