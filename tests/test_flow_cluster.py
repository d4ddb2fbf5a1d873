"""Flow control across a real cluster: two Celery workers, two consumer processes, the LLM test server.

The workers reach the LLM test server (tests/llm_server.py) through CrewAI's
real OpenAI provider, and every figure is measured *at the server*: which
runs had requests in flight at the same time, how many requests arrived in
any rolling window, when requests arrived after a 429. The ``flow-probe``
plugin's prompts name their run, so the server can tell runs apart.
"""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
import redis
from sqlalchemy import select

from app import keys
from app.db.engine import session_scope
from app.db.models import PluginRun, RunStatus
from app.flow import slots
from tests.llm_server import LLMServer, Reply, Request
from tests.plugins.harness import PLUGINS_DIR, sync_test_plugins
from tests.processes import ManagedProcess, worker_args
from tests.streams_support import publish

PLUGIN = "flow-probe"
RUN_RE = re.compile(r"run ([0-9a-f-]{36})")
#: Generous: a limit for a hung test, never a performance threshold.
WAIT = 180.0

pytestmark = pytest.mark.usefixtures("db", "redis_client")


def _env(server: LLMServer, **flow: str) -> dict[str, str]:
    return {
        **server.env(),
        "PLUGINS_DIR": PLUGINS_DIR,
        "VISIBILITY_TIMEOUT_SECONDS": "10",
        "RECLAIM_INTERVAL_SECONDS": "1",
        "STREAM_BLOCK_MS": "1000",
        "LOG_LEVEL": "INFO",
        **flow,
    }


@contextmanager
def cluster(env: dict[str, str], *, workers: int = 2, consumers: int = 2) -> Iterator[list[ManagedProcess]]:
    """Workers and consumers for the duration of the block (killed if they will not stop).

    All are started at once and then waited for: each spends seconds importing, and a
    worker builds the configured LLM before it is ready.
    """
    sync_test_plugins()  # before the consumers start: they read the plugins table at start-up
    with ExitStack() as stack:
        procs: list[tuple[ManagedProcess, str]] = []
        for i in range(workers):
            worker = ManagedProcess(f"flow-worker-{i}", worker_args(pool="threads", concurrency=4), env=env)
            procs.append((worker, r"ready\."))
        for i in range(consumers):
            consumer = ManagedProcess(
                f"flow-consumer-{i}", [sys.executable, "-m", "app", "consumer"], env=env
            )
            procs.append((consumer, r"consumer \S+ ready"))
        for process, _ready in procs:
            process.start()
            stack.callback(process.kill)
        for process, ready in procs:
            process.wait_for(ready, timeout=WAIT)
        yield [process for process, _ready in procs]


def submit(n: int, *, calls: int) -> list[uuid.UUID]:
    """``n`` runs of the probe plugin, published to its stream as the producer does."""
    sync_test_plugins()
    run_ids = publish(PLUGIN, n)
    with session_scope() as session:
        for row in session.scalars(select(PluginRun).where(PluginRun.run_id.in_(run_ids))):
            row.input = {"calls": calls}
    return run_ids


def statuses(run_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    with session_scope() as session:
        rows = session.execute(
            select(PluginRun.run_id, PluginRun.status).where(PluginRun.run_id.in_(run_ids))
        )
        return {run_id: status for run_id, status in rows}


def wait_done(run_ids: list[uuid.UUID], *, timeout: float = WAIT) -> dict[uuid.UUID, str]:
    """Poll until every run is terminal; returns their statuses."""
    deadline = time.monotonic() + timeout
    while True:
        now = statuses(run_ids)
        if all(RunStatus(s).is_terminal for s in now.values()):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"runs not finished: {sorted(set(now.values()))}")
        time.sleep(0.2)


def run_of(request: Request) -> str | None:
    """The run a request belongs to (the probe's prompts name it)."""
    for message in request.messages:
        found = RUN_RE.search(str(message.get("content", "")))
        if found:
            return found.group(1)
    return None


def runs_in_flight_at_the_server(requests: list[Request]) -> int:
    """Most runs whose first request had arrived and whose last had not finished, at any moment."""
    spans: dict[str, list[float]] = {}
    for r in requests:
        run = run_of(r)
        assert run is not None, f"request {r.index} names no run"
        end = r.finished_at if r.finished_at is not None else float("inf")
        span = spans.setdefault(run, [r.at, end])
        span[0], span[1] = min(span[0], r.at), max(span[1], end)
    events = sorted([(s, 1) for s, _e in spans.values()] + [(e, -1) for _s, e in spans.values()])
    most = current = 0
    for _t, step in events:  # at equal times the end (-1) sorts first: touching spans do not overlap
        current += step
        most = max(most, current)
    return most


def most_in_any_window(requests: list[Request], window: float) -> int:
    """Most requests that arrived within any rolling ``window`` seconds."""
    times = sorted(r.monotonic for r in requests)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


# ---- the tests --------------------------------------------------------------------------------


