"""Execution benchmark: runs/s one worker completes for the 2-agent digest crew, next to the ceiling.

The offline model sleeps ``--delay`` seconds per call (1 s by default), so a
digest run (two agents, one call each) is LLM-bound like a real one. Measured
in one go on the same machine:

* ceiling — the same crews (the plugin's build_crew and kickoff, through the
  framework's CrewJob) kicked off directly in a thread pool of ``--threads``,
  with no Celery and no database;
* a real Celery worker, ``--pool threads -c <threads>``, on ``--runs`` runs;
* a real Celery worker, ``--pool prefork -c 2``, on ``--prefork-runs`` runs
  (it completes ~1 run/s, so a full ``--runs`` would take minutes);
* the worker's RSS after a warm-up and after the measured runs (threads pool:
  one process, never recycled; prefork: parent + children).

Run: ``.venv/bin/python -m bench.bench_execution [--runs 500] [--prefork-runs 60] [--no-write]``.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Timer, private_environment, write_section

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"topics": ["technology", "science"], "feeds": ["bundled:sample-feed.xml"], "max_items": 4}


# ---- the ceiling: crews in a thread pool, nothing else ---------------------------------------


def _one_crew(index: int) -> None:
    from app.config import get_settings
    from app.execution.contract import CrewContext
    from app.execution.crew_loader import entry_point_file, find_plugin
    from app.execution.crew_thread import CrewJob
    from app.execution.llm import make_llm
    from app.llm_config import model_name
    from app.plugins.settings import validate_settings

    settings = get_settings()
    plugin = find_plugin("daily-news-digest", settings.plugins_dir)
    ctx = CrewContext.create(
        run_id=f"ceiling-{index}",
        plugin=plugin.name,
        settings=validate_settings(plugin.spec, SETTINGS),
        llm=make_llm(settings),
        folder=plugin.folder,
        crew_folder=entry_point_file(plugin)[0].parent,
    )
    job = CrewJob(plugin, ctx, model_name(settings))
    job.run()
    if job.error is not None:
        raise job.error


def measure_ceiling(runs: int, threads: int) -> tuple[float, float]:
    """Crews per second with ``threads`` kicked off at once in this process, and CPU cores used."""
    from app.execution import runtime

    runtime.prepare()
    _one_crew(-1)  # imports and caches, off the clock
    cpu = time.process_time()
    with ThreadPoolExecutor(max_workers=threads) as pool, Timer() as timer:
        list(pool.map(_one_crew, range(runs)))
    return runs / timer.seconds, (time.process_time() - cpu) / timer.seconds


# ---- a real worker ---------------------------------------------------------------------------


def _read(path: str) -> str:
    # Threads and pool children come and go while we look: a vanished one reads as empty.
    try:
        return Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _rss_kib(pid: int) -> int:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in _read(f"{task}/children").split())
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its pool children so far."""
    total = 0.0
    for proc in [pid, *_children(pid)]:
        fields = _read(f"/proc/{proc}/stat").rpartition(")")[2].split()
        if fields:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def worker_rss_mib(pid: int) -> tuple[float, list[float]]:
    """RSS of the worker's main process and of each pool child, in MiB."""
    return _rss_kib(pid) / 1024, [_rss_kib(c) / 1024 for c in _children(pid)]


def _insert_runs(count: int) -> list[uuid.UUID]:
    from sqlalchemy import select

    from app.db.engine import session_scope
    from app.db.models import PluginRow, PluginRun, RunStatus, User

    with session_scope() as session:
        plugin_id = session.scalar(select(PluginRow.id).where(PluginRow.name == "daily-news-digest"))
        user = User(email=f"bench-{uuid.uuid4().hex[:8]}@bench", timezone="UTC")
        session.add(user)
        session.flush()
        ids = [uuid.uuid4() for _ in range(count)]
        session.add_all(
            PluginRun(
                run_id=rid,
                user_id=user.id,
                plugin_id=plugin_id,
                trigger="manual",
                status=RunStatus.QUEUED,
                input=SETTINGS,
            )
            for rid in ids
        )
    return ids


def _dispatch(ids: list[uuid.UUID]) -> None:
    from app.celery_app import celery_app
    from app.tasks import execute_run

    with celery_app.producer_or_acquire() as producer:
        for rid in ids:
            execute_run.apply_async(
                args=[str(rid)], kwargs={"plugin": "daily-news-digest"}, producer=producer
            )


