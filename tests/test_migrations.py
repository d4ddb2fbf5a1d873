"""Migrations: up, down, up again on fresh databases; models and migrations never drift."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from app.db import migrate
from app.db.models import Base
from tests.conftest import PG_ADMIN_URL, ROOT

TABLES = {"users", "plugins", "user_plugin_configs", "plugin_runs", "alembic_version"}


@pytest.fixture
def fresh_pg(pg_database: str) -> Iterator[str]:
    name = f"fs_mig_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _drift(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_postgresql(fresh_pg: str) -> None:
    migrate.upgrade(fresh_pg)
    assert _tables(fresh_pg) == TABLES
    assert _drift(fresh_pg) == []
    migrate.downgrade(fresh_pg)
    assert _tables(fresh_pg) == {"alembic_version"}
    migrate.upgrade(fresh_pg)
    assert _tables(fresh_pg) == TABLES


def test_models_match_migrations_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url)
    assert _tables(url) == TABLES
    assert _drift(url) == []
    migrate.downgrade(url)
    migrate.upgrade(url)
    assert _tables(url) == TABLES


def test_partial_index_on_enabled_configs(pg_database: str) -> None:
    engine = create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://"))
    try:
        indexes = {i["name"]: i for i in inspect(engine).get_indexes("user_plugin_configs")}
    finally:
        engine.dispose()
    due = indexes["ix_user_plugin_configs_due"]
    assert due["column_names"] == ["next_run_at"]
    assert "enabled" in str(due.get("dialect_options", {}).get("postgresql_where"))


def _alembic(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Plain ``alembic`` at the repository root, the way its users type it."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plain_alembic_at_the_repository_root(fresh_pg: str) -> None:
    """`alembic upgrade head` then `alembic check` from the root: config from pyproject.toml."""
    upgraded = _alembic("upgrade", "head", database_url=fresh_pg)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade" in upgraded.stderr
    assert _tables(fresh_pg) == TABLES
    checked = _alembic("check", database_url=fresh_pg)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "No new upgrade operations detected" in checked.stdout


def test_alembic_check_fails_when_models_drift(fresh_pg: str) -> None:
    """The check can fail: a database one revision behind the models is reported."""
    migrate.upgrade(fresh_pg)
    engine = create_engine(fresh_pg)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_plugin_runs_user_id_created_at"))
    finally:
        engine.dispose()
    checked = _alembic("check", database_url=fresh_pg)
    assert checked.returncode != 0
    assert "ix_plugin_runs_user_id_created_at" in checked.stdout + checked.stderr
