"""How late a due schedule's run is created, with real beat and a real worker.

Two stacks side by side, each with its own database, Redis prefix, beat and
worker (scheduler queue): the project's beat (:class:`AlignedSchedule`, ticks on
:00 and :30) and, as the baseline measured in the same run, Celery's plain
``schedule(30)``, which ticks 30 s after beat started. Each stack gets
``--configs`` schedules due at each of the next ``--minutes`` whole minutes.
For every run: created (``created_at``, the tick's clock when it started) and
published (the stream entry's id, Redis's clock at XADD) minus ``scheduled_for``.

Run: ``.venv/bin/python -m bench.bench_on_time [--configs 500] [--minutes 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.common import private_environment, write_section

VARIANTS = {"aligned": "app.celery_app:celery_app", "plain": "bench.beat_unaligned_app:celery_app"}
PLUGIN = "daily-news-digest"


def _populate(url: str, *, configs: int, minutes: list[datetime]) -> None:
    """``configs`` users due at each minute of ``minutes`` (preferred_time = that minute, UTC)."""
    from app.db.engine import session_scope
    from app.plugins.registry import discover
    from app.plugins.sync import sync_plugins

    os.environ["DATABASE_URL"] = url
    from app.config import get_settings

    get_settings.cache_clear()
    with session_scope() as session:
        sync_plugins(session, discover(get_settings().plugins_dir))
    with psycopg.connect(url) as conn:
        plugin_id, version, fingerprint = conn.execute(
            "SELECT id, version, schema_fingerprint FROM plugins WHERE name = %s", (PLUGIN,)
        ).fetchone()  # type: ignore[misc]
        for i, minute in enumerate(minutes):
            settings = f'{{"preferred_time": "{minute:%H:%M}", "topics": ["technology"]}}'
            conn.execute(
                "INSERT INTO users (email, timezone) SELECT 'm' || %(i)s || '-' || g || '@bench', 'UTC'"
                " FROM generate_series(1, %(n)s) g",
                {"i": i, "n": configs},
            )
            conn.execute(
                "INSERT INTO user_plugin_configs (user_id, plugin_id, settings, plugin_version,"
                " schema_fingerprint, enabled, next_run_at)"
                " SELECT u.id, %(pid)s, CAST(%(settings)s AS jsonb), %(ver)s, %(fp)s, true, %(due)s"
                " FROM users u WHERE u.email LIKE 'm' || %(i)s || '-%%'",
                {
                    "pid": plugin_id,
                    "settings": settings,
                    "ver": version,
                    "fp": fingerprint,
                    "due": minute,
                    "i": i,
                },
            )


def _start(name: str, args: list[str], env: dict[str, str], logs: Path) -> Any:
    import subprocess

    log = (logs / f"{name}.log").open("w")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _delays(url: str) -> dict[str, list[float]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT scheduled_for, created_at, stream_id FROM plugin_runs WHERE trigger = 'schedule'"
        ).fetchall()
    created = [(c - s).total_seconds() for s, c, _ in rows]
    published = [int(sid.split("-")[0]) / 1000 - s.timestamp() for s, _, sid in rows if sid]
    return {"created": created, "published": published}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", type=int, default=500, help="schedules due at each minute")
    parser.add_argument("--minutes", type=int, default=3)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    logs = Path(tempfile.mkdtemp(prefix="bench-on-time-"))
    start = datetime.now(UTC)
    first = start.replace(second=0, microsecond=0) + timedelta(minutes=2 if start.second > 30 else 1)
    minutes = [first + timedelta(minutes=k) for k in range(args.minutes)]
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        procs = []
        for variant, app in VARIANTS.items():
            urls[variant] = stack.enter_context(private_environment(f"ontime_{variant}"))
            _populate(urls[variant], configs=args.configs, minutes=minutes)
            env = {**os.environ, "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}
            celery = [str(bin_dir / "celery"), "-A", app]
            procs.append(
                _start(
                    f"{variant}-worker",
                    [*celery, "worker", "--pool=threads", "-c", "2", "-Q", "scheduler", "--without-gossip"],
                    env,
                    logs,
                )
            )
            schedule_file = logs / f"{variant}-beat-schedule"
            procs.append(
                _start(f"{variant}-beat", [*celery, "beat", f"--schedule={schedule_file}"], env, logs)
            )
        wait = (minutes[-1] + timedelta(seconds=45) - datetime.now(UTC)).total_seconds()
        print(
            f"configs due at {', '.join(f'{m:%H:%M}' for m in minutes)} UTC; waiting {wait:.0f} s", flush=True
        )
        time.sleep(max(wait, 0))
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        results = {variant: _delays(url) for variant, url in urls.items()}
        load = "{:.1f} / {:.1f}".format(*os.getloadavg()[:2])
    expected = args.configs * args.minutes
    lines = [
        "| beat schedule | runs | created - scheduled_for: p50 / p99 / max | published - scheduled_for: p50 / p99 |",
        "| --- | --- | --- | --- |",
    ]
    for variant, found in results.items():
        c, p = found["created"], found["published"]
        if not c:
            lines.append(f"| {variant} | 0 of {expected} | - | - |")
            continue
        lines.append(
            f"| {variant} | {len(c)} of {expected} | {_pct(c, 0.5):.2f} s / {_pct(c, 0.99):.2f} s / {max(c):.2f} s"
            f" | {_pct(p, 0.5):.2f} s / {_pct(p, 0.99):.2f} s |"
        )
    aligned, plain = results["aligned"]["created"], results["plain"]["created"]
    if aligned and plain:
        ratio = statistics.median(plain) / max(statistics.median(aligned), 1e-3)
        lines.append(f"\nMedian delay plain / aligned: **{ratio:.0f}x** (load average at the end {load}).")
    body = "\n".join(lines) + (
        f"\n\n`python -m bench.bench_on_time --configs {args.configs} --minutes {args.minutes}`: two stacks side by "
        "side (own database, Redis prefix, beat and worker on the scheduler queue); each has "
        f"{args.configs} schedules due at each of {args.minutes} whole minutes. `aligned` is the project's beat "
        "(`AlignedSchedule`: every 30 s on :00 and :30, plus 0.25 s so a worker clock slightly behind beat's "
        "still finds the minute's schedules due); `plain` is Celery's `schedule(30)`, which ticks 30 s after "
        "beat started, so its delay is wherever in the half-minute beat happened to start (uniform over "
        "0-30 s; this run's start is one sample of it). Created is the tick's clock when it started (the "
        "rows' `created_at`); published is Redis's clock at XADD (the stream entry id), so it includes the "
        "tick's own work for the minute's batch."
    )
    print(body)
    write_section("Scheduler on time (issue 13)", body)


if __name__ == "__main__":
    main()
