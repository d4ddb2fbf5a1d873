"""Shared benchmark plumbing: a private database and Redis prefix, machine facts, RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")


def machine() -> str:
    """One line describing this machine (cores, memory, Python)."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, Python {platform.python_version()}, {platform.machine()}"


@contextmanager
def private_environment(tag: str) -> Iterator[str]:
    """A fresh PostgreSQL database (migrated) and Redis prefix for one benchmark; removed afterwards."""
    name = f"fs_bench_{tag}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    prefix = f"fs-bench-{secrets.token_hex(3)}"
    os.environ.update(
        {
            "DATABASE_URL": url,
            "REDIS_KEY_PREFIX": prefix,
            "PLUGINS_DIR": str(ROOT / "plugins"),
            "LOG_LEVEL": "WARNING",
        }
    )
    from app.config import get_settings

    get_settings.cache_clear()
    from app.db import migrate

    try:
        migrate.upgrade(url)
        yield url
    finally:
        from app.db.engine import dispose_engines
        from app.redis_client import get_redis

        client = get_redis()
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])
        dispose_engines()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of bench/RESULTS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"## {title}\n\n_Measured {stamp} on {machine()}._\n\n{body.strip()}\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by `make bench`.\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n")
