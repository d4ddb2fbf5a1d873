"""Scheduler benchmark on real PostgreSQL and Redis.

(a) Tick time with 1,000 due configs in tables of 10,000 and 1,000,000 configs:
    the ratio shows whether cost follows what is due (goal <= 1.5).
(b) The 06:00 rush: 100,000 and 1,000,000 configs due at the same minute ->
    time until all are run rows and stream entries (goal >= 5,000 schedules/s
    at 1M), and the 1M rate over the 100k rate measured in the same run (flat: ~1.0).

Run: ``.venv/bin/python -m bench.bench_scheduler [--large 1000000] [--rush 100000 1000000]``.
Where the time goes, slice by slice: ``.venv/bin/python -m bench.profile_rush``.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

from sqlalchemy import text

from bench.common import Timer, private_environment, write_section

NOW = datetime(2026, 6, 1, 6, 0, 30, tzinfo=UTC)
DUE = datetime(2026, 6, 1, 6, 0, tzinfo=UTC)
FUTURE = datetime(2026, 6, 2, 6, 0, tzinfo=UTC)


def _populate(total: int, due: int) -> None:
    """``total`` users each with a daily-news-digest config; ``due`` of them due at 06:00."""
    from app.config import get_settings
    from app.db.engine import get_engine, session_scope
    from app.db.models import PluginRow
    from app.plugins.registry import discover
    from app.plugins.sync import sync_plugins

    with session_scope() as session:
        sync_plugins(session, discover(get_settings().plugins_dir))
        plugin = session.query(PluginRow).filter_by(name="daily-news-digest").one()
        plugin_id, fingerprint, version = plugin.id, plugin.schema_fingerprint, plugin.version
    with get_engine().begin() as conn:
        conn.execute(text("TRUNCATE plugin_runs, user_plugin_configs, users RESTART IDENTITY CASCADE"))
        conn.execute(
            text(
                "INSERT INTO users (email, timezone) SELECT 'u' || g || '@bench', 'UTC' FROM generate_series(1, :n) g"
            ),
            {"n": total},
        )
        conn.execute(
            text(
                "INSERT INTO user_plugin_configs (user_id, plugin_id, settings, plugin_version, schema_fingerprint,"
                " enabled, next_run_at)"
                " SELECT g, :pid, CAST(:settings AS jsonb), :ver, :fp, true,"
                " CASE WHEN g <= :due THEN CAST(:due_at AS timestamptz) ELSE CAST(:future AS timestamptz) END"
                " FROM generate_series(1, :n) g"
            ),
            {
                "n": total,
                "due": due,
                "pid": plugin_id,
                "ver": version,
                "fp": fingerprint,
                "settings": '{"preferred_time": "06:00", "topics": ["technology"]}',
                "due_at": DUE,
                "future": FUTURE,
            },
        )
        conn.execute(text("ANALYZE users; ANALYZE user_plugin_configs"))


def _tick(due: int) -> float:
    from app.beat_tick import schedule_due

    with Timer() as timer:
        report = schedule_due(now=NOW)
    assert report.created == due, report
    return timer.seconds


def _stream_entries() -> int:
    from app import keys
    from app.redis_client import get_redis

    return int(get_redis().xlen(keys.stream("daily-news-digest")))


def bench_tick_vs_table_size(small: int, large: int, due: int) -> dict[str, float]:
    results = {}
    for total in (small, large):
        _populate(total, due)
        _tick(due)  # warm-up: plans, caches, connections
        _populate(total, due)
        results[f"tick_{total}"] = _tick(due)
    return results


def bench_rush(count: int) -> dict[str, float]:
    """Seconds and schedules/s for ``count`` configs all due at 06:00, each a row and an entry."""
    from app import keys
    from app.redis_client import get_redis

    _populate(count, count)
    get_redis().delete(keys.stream("daily-news-digest"))
    with Timer() as timer:
        from app.beat_tick import schedule_due

        report = schedule_due(now=NOW)
    assert report.created == count and _stream_entries() == count, report
    return {"seconds": timer.seconds, "per_second": count / timer.seconds}


HOW = """How: due configs come through the partial index on `next_run_at` (enabled rows), 1,000 per
batch under `FOR UPDATE SKIP LOCKED`; each batch is one `INSERT ... SELECT FROM jsonb_to_recordset(...)
ON CONFLICT DO NOTHING RETURNING` and one `UPDATE ... FROM jsonb_to_recordset(...)`, then a commit, one
Redis pipeline of XADDs and one UPDATE marking the runs queued. Once a tick's first batch is full it
goes on with `SCHEDULER_THREADS` (2) threads: `SKIP LOCKED` gives each batch to one of them, as between
two beats, and one thread's Python work overlaps the other's wait on PostgreSQL.

What degraded between 100k and 1M and the per-slice rates of one rush (the flatness evidence; a
single figure here moves by 2x with the machine's load): the next section, written by hand from
`python -m bench.profile_rush`, not rewritten by this benchmark."""


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--due", type=int, default=1_000)
    parser.add_argument("--rush", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    rushes: dict[int, dict[str, float]] = {}
    with private_environment("sched"):
        sizes = bench_tick_vs_table_size(args.small, args.large, args.due)
        for count in args.rush:
            load = _load()
            rushes[count] = {**bench_rush(count), "load": load}  # type: ignore[dict-item]
            print(f"rush {count:,}: {rushes[count]['per_second']:,.0f}/s (load average {load})", flush=True)
    t_small, t_large = sizes[f"tick_{args.small}"], sizes[f"tick_{args.large}"]
    ratio = t_large / t_small
    lines = [
        "| figure | value | goal |",
        "| --- | --- | --- |",
        f"| tick, {args.due:,} due of {args.small:,} configs | {t_small * 1000:.0f} ms | baseline |",
        f"| tick, {args.due:,} due of {args.large:,} configs | {t_large * 1000:.0f} ms | |",
        f"| ratio large / small | **{ratio:.2f}x** | <= 1.5 |",
    ]
    for count, rush in rushes.items():
        lines.append(
            f"| 06:00 rush: {count:,} due at once -> rows + stream entries (load average {rush['load']})"
            f" | {rush['seconds']:.1f} s = **{rush['per_second']:,.0f} schedules/s** | >= 5,000 |"
        )
    smallest, largest = min(rushes), max(rushes)
    if largest != smallest:
        flat = rushes[largest]["per_second"] / rushes[smallest]["per_second"]
        lines.append(f"| rush rate {largest:,} / {smallest:,} | **{flat:.2f}x** | ~1.0 (flat) |")
    body = "\n".join(lines) + "\n\n" + HOW
    print(body)
    write_section("Scheduler (issues 5 and 13)", body)


if __name__ == "__main__":
    main()
