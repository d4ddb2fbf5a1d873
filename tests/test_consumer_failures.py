"""The consumer in-process when its dependencies fail: nothing is lost, no delivery is miscounted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
import redis
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError

from app.db import runs as runs_module
from app.streams.dispatch import Dispatch, Dispatcher
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
)


class FlakyDispatcher(Dispatcher):
    """A real dispatcher whose first ``failures`` calls fail like an unreachable broker."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def dispatch(self, items: Sequence[Dispatch]) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerError("Error 111 connecting to broker. Connection refused.")
        super().dispatch(items)


def test_broker_failure_keeps_read_entries_and_dispatches_them_later(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    consumer = make_consumer("c1", dispatcher=FlakyDispatcher(failures=2))
    now = datetime.now(UTC)
    consumer.initialize(now)
    consumer.loop_once(now, block=False)
    run_ids = publish("alpha", 4)
    with pytest.raises(BrokerError):
        consumer.loop_once(now, block=False)  # read 4, broker refused them
    assert len(pending(redis_client, "alpha")) == 4 and broker_tasks(redis_client) == []
    with pytest.raises(BrokerError):
        consumer.loop_once(now, block=False)  # still down: nothing more is read meanwhile
    stats = consumer.loop_once(now, block=False)
    assert stats.dispatched == 4 and stats.read == 0
    assert [t.run_id for t in broker_tasks(redis_client)] == [str(r) for r in run_ids]
    assert {count for _owner, count in pending(redis_client, "alpha").values()} == {1}


def test_database_outage_during_reclaim_counts_no_delivery(  # type: ignore[no-untyped-def]
    db, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.streams")
    add_plugin("alpha")
    consumer = make_consumer("c1", max_deliveries=2)
    now = datetime.now(UTC)
    consumer.initialize(now)
    consumer.loop_once(now, block=False)
    publish("alpha", 2)
    consumer.loop_once(now, block=False)
    real_states = runs_module.states

    def down(*_args: object, **_kwargs: object) -> object:
        raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(runs_module, "states", down)
    for step in (1, 2, 3):  # several reclaim rounds while PostgreSQL is down
        age(redis_client, "alpha")
        stats = consumer.loop_once(later(now, 60 * step), block=False)
        assert stats.dispatched == 0 and stats.dead_lettered == 0
    assert {count for _owner, count in pending(redis_client, "alpha").values()} == {1}
    assert "PostgreSQL unreachable" in caplog.text
    monkeypatch.setattr(runs_module, "states", real_states)
    clear_broker(redis_client)  # the first tasks were lost: the runs must be dispatched again
    age(redis_client, "alpha")
    stats = consumer.loop_once(later(now, 600), block=False)
    # One delivery so far, max_deliveries=2: had the outage rounds counted, these would be dead.
    assert stats.dispatched == 2 and stats.dead_lettered == 0
    assert dead_letters("alpha") == [] and "PostgreSQL reachable again" in caplog.text
    assert len(broker_tasks(redis_client)) == 2
