"""Whole-pipeline benchmark on real PostgreSQL, Redis, consumer and Celery worker.

(1) End-to-end no-op runs/s: row -> XADD -> consumer -> Celery -> worker (claim, crew, complete)
    -> XACK, next to the baseline measured in the same run with the same worker: a plain Celery
    task doing one database write (goal: >= 0.8 x baseline).
(2) Trigger -> worker start latency on a warm system, one run at a time: p50 / p99
    (goal: p50 <= 20 ms, p99 <= 100 ms).
(3) RSS of beat, the consumer and the worker, idle and after the runs (goal: beat and consumer
    <= 80 MB; neither imports CrewAI).

Run: ``.venv/bin/python -m bench.bench_pipeline [--runs 2000] [--latency 200]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from pathlib import Path

from sqlalchemy import select, text

from bench.common import ROOT, Timer, private_environment, write_section
from tests.processes import VENV_BIN, ManagedProcess

BENCH_PLUGINS = ROOT / "bench" / "plugins"


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its children, in MB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start(env: dict[str, str], concurrency: int) -> dict[str, ManagedProcess]:
    celery = [str(VENV_BIN / "celery"), "-A", "bench.baseline_app:celery_app"]
    procs = {
        "worker": ManagedProcess(
            "bench-worker",
            [
                *celery,
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency}",
                "--queues=runs,scheduler",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ],
            env=env,
        ),
        "consumer": ManagedProcess("bench-consumer", [str(VENV_BIN / "first-sip"), "consumer"], env=env),
        "beat": ManagedProcess(
            "bench-beat",
            [*celery, "beat", f"--schedule=/tmp/bench-beat-{os.getpid()}", "--loglevel=INFO"],
            env=env,
        ),
    }
    ready = {"worker": r"ready\.", "consumer": r"consumer \S+ ready", "beat": r"beat: Starting"}
    try:
        for name, proc in procs.items():
            proc.start(ready=ready[name], timeout=120)
    except Exception:
        for proc in procs.values():  # never leave a half-started fleet behind
            proc.kill()
        raise
    return procs


def _wait_count(sql: str, target: int, timeout: float = 600) -> None:
    from app.db.engine import get_engine

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_engine().connect() as conn:
            if conn.execute(text(sql)).scalar_one() >= target:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{sql} did not reach {target}")


def bench_baseline(n: int) -> float:
    from app.celery_app import celery_app
    from bench.baseline_app import noop_write

    with Timer() as timer, celery_app.producer_or_acquire() as producer:
        for _ in range(n):
            noop_write.apply_async(args=(str(uuid.uuid4()),), producer=producer)
        _wait_count("SELECT count(*) FROM bench_baseline", n)
    return n / timer.seconds


def _make_runs(n: int, user_id: int, plugin_id: int) -> list[uuid.UUID]:
    from app.db.engine import session_scope
    from app.db.models import PluginRun, RunStatus

    ids = [uuid.uuid4() for _ in range(n)]
    with session_scope() as session:
        session.add_all(
            PluginRun(
                run_id=rid,
                user_id=user_id,
                plugin_id=plugin_id,
                trigger="manual",
                status=RunStatus.PENDING,
                input={},
            )
            for rid in ids
        )
    return ids


def bench_pipeline(n: int, user_id: int, plugin_id: int) -> float:
    from app.db.engine import session_scope
    from app.db.models import utcnow
    from app.streams.producer import RunRef, publish_runs

    ids = _make_runs(n, user_id, plugin_id)  # rows exist first (outbox); time starts at publish
    with Timer() as timer:
        with session_scope() as session:
            for i in range(0, n, 500):
                refs = [RunRef(rid, "noop", user_id) for rid in ids[i : i + 500]]
                publish_runs(session, refs, now=utcnow())
        _wait_count("SELECT count(*) FROM plugin_runs WHERE status = 'completed'", n)
    return n / timer.seconds


def bench_latency(count: int, user_id: int) -> tuple[float, float]:
    from app import api
    from app.db.engine import session_scope
    from app.db.models import PluginRun

    latencies = []
    for _ in range(count):
        run = api.trigger_run(user_id, "noop")
        info = api.wait_for_run(run.run_id, timeout=30, poll=0.002)
        with session_scope() as session:
            created = session.scalar(select(PluginRun.created_at).where(PluginRun.run_id == run.run_id))
        assert info.started_at is not None and created is not None
        latencies.append((info.started_at - created).total_seconds() * 1000)
    latencies.sort()
    return statistics.median(latencies), latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with private_environment("pipe"):
        os.environ["PLUGINS_DIR"] = os.pathsep.join([str(BENCH_PLUGINS), str(ROOT / "plugins")])
        from app import api
        from app.config import get_settings
        from app.db.engine import get_engine, session_scope
        from app.db.models import PluginRow
        from app.plugins.registry import discover
        from app.plugins.sync import sync_plugins

        get_settings.cache_clear()
        with get_engine().begin() as conn:
            conn.execute(text("CREATE TABLE bench_baseline (id serial PRIMARY KEY, marker uuid)"))
        with session_scope() as session:
            sync_plugins(session, discover(os.environ["PLUGINS_DIR"]))
            plugin_id = session.scalar(select(PluginRow.id).where(PluginRow.name == "noop"))
        user = api.create_user("bench@example.com")
        env = {**os.environ, "LOG_LEVEL": "INFO"}
        procs = _start(env, args.concurrency)
        try:
            time.sleep(2)
            idle = {name: rss_mb(p.pid) for name, p in procs.items()}
            bench_baseline(200)  # warm-up: connections, imports, CrewAI loaded in the worker
            bench_pipeline(200, user.id, plugin_id)
            with get_engine().begin() as conn:
                conn.execute(text("TRUNCATE bench_baseline; DELETE FROM plugin_runs"))
            # The worker's CPU per task: what decides the ratio on a quiet machine, and far less
            # sensitive than runs/s to other load on a shared one.
            worker_pid = procs["worker"].pid
            cpu0 = cpu_seconds(worker_pid)
            baseline = bench_baseline(args.runs)
            cpu1 = cpu_seconds(worker_pid)
            pipeline = bench_pipeline(args.runs, user.id, plugin_id)
            cpu2 = cpu_seconds(worker_pid)
            p50, p99 = bench_latency(args.latency, user.id)
            after = {name: rss_mb(p.pid) for name, p in procs.items()}
        finally:
            for p in procs.values():
                p.stop(timeout=30)
    ratio = pipeline / baseline
    base_cpu, pipe_cpu = (cpu1 - cpu0) / args.runs * 1000, (cpu2 - cpu1) / args.runs * 1000
    rows = [
        "| figure | value | goal |",
        "| --- | --- | --- |",
        f"| plain Celery no-op task + 1 DB write (baseline), {args.runs:,} tasks | {baseline:,.0f} tasks/s | |",
        f"| full pipeline no-op runs, {args.runs:,} runs | {pipeline:,.0f} runs/s | |",
        f"| ratio pipeline / baseline | **{ratio:.2f}x** | >= 0.8 |",
        f"| worker CPU per task: baseline / pipeline | {base_cpu:.2f} ms / {pipe_cpu:.2f} ms | |",
        f"| ratio of CPU per task, baseline / pipeline | **{base_cpu / pipe_cpu:.2f}x** | |",
        f"| trigger -> worker start, p50 ({args.latency} sequential runs, warm) | **{p50:.1f} ms** | <= 20 ms |",
        f"| trigger -> worker start, p99 | **{p99:.1f} ms** | <= 100 ms |",
        *(
            f"| RSS {name}: idle / after {args.runs * 2 + 400 + args.latency:,} tasks | {idle[name]:.0f} MB / {after[name]:.0f} MB | "
            + ("<= 80 MB" if name != "worker" else "")
            + " |"
            for name in procs
        ),
    ]
    body = "\n".join(rows) + (
        f"\n\nSame worker for both ({args.concurrency} threads, prefetch 1, acks late). "
        "What limits the ratio: the worker process is CPU-bound (one core at 100% under the GIL; "
        "py-spy --gil). Per task it pays what the baseline pays (Celery's message handling, three "
        "task events, the ack) plus the run's own bookkeeping: the compare-and-set claim and the "
        "fenced end of the attempt (two prebuilt single-statement writes in autocommit), the input "
        "re-validated against the plugin's JSON Schema, a crew thread under the lease supervisor, "
        "one log line and an XACK, where the "
        "baseline has one INSERT. The consumer, PostgreSQL and Redis share the other core. "
        "Throughput grows with worker processes, not with threads in one process. "
        "Latency is from the row's creation (API call) to the worker's claim; an idle consumer "
        "wakes on the producer's doorbell. The worker's per-run CPU profile: bench/profile_worker.py. "
        "Beat and the consumer never import CrewAI "
        "(tests/test_light_processes.py); their RSS is SQLAlchemy, psycopg, Celery/kombu, redis-py "
        "and pydantic-settings, about 70 MB of imports before any work."
    )
    print(body)
    write_section("Whole pipeline (issue 7)", body)


if __name__ == "__main__":
    main()
