"""CPU profile of the worker's per-run path, in process: what one no-op run costs beyond Celery.

Calls :func:`app.execution.worker.execute` (claim, settings, crew thread under the
lease, completion, logs, XACK) for ``--runs`` no-op runs one after another, on real
PostgreSQL and Redis, and reports the process CPU time per run (all threads; CPU
time, not wall time, so other load on the machine barely moves it) and the top
functions by own time per run, the crew threads included (each is profiled on its own
and merged). This is the part of the whole-pipeline benchmark that is ours: Celery's
message handling is the same for the pipeline and its baseline.

Run: ``.venv/bin/python -m bench.profile_worker [--runs 2000] [--top 25]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import time
import uuid
from typing import Any

from bench.bench_pipeline import BENCH_PLUGINS
from bench.common import ROOT, private_environment


def _profiled_crew_threads(profiles: list[cProfile.Profile]) -> None:
    from app.execution import crew_thread

    original = crew_thread.CrewJob.run

    def run(self: Any) -> None:
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.runcall(original, self)

    crew_thread.CrewJob.run = run  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--all", metavar="FILE", help="write every function's figures to FILE (pstats: FILE.prof)"
    )
    parser.add_argument("--no-profile", action="store_true", help="CPU per run only (no profiler overhead)")
    args = parser.parse_args()
    with private_environment("prof"):
        os.environ["PLUGINS_DIR"] = os.pathsep.join([str(BENCH_PLUGINS), str(ROOT / "plugins")])
        os.environ["LOG_LEVEL"] = "INFO"  # as in the benchmark's worker
        from sqlalchemy import select

        from app import api, keys
        from app.config import get_settings
        from app.db.engine import session_scope
        from app.db.models import PluginRow
        from app.execution.worker import execute
        from app.logs import configure_logging
        from app.plugins.registry import discover
        from app.plugins.sync import sync_plugins
        from bench.bench_pipeline import _make_runs

        get_settings.cache_clear()
        devnull = open(os.devnull, "w")  # noqa: SIM115 - the log lines are formatted, then dropped
        configure_logging("INFO", json_output=True)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(devnull)
        with session_scope() as session:
            sync_plugins(session, discover(os.environ["PLUGINS_DIR"]))
            plugin_id = session.scalar(select(PluginRow.id).where(PluginRow.name == "noop"))
        user = api.create_user("bench@example.com")
        stream = keys.stream("noop")

        def run_all(ids: list[uuid.UUID]) -> None:
            for i, rid in enumerate(ids):
                result = execute(str(rid), plugin="noop", stream=stream, group=keys.GROUP, entry_id=f"1-{i}")
                assert result["status"] == "completed", result

        run_all(_make_runs(50, user.id, plugin_id))  # warm-up: imports, connections, caches
        ids = _make_runs(args.runs, user.id, plugin_id)
        crew_profiles: list[cProfile.Profile] = []
        main_profile = cProfile.Profile(time.thread_time)
        if not args.no_profile:
            _profiled_crew_threads(crew_profiles)
            main_profile.enable()
        cpu, wall = time.process_time(), time.perf_counter()
        run_all(ids)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        main_profile.disable()
    n = args.runs
    print(f"{n} runs: {cpu / n * 1e6:,.0f} us CPU per run, {wall / n * 1e6:,.0f} us wall per run")
    if args.no_profile:
        return
    stats = pstats.Stats(main_profile, stream=io.StringIO())
    for profile in crew_profiles:
        stats.add(profile)
    rows = []
    for (file, line, func), (_cc, calls, own, cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = (
            f"{os.path.relpath(file, ROOT) if file.startswith(str(ROOT)) else os.path.basename(file)}:{line}"
        )
        rows.append((own, cumulative, calls, f"{func} ({where})"))
    if args.all:
        stats.dump_stats(args.all + ".prof")
        with open(args.all, "w") as out:
            for own, cum, calls, name in sorted(rows, key=lambda r: r[1], reverse=True):
                out.write(f"{cum / n * 1e6:8.0f} {own / n * 1e6:8.0f}  {calls / n:6.1f}  {name}\n")
    print("\nby own time (us per run, calls per run):")
    for own, _cum, calls, name in sorted(rows, reverse=True)[: args.top]:
        print(f"  {own / n * 1e6:8.0f}  {calls / n:6.1f}  {name}")
    print("\nby cumulative time (us per run):")
    for _own, cum, calls, name in sorted(rows, key=lambda r: r[1], reverse=True)[: args.top * 2]:
        print(f"  {cum / n * 1e6:8.0f}  {calls / n:6.1f}  {name}")


if __name__ == "__main__":
    main()
