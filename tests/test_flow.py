"""Flow control in-process against real Redis and PostgreSQL: settings, manifests, slots, budget, the gate.

The consumer runs one iteration at a time (``loop_once(now, block=False)``);
what it dispatched is read back from the Celery broker's lists. The cluster
tests (real workers, the LLM test server) are in ``test_flow_cluster.py``.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from app import keys
from app.config import get_settings, parse_caps
from app.db.models import RunStatus, utcnow
from app.errors import ConfigurationError, PluginError
from app.flow import slots
from app.flow.budget import BudgetWaitExpired, ModelBudget, wait_turn
from app.flow.policy import plugin_cap
from app.flow.worker import RunSlot
from app.plugins.manifest import parse_manifest
from app.streams.consumer import StreamConsumer
from tests.conftest import manifest_text
from tests.streams_support import (
    add_plugin,
    age,
    broker_tasks,
    dead_letters,
    later,
    make_consumer,
    pending,
    publish,
    set_run,
)

# ---- settings and manifests -------------------------------------------------------------------


def test_caps_setting_parses_and_names_the_bad_item(setenv) -> None:  # type: ignore[no-untyped-def]
    assert parse_caps(" alpha=2, beta=none ,") == {"alpha": 2, "beta": None}
    setenv(FIRST_SIP_MAX_CONCURRENCY="alpha=2,beta=none")
    settings = get_settings()
    assert plugin_cap("alpha", None, settings) == 2
    assert plugin_cap("beta", 5, settings) is None  # the operator lifts the manifest's cap
    assert plugin_cap("gamma", 5, settings) == 5
    for bad, needle in (
        ("alpha", "'alpha' must be plugin=n"),
        ("alpha=0", "cap of 'alpha'"),
        ("Al=1", "'Al=1'"),
    ):
        setenv(FIRST_SIP_MAX_CONCURRENCY=bad)
        with pytest.raises(ConfigurationError, match="FIRST_SIP_MAX_CONCURRENCY") as err:
            get_settings()
        assert needle in str(err.value)
    setenv(FIRST_SIP_MAX_CONCURRENCY="", FIRST_SIP_QUEUES="slow,Bad Queue")
    with pytest.raises(ConfigurationError, match="FIRST_SIP_QUEUES: 'Bad Queue'"):
        get_settings()
    for name, bad in (("FIRST_SIP_LLM_RPM", "0"), ("FIRST_SIP_LLM_BUDGET_WINDOW_SECONDS", "soon")):
        setenv(FIRST_SIP_QUEUES="", **{name: bad})
        with pytest.raises(ConfigurationError, match=name):
            get_settings()
        setenv(**{name: "1"})


def test_manifest_flow_keys_are_checked() -> None:
    manifest = parse_manifest(manifest_text("alpha", max_concurrency=2, queue="slow"), file="p.yaml")
    assert manifest.max_concurrency == 2 and manifest.queue == "slow"
    assert parse_manifest(manifest_text("alpha"), file="p.yaml").queue == "runs"
    for overrides, key, needle in (
        ({"max_concurrency": 0}, "max_concurrency", "greater than or equal to 1"),
        ({"max_concurrency": "2"}, "max_concurrency", "integer"),
        ({"queue": "Slow Queue"}, "queue", "must match"),
        ({"queue": "scheduler"}, "queue", "scheduler's own queue"),
    ):
        with pytest.raises(PluginError) as err:
            parse_manifest(manifest_text("alpha", **overrides), file="p.yaml")
        (problem,) = err.value.problems
        assert problem.key == key and needle in problem.message and problem.file == "p.yaml"


def test_sync_stores_cap_and_queue(db, make_plugin) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from app.db.engine import session_scope
    from app.db.models import PluginRow
    from app.plugins.registry import discover
    from app.plugins.sync import sync_plugins

    make_plugin("alpha", max_concurrency=3, queue="slow")
    make_plugin("beta")
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))
        rows = {r.name: (r.max_concurrency, r.queue) for r in session.scalars(select(PluginRow))}
    assert rows == {"alpha": (3, "slow"), "beta": (None, "runs")}


def test_known_queues_cover_scheduler_settings_and_manifests(setenv, make_plugin) -> None:  # type: ignore[no-untyped-def]
    from app.celery_app import known_queues

    make_plugin("alpha", queue="slow")
    make_plugin("broken", manifest="name: [")  # skipped here; `plugins validate` reports it
    setenv(PLUGINS_DIR=str(make_plugin.root), FIRST_SIP_QUEUES="extra,slow")
    assert known_queues(get_settings()) == ["runs", "scheduler", "extra", "slow"]


# ---- slots and budget -------------------------------------------------------------------------


def test_slots_never_exceed_the_cap_under_concurrent_consumers(redis_client: redis.Redis) -> None:
    granted: list[str] = []
    lock = threading.Lock()

    def consumer(n: int) -> None:
        client = redis.Redis.from_url(get_settings().redis_url)
        for i in range(20):
            grant = slots.acquire(client, "alpha", [f"run-{n}-{i}"], cap=3, lease_seconds=60)
            with lock:
                granted.extend(grant.granted)
                assert grant.in_flight <= 3

    threads = [threading.Thread(target=consumer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 3
    assert slots.in_flight(redis_client, ["alpha"]) == {"alpha": 3}
    # A run that holds a slot keeps it when dispatched again; a released slot goes to the next run.
    assert slots.acquire(redis_client, "alpha", [granted[0], "late"], cap=3, lease_seconds=60).granted == {
        granted[0]
    }
    slots.release(redis_client, "alpha", granted[1])
    assert slots.acquire(redis_client, "alpha", ["late"], cap=3, lease_seconds=60).granted == {"late"}
    assert redis_client.llen(keys.doorbell()) == 1  # the release woke the consumers


def test_redeliveries_and_new_attempts_never_exceed_the_cap(redis_client: redis.Redis) -> None:
    a1, a2, a3, b1 = slots.member("a", 1), slots.member("a", 2), slots.member("a", 3), slots.member("b", 1)

    def take(*members: str) -> slots.Grant:
        return slots.acquire(redis_client, "alpha", list(members), cap=1, lease_seconds=60)

    def stale_delivery_finds_nothing_to_run(attempt: int) -> None:
        # What a worker does for a delivery it cannot claim: gives back that delivery's slot.
        RunSlot("alpha", "a", attempt=attempt, lease_seconds=0, client=redis_client).release()

    assert take(a1).granted == {a1}
    # The entry is reclaimed and dispatched again: the same slot, not a second one.
    grant = take(a1, b1)
    assert grant.granted == {a1} and grant.in_flight == 1
    worker = RunSlot("alpha", "a", attempt=1, lease_seconds=60, client=redis_client)
    worker.hold(1)
    worker.release()  # attempt 1 failed; a retry is due later
    assert take(a2).granted == {a2}  # the outbox published attempt 2; the consumer sent it
    stale_delivery_finds_nothing_to_run(1)  # a duplicate of attempt 1 arrives meanwhile
    assert slots.in_flight(redis_client, ["alpha"]) == {"alpha": 1}
    assert take(b1).granted == frozenset()  # attempt 2 still holds the plugin's only slot
    # A stale redelivery of attempt 1 goes (its worker will find nothing to run) without a slot.
    grant = take(a1)
    assert grant.granted == {a1} and grant.in_flight == 1
    # Attempt 2's slot outlived its release (Redis was away); attempt 3 takes it over, no double count.
    grant = take(a3)
    assert grant.granted == {a3} and grant.in_flight == 1
    RunSlot("alpha", "a", attempt=3, lease_seconds=60, client=redis_client).hold(1)
    assert slots.in_flight(redis_client, ["alpha"]) == {"alpha": 1}
    assert take(b1).granted == frozenset()


def test_a_slot_expires_with_its_lease(redis_client: redis.Redis) -> None:
    # Dispatched with a long dispatch lease; the worker's claim replaces it with the run's lease.
    slots.acquire(redis_client, "alpha", ["dead-worker-run"], cap=1, lease_seconds=60)
    slots.hold(redis_client, "alpha", "dead-worker-run", lease_seconds=0.3)
    assert slots.acquire(redis_client, "alpha", ["next"], cap=1, lease_seconds=60).granted == frozenset()
    time.sleep(0.4)  # the holder never renewed: its lease is over
    grant = slots.acquire(redis_client, "alpha", ["next"], cap=1, lease_seconds=60)
    assert grant.granted == {"next"} and grant.in_flight == 1
    assert 0 < redis_client.pttl(keys.inflight("alpha")) <= 60_000  # an idle set disappears by itself


def test_budget_is_a_rolling_window_and_a_pause_is_never_shortened(redis_client: redis.Redis) -> None:
    budget = ModelBudget("openai/gpt-test", limit=3, window_seconds=0.5)
    assert [budget.take(redis_client).granted for _ in range(4)] == [True, True, True, False]
    state = budget.peek(redis_client)
    assert state.used == 3 and not state.granted and 0 < state.wait_seconds <= 0.7
    time.sleep(state.wait_seconds)
    turn = budget.take(redis_client)
    assert turn.granted and turn.used <= 3  # the oldest request left the window
    assert budget.pause(redis_client, 5) > 4.5
    assert budget.pause(redis_client, 0.1) > 4.5  # a shorter pause does not shorten it
    paused = budget.take(redis_client)
    assert not paused.granted and paused.paused_seconds > 4
    assert budget.peek(redis_client).used <= 3  # refusals are not counted


def test_waiting_for_a_turn_is_bounded_by_deadline_and_stop(redis_client: redis.Redis) -> None:
    budget = ModelBudget("openai/gpt-test", limit=None, window_seconds=60)
    assert wait_turn(redis_client, budget, stopped=threading.Event()) < 1  # no budget, no pause
    budget.pause(redis_client, 30)
    with pytest.raises(BudgetWaitExpired, match="paused after a 429"):
        wait_turn(redis_client, budget, stopped=threading.Event(), deadline=time.monotonic() + 1)
    stopped = threading.Event()
    threading.Timer(0.2, stopped.set).start()
    with pytest.raises(BudgetWaitExpired, match="stopped"):
        wait_turn(redis_client, budget, stopped=stopped)  # while waiting
    redis_client.delete(keys.pause("openai/gpt-test"))
    with pytest.raises(BudgetWaitExpired, match="stopped"):
        wait_turn(redis_client, budget, stopped=stopped)  # a stopped run gets no turn at all
    budget.pause(redis_client, 30)
    redis_client.delete(keys.pause("openai/gpt-test"))
    budget.pause(redis_client, 0.3)
    assert wait_turn(redis_client, budget, stopped=threading.Event()) >= 0.2  # waits out a short pause


# ---- the consumer's gate ----------------------------------------------------------------------


def _consumer(name: str, **overrides: object) -> tuple[StreamConsumer, datetime]:
    consumer = make_consumer(name, **overrides)
    now = datetime.now(UTC)
    consumer.initialize(now)
    consumer.loop_once(now, block=False)
    return consumer, now


def test_a_capped_plugin_waits_in_its_stream_and_goes_as_slots_free(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    add_plugin("beta")
    consumer, now = _consumer("c1", max_concurrency="alpha=2")
    publish("alpha", 10)
    publish("beta", 3)
    stats = consumer.loop_once(now, block=False)
    assert stats.dispatched == 2 + 3 and stats.held == 8
    tasks = broker_tasks(redis_client)
    assert sorted(t.kwargs["plugin"] for t in tasks) == ["alpha", "alpha", "beta", "beta", "beta"]
    again = consumer.loop_once(now, block=False)
    assert again.read == 0 and again.dispatched == 0  # alpha's stream is not read while entries wait
    assert len(pending(redis_client, "alpha")) == 10  # held entries stay pending, not sent
    first = tasks[0].run_id if tasks[0].kwargs["plugin"] == "alpha" else tasks[1].run_id
    slots.release(redis_client, "alpha", slots.member(first, 1))  # what a worker does when the run ends
    assert consumer.loop_once(now, block=False).dispatched == 1
    assert slots.in_flight(redis_client, ["alpha"]) == {"alpha": 2}


def test_held_entries_are_never_dead_lettered_for_waiting(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    flow = {
        "max_concurrency": "alpha=1",
        "visibility_timeout_seconds": 1,
        "max_deliveries": 2,
    }
    # c1 never reclaims (its touch alone keeps what it holds); c2 reclaims every 0.2 s.
    c1, now = _consumer("c1", **flow, reclaim_interval_seconds=3600)
    c2, _ = _consumer("c2", **flow, reclaim_interval_seconds=0.2)
    publish("alpha", 4)
    assert c1.loop_once(now, block=False).dispatched == 1
    (task,) = broker_tasks(redis_client)
    redis_client.delete(keys.celery_queue("runs"))  # a worker took the task and runs it:
    set_run(
        uuid.UUID(task.run_id), status=RunStatus.PROCESSING, lease_expires_at=utcnow() + timedelta(days=30)
    )
    # Many visibility timeouts pass while c1 holds three entries: c2's reclaim never takes them.
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        c1.loop_once(datetime.now(UTC), block=False)
        c2.loop_once(later(datetime.now(UTC)), block=False)
        time.sleep(0.1)
    owners = pending(redis_client, "alpha")
    held = {e: owner for e, owner in owners.items() if e != task.kwargs["entry_id"]}
    assert sorted(held.values()) == [("c1", 1)] * 3 and not dead_letters("alpha")
    assert owners[task.kwargs["entry_id"]][1] == 1  # the running one: kept, not counted
    assert c2.totals.held == 0  # c1 kept its held entries fresh: c2's reclaim never got one
    # c1 dies; its entries go idle and c2's reclaim takes them over (the dispatched run's lease
    # is alive, so its entry is kept; the held ones are offered to c2's gate, which holds them).
    age(redis_client, "alpha")
    c2.loop_once(later(datetime.now(UTC), 7200), block=False)
    for _ in range(3):  # more reclaim rounds while they wait: the delivery count does not grow
        age(redis_client, "alpha")
        c2.loop_once(later(datetime.now(UTC), 7200 * 3), block=False)
    assert not dead_letters("alpha")
    counts = sorted(count for _owner, count in pending(redis_client, "alpha").values())
    assert counts == [1, 1, 1, 1], counts
    slots.release(redis_client, "alpha", broker_run := next(iter(_run_ids_in_slots(redis_client))))
    assert broker_run
    assert c2.loop_once(datetime.now(UTC), block=False).dispatched == 1
    assert not dead_letters("alpha")


def _run_ids_in_slots(client: redis.Redis) -> list[str]:
    return [m.decode() if isinstance(m, bytes) else m for m in client.zrange(keys.inflight("alpha"), 0, -1)]


def test_a_paused_model_dispatches_nothing_until_the_pause_ends(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    consumer, now = _consumer("c1")
    ModelBudget(consumer._gate.budget.model, limit=None, window_seconds=60).pause(redis_client, 1.0)
    publish("alpha", 3)  # the consumer reads the pause with the entries
    stats = consumer.loop_once(now, block=False)
    assert stats.dispatched == 0 and stats.held == 3 and not broker_tasks(redis_client)
    while redis_client.exists(keys.pause(consumer._gate.budget.model)):
        time.sleep(0.05)
    assert consumer.loop_once(now, block=False).dispatched == 3


def test_a_budget_dispatches_no_more_than_the_room_left(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    consumer, now = _consumer("c1", llm_rpm=4)
    ModelBudget(consumer._gate.budget.model, limit=4, window_seconds=60).take(redis_client)
    publish("alpha", 10)
    # 4 per window, 1 used: 3 go; they wait in Celery's queue, so nothing more goes.
    assert consumer.loop_once(now, block=False).dispatched == 3
    assert consumer.loop_once(now, block=False).dispatched == 0
    redis_client.delete(keys.celery_queue("runs"))  # the workers took them (and wait for turns)
    assert consumer.loop_once(now, block=False).dispatched == 3


def test_a_plugin_queue_gets_its_runs(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    from app.db.engine import session_scope
    from app.db.models import PluginRow

    with session_scope() as session:
        session.add(PluginRow(name="alpha", version="1.0.0", queue="slow"))
    consumer, now = _consumer("c1")
    publish("alpha", 2)
    assert consumer.loop_once(now, block=False).dispatched == 2
    assert redis_client.llen(keys.celery_queue("slow")) == 2 and not broker_tasks(redis_client)


def test_status_shows_flow_control(db, redis_client: redis.Redis, setenv) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.test_cli import invoke

    setenv(FIRST_SIP_MAX_CONCURRENCY="alpha=2", FIRST_SIP_LLM_RPM="30")
    add_plugin("alpha")
    add_plugin("beta")
    consumer, now = _consumer("c1", max_concurrency="alpha=2", llm_rpm=30)
    publish("alpha", 5)
    publish("beta", 1)
    consumer.loop_once(now, block=False)
    model = consumer._gate.budget.model
    ModelBudget(model, limit=30, window_seconds=60).take(redis_client)
    ModelBudget(model, limit=30, window_seconds=60).pause(redis_client, 30)
    rows = {r["plugin"]: r for r in json.loads(invoke("status", "--json").stdout)}
    alpha, beta = rows["alpha"], rows["beta"]
    assert (alpha["max_concurrency"], alpha["in_flight"], alpha["waiting"], alpha["queue"]) == (
        2,
        2,
        3,
        "runs",
    )
    assert (beta["max_concurrency"], beta["in_flight"], beta["waiting"]) == (None, None, 0)
    assert alpha["model"]["name"] == model and alpha["model"]["budget_used"] == 1
    assert alpha["model"]["budget_limit"] == 30 and alpha["model"]["paused_until"] is not None
    text = invoke("status").stdout
    assert "2/2" in text and f"model {model}: budget 1/30 per 60s; paused until" in text
