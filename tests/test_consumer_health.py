"""The consumer's health is honest: one plugin's broken stream is that plugin's problem, and a
failing dispatch loop makes ``consumer --check`` fail while the process is still alive.

Real Redis and PostgreSQL; the runner loop runs in a thread of the test process.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import redis
from typer.testing import CliRunner

from app import keys
from app.cli import cli
from app.db.models import RunStatus
from app.status import pipeline_status
from app.streams import heartbeat
from app.streams.consumer_process import run
from tests.streams_support import (
    add_plugin,
    broker_tasks,
    clear_broker,
    later,
    make_consumer,
    publish,
    run_row,
)

runner = CliRunner()


def test_a_wrong_type_stream_key_stops_only_its_plugin(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    for plugin in ("alpha", "beta"):
        add_plugin(plugin)
    consumer = make_consumer("c1")
    now = datetime.now(UTC)
    consumer.initialize(now)
    consumer.loop_once(now, block=False)
    # Someone overwrites alpha's stream with a string (WRONGTYPE for every stream command).
    redis_client.delete(keys.stream("alpha"))
    redis_client.set(keys.stream("alpha"), "oops")

    # Publishing: beta's runs go out, alpha's stay pending (the outbox retries them).
    alpha_runs = publish("alpha", 2)
    beta_runs = publish("beta", 3)
    assert {run_row(r).status for r in alpha_runs} == {RunStatus.PENDING}
    assert {run_row(r).status for r in beta_runs} == {RunStatus.QUEUED}

    # The loop goes on for beta: nothing raised, every beta run dispatched.
    for step in range(3):
        consumer.loop_once(later(now, 60 * (step + 1)), block=False)
    assert sorted(t.run_id for t in broker_tasks(redis_client)) == sorted(str(r) for r in beta_runs)
    assert "alpha" in consumer.broken and consumer.plugins == ["beta"]

    # first-sip status shows it, on alpha only.
    rows = {r.plugin: r for r in pipeline_status()}
    assert rows["alpha"].stream_error and "WRONGTYPE" in rows["alpha"].stream_error["error"]
    assert rows["beta"].stream_error is None
    shown = runner.invoke(cli, ["status"])
    assert shown.exit_code == 0 and "stream unusable since" in shown.stderr
    data = json.loads(runner.invoke(cli, ["status", "--json"]).stdout)
    assert [r["plugin"] for r in data if r["stream_error"]] == ["alpha"]

    # Repaired: the next plugin refresh takes alpha back, and the record goes away.
    redis_client.delete(keys.stream("alpha"))
    clear_broker(redis_client)
    consumer.loop_once(later(now, 3600), block=False)
    assert "alpha" in consumer.plugins and "alpha" not in consumer.broken
    assert not redis_client.hexists(keys.stream_errors(), "alpha")


def _check() -> tuple[int, str]:
    result = runner.invoke(cli, ["consumer", "--check"])
    return result.exit_code, result.output


def test_check_fails_once_the_loop_keeps_failing(db, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    add_plugin("alpha")
    consumer = make_consumer("c-health", stream_block_ms=100)
    stop = threading.Event()
    thread = threading.Thread(
        target=run, kwargs={"consumer": consumer, "stop": stop, "install_signals": False}, daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while _check()[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _check() == (0, "alive: c-health\n")

        # Break the dispatch path for everyone: Celery's queue key is now a string.
        queue = keys.celery_queue("runs")
        redis_client.delete(queue)
        redis_client.set(queue, "oops")
        publish("alpha", 1)
        deadline = time.monotonic() + 120
        while _check()[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        code, output = _check()
        assert code == 1 and "loop failed" in output and "c-health" in output, output
        health = heartbeat.health()
        assert health is not None and health.failures >= heartbeat.FAILING_ITERATIONS
        assert thread.is_alive()  # the process is alive: that is exactly why the check must fail

        # Repaired: the buffered task goes out, and the check passes again.
        redis_client.delete(queue)
        deadline = time.monotonic() + 120
        while _check()[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _check()[0] == 0
        assert len(broker_tasks(redis_client)) == 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert _check()[0] == 1  # released on a clean stop
