"""Where the 06:00 rush spends its time, slice by slice (a profiling aid, not a benchmark).

Runs one rush of ``--rush`` due configs (the data of ``bench_scheduler``) in one
``schedule_due`` call and prints, per tenth of the rush: the rate, the seconds
spent in each phase of the batches (select due, plan in Python, insert runs,
advance next_run_at, commit, XADD + mark queued), the WAL written and its
full-page images (cluster-wide, so other databases add noise), checkpoints,
and blocks read vs hit in this database. At the start, the middle and near the
end it prints ``EXPLAIN (ANALYZE, BUFFERS)`` of the due query (run on a second
connection and rolled back), and at the end the table and index statistics.
With several threads the phase seconds add up over the threads (more than the wall time).

Run: ``.venv/bin/python -m bench.profile_rush --rush 1000000``.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, text

from bench.bench_scheduler import NOW, _populate
from bench.common import private_environment

PHASES = ("_due_batch", "plan", "insert_runs", "set_next_run", "commit", "publish_runs")

# Mirrors the scheduler's due query (kept by hand: it is what EXPLAIN shows).
DUE_SQL = """
SELECT c.id, c.user_id, c.plugin_id, c.settings, c.schema_fingerprint, c.next_run_at, u.timezone
FROM user_plugin_configs c JOIN plugins p ON p.id = c.plugin_id JOIN users u ON u.id = c.user_id
WHERE c.enabled AND p.enabled AND c.next_run_at <= :now
ORDER BY c.next_run_at LIMIT 1000 FOR UPDATE OF c SKIP LOCKED
"""


class Profile:
    def __init__(self, conn: Connection, *, total: int, slices: int, explain_sql: str) -> None:
        self.conn, self.total, self.step, self.explain_sql = conn, total, total // slices, explain_sql
        self.phase: dict[str, float] = defaultdict(float)
        self.handled = 0
        self.next_mark = self.step
        self.started = self.slice_started = time.perf_counter()
        self.before = self.stats()

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.phase[name] += time.perf_counter() - start

        return wrapper

    def stats(self) -> dict[str, float]:
        c = self.conn
        wal = c.execute(text("SELECT wal_bytes, wal_fpi FROM pg_stat_wal")).one()
        ckpt = c.execute(text("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")).scalar()
        db = c.execute(
            text("SELECT blks_read, blks_hit FROM pg_stat_database WHERE datname = current_database()")
        ).one()
        c.commit()
        return {
            "wal_mb": float(wal.wal_bytes) / 2**20,
            "fpi": float(wal.wal_fpi),
            "ckpt": float(ckpt or 0),
            "read": float(db.blks_read),
            "hit": float(db.blks_hit),
        }

    def explain(self, label: str) -> None:
        rows = self.conn.execute(
            text("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + self.explain_sql), {"now": NOW}
        ).scalars()
        print(f"--- EXPLAIN (ANALYZE, BUFFERS) of the due query, {label}")
        for line in rows:
            print("   ", line)
        self.conn.rollback()

    def header(self) -> None:
        print(
            "  done   rate/s  "
            + " ".join(f"{p.strip('_'):>12}" for p in PHASES)
            + "  wal_MB    fpi ckpt  blks read/hit",
            flush=True,
        )

    def batch_done(self, handled: int) -> None:
        self.handled += handled
        if self.handled < self.next_mark and handled:
            return
        now = time.perf_counter()
        after = self.stats()
        d = {k: after[k] - self.before[k] for k in after}
        n = self.handled - (self.next_mark - self.step)
        print(
            f"{self.handled:>7,} {n / (now - self.slice_started):>7,.0f}  "
            + " ".join(f"{self.phase.get(p, 0.0):>12.2f}" for p in PHASES)
            + f"  {d['wal_mb']:>6.0f} {d['fpi']:>6.0f} {d['ckpt']:>4.0f}  {d['read']:.0f}/{d['hit']:.0f}",
            flush=True,
        )
        if self.next_mark in (self.step, self.total // 2, self.total - self.step):
            self.explain(f"after {self.handled:,} handled")
        self.phase.clear()
        self.next_mark += self.step
        self.before = self.stats()
        self.slice_started = time.perf_counter()


def _instrument(profile: Profile) -> None:
    from sqlalchemy.orm import Session

    from app import beat_tick
    from app.db import bulk
    from app.streams import producer

    beat_tick._Planner.plan = profile.timed("plan", beat_tick._Planner.plan)  # type: ignore[method-assign]
    for module, names in ((beat_tick, PHASES[:1]), (bulk, PHASES[2:4]), (producer, PHASES[5:])):
        for name in names:
            setattr(module, name, profile.timed(name, getattr(module, name)))
    Session.commit = profile.timed("commit", Session.commit)  # type: ignore[method-assign]
    batch = beat_tick._schedule_batch

    def counted(**kwargs: Any) -> Any:
        handled, refs = batch(**kwargs)
        profile.batch_done(handled)
        return handled, refs

    beat_tick._schedule_batch = counted  # type: ignore[assignment]


def _auto_explain(min_ms: int) -> None:
    """Every statement of the scheduler slower than ``min_ms`` prints its real plan (auto_explain)."""
    from sqlalchemy import event

    from app.db.engine import get_engine

    seen: set[str] = set()

    def notice(diag: Any) -> None:
        message = diag.message_primary or ""
        key = re.sub(r"duration: [0-9.]+ ms", "", message)[:400]
        if "Query Text" in message and key not in seen:  # print each distinct plan once
            seen.add(key)
            print("--- auto_explain:", message, flush=True)

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute("LOAD 'auto_explain'")
            cur.execute(f"SET auto_explain.log_min_duration = {int(min_ms)}")
            cur.execute("SET auto_explain.log_analyze = on")
            cur.execute("SET auto_explain.log_buffers = on")
            cur.execute("SET auto_explain.log_timing = off")
            cur.execute("SET client_min_messages = log")
        dbapi_connection.commit()
        dbapi_connection.add_notice_handler(notice)

    event.listen(get_engine(), "connect", on_connect)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rush", type=int, default=1_000_000)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="SCHEDULER_THREADS for the rush")
    parser.add_argument(
        "--auto-explain-ms", type=int, default=0, help="print plans of statements slower than this"
    )
    args = parser.parse_args()
    with private_environment("prof"):
        _populate(args.rush, args.rush)
        from app.beat_tick import schedule_due
        from app.db.engine import dispose_engines, get_engine

        dispose_engines()
        if args.auto_explain_ms:
            _auto_explain(args.auto_explain_ms)

        with get_engine().connect() as conn:
            conn.execute(text("CHECKPOINT"))
            conn.commit()
            profile = Profile(conn, total=args.rush, slices=args.slices, explain_sql=DUE_SQL)
            profile.explain("before the rush")
            _instrument(profile)
            profile.header()
            started = time.perf_counter()
            report = schedule_due(now=NOW, threads=args.threads)
            seconds = time.perf_counter() - started
            print(f"total: {report.created:,} runs in {seconds:.1f} s = {report.created / seconds:,.0f}/s")
            for sql in (
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, n_live_tup,"
                " pg_size_pretty(pg_total_relation_size(relid)) FROM pg_stat_user_tables ORDER BY relname",
                "SELECT indexrelname, idx_scan, idx_tup_read, idx_tup_fetch,"
                " pg_size_pretty(pg_relation_size(indexrelid)) FROM pg_stat_user_indexes ORDER BY relname",
            ):
                for row in conn.execute(text(sql)):
                    print("   ", tuple(row))


if __name__ == "__main__":
    main()