def _finished(ids: list[uuid.UUID]) -> dict[str, int]:
    from sqlalchemy import func, select

    from app.db.engine import session_scope
    from app.db.models import TERMINAL_STATUSES, PluginRun

    with session_scope() as session:
        rows = session.execute(
            select(PluginRun.status, func.count())
            .where(PluginRun.run_id.in_(ids), PluginRun.status.in_([s.value for s in TERMINAL_STATUSES]))
            .group_by(PluginRun.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def _wait(ids: list[uuid.UUID], *, on_progress: object = None, timeout: float = 3600) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        done = _finished(ids)
        if callable(on_progress):
            on_progress(sum(done.values()))
        if sum(done.values()) >= len(ids):
            return done
        if time.monotonic() > deadline:
            raise RuntimeError(f"runs did not finish: {done}")
        time.sleep(0.1)


@dataclass
class WorkerResult:
    """One worker measurement."""

    pool: str
    concurrency: int
    runs: int
    seconds: float
    statuses: dict[str, int]
    rss_before: tuple[float, list[float]]
    rss_after: tuple[float, list[float]]
    rss_samples: list[tuple[int, float]] = field(default_factory=list)
    #: CPU cores the worker kept busy while the runs completed (parent + children).
    cores: float = 0.0

    @property
    def rate(self) -> float:
        """Runs completed per second."""
        return self.runs / self.seconds


def measure_worker(*, pool: str, concurrency: int, runs: int, delay: float) -> WorkerResult:
    """Start a real worker, warm it up, then time ``runs`` digest runs from dispatch to last completion."""
    from tests.processes import ManagedProcess, worker_args

    env = {"FIRST_SIP_OFFLINE_LLM_DELAY": str(delay), "LOG_LEVEL": "INFO"}
    worker = ManagedProcess(
        f"bench-{pool}", worker_args(pool=pool, concurrency=concurrency, queues="runs"), env=env
    )
    worker.start(ready=r"ready\.", timeout=120)
    try:
        warm = _insert_runs(concurrency)
        _dispatch(warm)
        _wait(warm)
        rss_before = worker_rss_mib(worker.pid)
        ids = _insert_runs(runs)
        samples: list[tuple[int, float]] = []

        def sample(done: int) -> None:
            if not samples or done >= samples[-1][0] + max(runs // 5, 1):
                main, children = worker_rss_mib(worker.pid)
                samples.append((done, main + sum(children)))

        cpu = cpu_seconds(worker.pid)
        with Timer() as timer:
            _dispatch(ids)
            statuses = _wait(ids, on_progress=sample)
        cores = (cpu_seconds(worker.pid) - cpu) / timer.seconds
        rss_after = worker_rss_mib(worker.pid)
    finally:
        worker.stop(timeout=60)
        worker.kill()
    return WorkerResult(
        pool, concurrency, runs, timer.seconds, statuses, rss_before, rss_after, samples, cores
    )


# ---- report ----------------------------------------------------------------------------------


def _rss(value: tuple[float, list[float]]) -> str:
    main, children = value
    if not children:
        return f"{main:.0f} MiB"
    return f"{main + sum(children):.0f} MiB (parent {main:.0f} + children {', '.join(f'{c:.0f}' for c in children)})"


def report(
    ceiling: tuple[float, float], threads: WorkerResult, prefork: WorkerResult, args: argparse.Namespace
) -> str:
    """The markdown section for bench/RESULTS.md."""
    ideal = args.threads / (2 * args.delay)
    ceiling_rate, ceiling_cores = ceiling
    lines = [
        f"Digest crew (2 agents, 1 offline-LLM call each, the LLM sleeps {args.delay:g} s per call), "
        f"bundled feed, topics technology + science. One worker, real PostgreSQL and Redis on the same machine.",
        "",
        "| measurement | runs | runs/s | x ceiling | CPU cores busy | RSS after warm-up -> after the runs |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| ceiling: {args.threads} crews at once in a thread pool, no Celery, no DB "
        f"| {args.runs} | {ceiling_rate:.2f} | 1.00 | {ceiling_cores:.2f} | - |",
        f"| worker `--pool threads -c {threads.concurrency}` | {threads.runs} | {threads.rate:.2f} "
        f"| **{threads.rate / ceiling_rate:.2f}** | {threads.cores:.2f} "
        f"| {_rss(threads.rss_before)} -> {_rss(threads.rss_after)} |",
        f"| worker `--pool prefork -c {prefork.concurrency}` | {prefork.runs} | {prefork.rate:.2f} "
        f"| {prefork.rate / ceiling_rate:.3f} | {prefork.cores:.2f} "
        f"| {_rss(prefork.rss_before)} -> {_rss(prefork.rss_after)} |",
        "",
        f"- threads pool / prefork -c 2: **{threads.rate / prefork.rate:.1f}x** the runs/s.",
        f"- Latency bound for {args.threads} concurrent crews: {args.threads} / (2 calls x {args.delay:g} s) "
        f"= {ideal:.0f} runs/s; the ceiling reaches {ceiling_rate / ideal:.0%} of it.",
        "- Threads-pool RSS while the runs completed (runs done: MiB): "
        + ", ".join(f"{done}: {mib:.0f}" for done, mib in threads.rss_samples)
        + ".",
        f"- Outcomes: threads {threads.statuses}, prefork {prefork.statuses}.",
        "",
        "What limits each:",
        "",
        "- **Ceiling**: one Python process. CrewAI spends about 50 ms of CPU per 2-task crew (its agent "
        "executor builds a Flow with a freshly created pydantic state model for every task, and emits events "
        "through its bus), so 50 crews at once queue for the GIL: each takes about 4 s instead of the 2 s "
        "of model time, and the process never gets near the latency bound.",
        "- **Threads pool**: the same GIL, plus per run a Celery message, three short PostgreSQL "
        "transactions (claim, complete, a lease renewal every LEASE_SECONDS/3) and JSON log lines. "
        "More runs/s means more worker processes (or hosts), each with its own GIL.",
        "- **Prefork -c 2**: two crews at a time, so at most 2 / (2 calls x 1 s) = 1 run/s, and each "
        "child holds its own copy of CrewAI (~230 MiB). It is the pool that can stop a timed-out crew "
        "for real; use it for crews that may hang in CPU-bound code, threads for everything LLM-bound.",
        "- **RSS**: the threads worker grows during the first ~100 runs (arenas sized for 50 concurrent "
        "crews) and then stays flat; an in-process check of 2,000 crews showed a flat count of live "
        "Python objects. No per-run leak: the workers never cache crews, agents or LLMs.",
    ]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print (and, unless --no-write, record) the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=500, help="runs for the ceiling and the threads pool")
    parser.add_argument("--prefork-runs", type=int, default=60, help="runs for the prefork -c 2 worker")
    parser.add_argument(
        "--threads", type=int, default=50, help="threads-pool concurrency (and ceiling threads)"
    )
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the offline LLM sleeps per call")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()

    with private_environment("exec"):
        os.environ.update(
            {"FIRST_SIP_OFFLINE_LLM_DELAY": str(args.delay), "PLUGINS_DIR": str(ROOT / "plugins")}
        )
        from app.config import get_settings
        from app.db.engine import session_scope
        from app.plugins.registry import discover
        from app.plugins.sync import sync_plugins

        get_settings.cache_clear()
        with session_scope() as session:
            sync_plugins(session, discover(get_settings().plugins_dir))
        print(f"ceiling: {args.runs} crews, {args.threads} threads ...", flush=True)
        ceiling = measure_ceiling(args.runs, args.threads)
        print(f"  {ceiling[0]:.2f} runs/s, {ceiling[1]:.2f} cores", flush=True)
        print(f"threads pool -c {args.threads}: {args.runs} runs ...", flush=True)
        threads = measure_worker(pool="threads", concurrency=args.threads, runs=args.runs, delay=args.delay)
        print(f"  {threads.rate:.2f} runs/s ({threads.rate / ceiling[0]:.2f}x ceiling)", flush=True)
        print(f"prefork -c 2: {args.prefork_runs} runs ...", flush=True)
        prefork = measure_worker(pool="prefork", concurrency=2, runs=args.prefork_runs, delay=args.delay)
        print(f"  {prefork.rate:.2f} runs/s", flush=True)
    body = report(ceiling, threads, prefork, args)
    print("\n" + body)
    if not args.no_write:
        write_section("Execution (issue 3)", body)


if __name__ == "__main__":
    main()
