"""@CrewBase memory benchmark: 1,000 runs of the classic CrewAI crew in one threads-pool worker.

CrewAI's ``@agent``/``@task``/``@crew`` memoization keeps what every crew
instance built in one process-wide cache keyed by ``id(instance)``. The
framework evicts a run's instance after the run. Measured in one go, on the
project ``crewai create crew newsroom --classic`` generates (made in a temp
folder by the installed CLI, plus ``plugin.yaml`` and ``settings.schema.json``):

* **evicted** — ``entry_point: src/newsroom/crew.py:Newsroom``: the framework
  instantiates the class, injects the LLM, kicks off, evicts;
* **baseline** — the same class from a ``build_crew(ctx)`` function that does
  what a CrewAI user's ``main.py`` does (``Newsroom().crew()``, here with the
  run's LLM put on each agent): nothing is evicted.

Each variant gets a fresh worker (``--pool threads -c 8``), 50 warm-up runs,
then ``--runs`` runs, each with its own ``topic``; the worker's RSS is sampled
every ``--runs/10`` completions. A run whose recorded agent role is not built
from its own topic would be a stale memo hit (a mismatch).

Run: ``.venv/bin/python -m bench.bench_crewbase [--runs 1000] [--no-write]``. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_execution import _wait, worker_rss_mib
from bench.common import Timer, private_environment, write_section

CONCURRENCY = 8
WARM_UP = 50

BASELINE = '''\
"""The classic crew the way a CrewAI user's main.py runs it: Newsroom().crew(), never evicted."""

from .crew import Newsroom


def build_crew(ctx):
    crew = Newsroom().crew()
    for agent in crew.agents:
        agent.llm = ctx.llm
    inputs = {"topic": ctx.settings["topic"], "current_year": "2026"}
    return ctx.plan(crew, inputs)