def test_max_concurrency_holds_across_the_cluster() -> None:
    # Slow answers so runs overlap whenever they may; 8 worker threads, cap 2 (the manifest's).
    with LLMServer(default=Reply(delay=0.3)) as server, cluster(_env(server)):
        run_ids = submit(20, calls=2)
        assert set(wait_done(run_ids).values()) == {RunStatus.COMPLETED}
        requests = server.completions()
    assert len(requests) == 40 and {run_of(r) for r in requests} == {str(r) for r in run_ids}
    assert runs_in_flight_at_the_server(requests) == 2  # never more, and the cap was reached
    assert server.max_in_flight <= 2


def test_request_budget_holds_across_the_cluster() -> None:
    # 5 requests per 2 s for the whole cluster; the server answers 429 above the same limit.
    window, limit = 2.0, 5
    with LLMServer(rpm_limit=limit, window_seconds=window) as server:
        env = _env(
            server,
            FIRST_SIP_LLM_RPM=str(limit),
            FIRST_SIP_LLM_BUDGET_WINDOW_SECONDS=str(window),
            FIRST_SIP_MAX_CONCURRENCY=f"{PLUGIN}=none",
        )
        with cluster(env):
            run_ids = submit(20, calls=1)
            assert set(wait_done(run_ids).values()) == {RunStatus.COMPLETED}
            requests = server.completions()
    assert len(requests) == 20 and server.count(status=429) == 0
    assert most_in_any_window(requests, window) <= limit


def test_a_429_pauses_dispatch_and_requests_cluster_wide(redis_client: redis.Redis) -> None:
    with LLMServer() as server:
        env = _env(server, FIRST_SIP_MAX_CONCURRENCY=f"{PLUGIN}=none")
        model = env["FIRST_SIP_LLM_MODEL"]
        server.enqueue(Reply(status=429, retry_after=6))
        with cluster(env):
            (first,) = submit(1, calls=1)
            deadline = time.monotonic() + WAIT
            while not redis_client.exists(keys.pause(model)):  # the worker that got the 429 paused it
                assert time.monotonic() < deadline, "no pause after a 429"
                time.sleep(0.05)
            later = submit(6, calls=1)
            pause_ends = time.time() + max(redis_client.pttl(keys.pause(model)), 0) / 1000
            time.sleep(2)  # well inside the pause: nothing went to Celery, nobody claimed a run
            assert redis_client.exists(keys.pause(model))
            assert redis_client.llen(keys.celery_queue("runs")) == 0
            assert set(statuses(later).values()) == {RunStatus.QUEUED}
            assert set(wait_done(later).values()) == {RunStatus.COMPLETED}
            requests = server.completions()
    after = [r for r in requests if run_of(r) in {str(r) for r in later}]
    assert len(after) == 6
    # Redis's TTL ended the pause; 50 ms covers reading the TTL above (ms resolution, one round trip).
    assert min(r.at for r in after) >= pause_ends - 0.05
    assert requests[0].status == 429 and run_of(requests[0]) == str(first)


def test_a_killed_workers_slot_comes_back_after_its_lease(redis_client: redis.Redis) -> None:
    with LLMServer() as server:
        # The dead worker's run is reclaimed only after 40 s: the waiting run must get the
        # slot before that, from the lease's end alone.
        env = _env(
            server,
            FIRST_SIP_MAX_CONCURRENCY=f"{PLUGIN}=1",
            LEASE_SECONDS="3",
            VISIBILITY_TIMEOUT_SECONDS="40",
        )
        server.enqueue(Reply(hang=True))  # the first run's request never answers: its worker dies
        with cluster(env, workers=1) as procs:
            stuck, waiting = submit(2, calls=1)
            server.wait_for(1, timeout=WAIT)
            assert slots.in_flight(redis_client, [PLUGIN]) == {PLUGIN: 1}
            procs[0].kill()  # SIGKILL: the slot is never released, only its lease ends
            assert statuses([waiting]) == {waiting: RunStatus.QUEUED}
            server.release()
            with cluster(env, workers=1, consumers=0):
                assert wait_done([waiting]) == {waiting: RunStatus.COMPLETED}
                assert statuses([stuck]) == {stuck: RunStatus.PROCESSING}  # not reclaimed yet
                # The dead worker's slot ended with its lease; the reclaim of its run (after the
                # visibility timeout) is the consumer's ordinary job, tested on its own elsewhere.
                assert slots.in_flight(redis_client, [PLUGIN]) == {PLUGIN: 0}


def test_status_shows_the_budget_the_cluster_runs_not_this_shells_settings() -> None:
    from app.config import get_settings
    from app.flow.policy import model_budget
    from app.status import pipeline_status

    with LLMServer() as server:
        env = _env(server, FIRST_SIP_LLM_RPM="50", FIRST_SIP_MAX_CONCURRENCY=f"{PLUGIN}=none")
        with cluster(env, workers=1, consumers=1):
            run_ids = submit(3, calls=1)
            assert set(wait_done(run_ids).values()) == {RunStatus.COMPLETED}
            # This process has neither the cluster's model nor its budget in its environment.
            local = model_budget(get_settings())
            assert local.model != env["FIRST_SIP_LLM_MODEL"] and local.limit is None
            (row,) = [r for r in pipeline_status() if r.plugin == PLUGIN]
    assert row.model is not None
    assert (row.model.name, row.model.budget_limit, row.model.budget_used) == (
        env["FIRST_SIP_LLM_MODEL"],
        50,
        server.count(),
    )
