"""The producer against real Redis and PostgreSQL: publishing, duplicates, and trimming safely."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import keys
from app.db.engine import session_scope
from app.db.models import RunStatus
from app.streams.envelope import Envelope, parse_entry
from app.streams.groups import ensure_group
from app.streams.producer import load_refs, publish_runs, safe_min_id, trim_stream
from tests.streams_support import T0, add_runs, publish, run_row, set_run


def test_publish_many_runs_across_plugins(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    alpha = publish("alpha", 3)
    beta = publish("beta", 2)
    for plugin, run_ids in (("alpha", alpha), ("beta", beta)):
        entries = redis_client.xrange(keys.stream(plugin))
        assert len(entries) == len(run_ids)  # type: ignore[arg-type]
        for (entry_id, fields), run_id in zip(entries, run_ids, strict=True):  # type: ignore[arg-type]
            envelope = parse_entry(fields)
            assert isinstance(envelope, Envelope)
            assert envelope.run_id == run_id and envelope.plugin == plugin and envelope.enqueued_at == T0
            row = run_row(run_id)
            assert row.status == RunStatus.QUEUED and row.stream_id == entry_id and row.queued_at == T0


def test_publishing_twice_is_harmless_and_terminal_runs_are_skipped(db, redis_client) -> None:  # type: ignore[no-untyped-def]
    run_ids = add_runs("alpha", 3)
    set_run(run_ids[2], status=RunStatus.COMPLETED)
    with session_scope() as session:
        first = publish_runs(session, load_refs(session, run_ids=run_ids), now=T0)
    with session_scope() as session:
        second = publish_runs(session, load_refs(session, run_ids=run_ids[:1]), now=T0)
    assert [p.run_id for p in first] == run_ids[:2]
    assert redis_client.xlen(keys.stream("alpha")) == 3
    # The row names the newest entry; the older one is acked by whoever meets it later.
    assert run_row(run_ids[0]).stream_id == second[0].stream_id != first[0].stream_id
    assert run_row(run_ids[2]).status == RunStatus.COMPLETED and run_row(run_ids[2]).stream_id is None


def test_redis_failure_marks_nothing(db) -> None:  # type: ignore[no-untyped-def]
    from app.streams.producer import RunRef

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    run_id = add_runs("alpha", 1)[0]
    try:
        with session_scope() as session:
            publish_runs(session, [RunRef(run_id, "alpha", 1)], now=T0, client=dead)
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("expected a connection error")
    assert run_row(run_id).status == RunStatus.PENDING


def test_safe_min_id_takes_the_lowest_bound() -> None:
    assert safe_min_id(cutoff_ms=100, oldest_pending=None, last_delivered=None) is None
    assert safe_min_id(cutoff_ms=100, oldest_pending=None, last_delivered="500-3") == "100-0"
    assert safe_min_id(cutoff_ms=900, oldest_pending=None, last_delivered="500-3") == "500-4"
    assert safe_min_id(cutoff_ms=900, oldest_pending="200-1", last_delivered="500-3") == "200-1"


def test_trim_never_drops_pending_or_unread_entries(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    key = keys.stream("alpha")
    far_future = datetime.now(UTC) + timedelta(days=365)
    publish("alpha", 5)
    # No group yet: nothing was ever delivered, nothing may go.
    assert trim_stream("alpha", now=far_future, retention_seconds=60).removed == 0
    ensure_group(redis_client, "alpha")
    assert trim_stream("alpha", now=far_future, retention_seconds=60).min_id is None
    # Enough entries to fill several radix-tree nodes, so an approximate trim can act.
    for _ in range(5):
        publish("alpha", 100)
    everything: Any = redis_client.xrange(key)
    ids: list[str] = [i for i, _ in everything]
    # Deliver the first 300; ack all but entry 150 (still pending); 300.. are unread.
    redis_client.xreadgroup(keys.GROUP, "c1", {key: ">"}, count=300)
    redis_client.xack(key, keys.GROUP, *[i for n, i in enumerate(ids[:300]) if n != 150])
    result = trim_stream("alpha", now=far_future, retention_seconds=60)
    assert result.min_id == ids[150]
    left: Any = redis_client.xrange(key)
    remaining = [i for i, _ in left]
    assert ids[150] in remaining and set(ids[150:]) <= set(remaining)
    assert result.removed > 0 and len(remaining) == len(ids) - result.removed
    # Within the retention nothing goes, pending or not.
    redis_client.xack(key, keys.GROUP, ids[150])
    assert trim_stream("alpha", now=datetime.now(UTC), retention_seconds=3600).removed == 0