'''


def make_plugins(root: Path) -> None:
    """``newsroom`` (the generated project as a plugin) and ``baseline`` (the same crew via a function)."""
    from tests.crewai_projects import add_plugin_files, classic_plugin

    classic_plugin(root, "newsroom")
    baseline = root / "baseline"
    shutil.copytree(root / "newsroom", baseline, ignore=shutil.ignore_patterns(".git"))
    (baseline / "src" / "newsroom" / "bench_baseline.py").write_text(BASELINE)
    add_plugin_files(baseline, "src/newsroom/bench_baseline.py:build_crew")


def _insert(plugin: str, count: int, start: int) -> list[uuid.UUID]:
    from sqlalchemy import select

    from app.db.engine import session_scope
    from app.db.models import PluginRow, PluginRun, RunStatus, User

    with session_scope() as session:
        plugin_id = session.scalar(select(PluginRow.id).where(PluginRow.name == plugin))
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
                input={"topic": f"topic {start + i}"},
            )
            for i, rid in enumerate(ids)
        )
    return ids


def _dispatch(plugin: str, ids: list[uuid.UUID]) -> None:
    from app.celery_app import celery_app
    from app.tasks import execute_run

    with celery_app.producer_or_acquire() as producer:
        for rid in ids:
            execute_run.apply_async(args=[str(rid)], kwargs={"plugin": plugin}, producer=producer)


def _mismatches(ids: list[uuid.UUID]) -> int:
    from sqlalchemy import select

    from app.db.engine import session_scope
    from app.db.models import PluginRun

    bad = 0
    with session_scope() as session:
        for run_input, output in session.execute(
            select(PluginRun.input, PluginRun.output).where(PluginRun.run_id.in_(ids))
        ):
            roles = [str(t["agent"]) for t in (output or {}).get("tasks", [])]
            if not roles or not all(role.startswith(f"{run_input['topic']} ") for role in roles):
                bad += 1
    return bad


@dataclass
class Variant:
    """One worker's measurement."""

    name: str
    runs: int
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[int, float]] = field(default_factory=list)
    mismatches: int = 0

    @property
    def growth(self) -> float:
        """MiB the worker grew from the first sample (after warm-up) to the last."""
        return self.samples[-1][1] - self.samples[0][1]

    @property
    def second_half(self) -> float:
        """MiB grown over the second half of the runs (arenas and caches have settled by then)."""
        middle = min(self.samples, key=lambda s: abs(s[0] - self.runs / 2))
        return self.samples[-1][1] - middle[1]


def measure(plugin: str, runs: int, plugins_dir: Path) -> Variant:
    """A fresh threads-pool worker; warm up, then ``runs`` runs with RSS sampled along the way."""
    from tests.processes import ManagedProcess, worker_args

    env = {"PLUGINS_DIR": str(plugins_dir), "LOG_LEVEL": "INFO"}
    worker = ManagedProcess(
        f"bench-crewbase-{plugin}",
        worker_args(pool="threads", concurrency=CONCURRENCY, queues="runs"),
        env=env,
    )
    worker.start(ready=r"ready\.", timeout=120)
    result = Variant(plugin, runs)
    try:
        warm = _insert(plugin, WARM_UP, -WARM_UP)
        _dispatch(plugin, warm)
        _wait(warm)
        time.sleep(1)
        result.samples.append((0, worker_rss_mib(worker.pid)[0]))
        ids = _insert(plugin, runs, 0)
        step = max(runs // 10, 1)

        def sample(done: int) -> None:
            if done >= result.samples[-1][0] + step:
                result.samples.append((done, worker_rss_mib(worker.pid)[0]))

        with Timer() as timer:
            _dispatch(plugin, ids)
            result.statuses = _wait(ids, on_progress=sample)
        result.seconds = timer.seconds
        result.samples.append((runs, worker_rss_mib(worker.pid)[0]))
        result.mismatches = _mismatches(ids)
    finally:
        worker.stop(timeout=60)
        worker.kill()
    return result


def report(evicted: Variant, baseline: Variant) -> str:
    """The markdown section for bench/RESULTS.md."""

    def row(v: Variant) -> str:
        return (
            f"| {v.name} | {v.runs} | {v.runs / v.seconds:.1f} | {v.samples[0][1]:.0f} -> {v.samples[-1][1]:.0f} "
            f"| **{v.growth:+.0f}** | {v.growth / v.runs * 1024:.1f} | {v.mismatches} | {v.statuses} |"
        )

    per_run = (baseline.growth - evicted.growth) / baseline.runs * 1024
    ratio = baseline.growth / evicted.growth if evicted.growth > 0 else float("inf")
    lines = [
        "`crewai create crew newsroom --classic` as generated (2 agents, 2 tasks, offline model, no delay), "
        f"one worker `--pool threads -c {CONCURRENCY}`, {WARM_UP} warm-up runs, then the measured runs; "
        "each run has its own topic. Real PostgreSQL and Redis on the same machine.",
        "",
        "| variant | runs | runs/s | RSS after warm-up -> end (MiB) | growth (MiB) | KiB per run "
        "| mismatches | outcomes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        row(evicted).replace("| newsroom |", "| `@CrewBase` entry point (evicted after each run) |"),
        row(baseline).replace(
            "| baseline |", "| same crew via `build_crew`, `Newsroom().crew()` (no eviction) |"
        ),
        "",
        "RSS (runs done: MiB):",
        "",
        "- evicted: " + ", ".join(f"{d}: {m:.0f}" for d, m in evicted.samples),
        "- baseline: " + ", ".join(f"{d}: {m:.0f}" for d, m in baseline.samples),
        "",
        f"- Eviction saves about **{per_run:.0f} KiB per run** here: the baseline grew "
        f"**{ratio:.1f}x** as much ({baseline.growth:+.0f} MiB vs {evicted.growth:+.0f} MiB over "
        f"{baseline.runs} runs).",
        f"- Second half of the runs (settled): evicted {evicted.second_half:+.0f} MiB, "
        f"baseline {baseline.second_half:+.0f} MiB. With eviction the worker grows only while its "
        "allocator arenas warm up to the concurrency, then stays flat; without it, it grows for as "
        "long as it runs.",
        "- A mismatch is a run whose agents were not built from its own topic (a stale memo hit): "
        "none in either variant (without eviction instances stay alive in the cache, so their ids are "
        "never reused; the leak is the cost).",
    ]
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print (and, unless --no-write, record) the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-crewbase-") as tmp, private_environment("crewbase"):
        plugins_dir = Path(tmp) / "plugins"
        plugins_dir.mkdir()
        make_plugins(plugins_dir)
        os.environ["PLUGINS_DIR"] = str(plugins_dir)
        from app.config import get_settings
        from app.db.engine import session_scope
        from app.plugins.registry import discover
        from app.plugins.sync import sync_plugins

        get_settings.cache_clear()
        with session_scope() as session:
            sync_plugins(session, discover(plugins_dir))
        results = {}
        for plugin in ("newsroom", "baseline"):
            print(f"{plugin}: {args.runs} runs ...", flush=True)
            results[plugin] = measure(plugin, args.runs, plugins_dir)
            v = results[plugin]
            print(
                f"  {v.runs / v.seconds:.1f} runs/s, RSS {v.samples[0][1]:.0f} -> {v.samples[-1][1]:.0f} MiB",
                flush=True,
            )
    body = report(results["newsroom"], results["baseline"])
    print("\n" + body)
    if not args.no_write:
        write_section("@CrewBase memo eviction (issue 10)", body)


if __name__ == "__main__":
    main()
