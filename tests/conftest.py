"""Test session wiring: a private PostgreSQL database and a private Redis key prefix.

Every test session creates its own database (``fs_test_<random>``) with
``alembic upgrade head`` and drops it at the end, and uses its own Redis key
prefix (Celery's broker keys included) whose keys it deletes at the end. Tests
that touch tables get them truncated first. Nothing the session did not create
is ever dropped. In CI a missing service is a failure, not a skip.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SESSION_TAG = secrets.token_hex(4)
TEST_DB = f"fs_test_{SESSION_TAG}"
TEST_PREFIX = f"fs-test-{SESSION_TAG}"
TEST_DATABASE_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{TEST_DB}"

# Settings are read lazily; set the environment before anything calls get_settings().
os.environ.update(
    {
        "DATABASE_URL": TEST_DATABASE_URL,
        "REDIS_URL": TEST_REDIS_URL,
        "REDIS_KEY_PREFIX": TEST_PREFIX,
        "PLUGINS_DIR": str(ROOT / "plugins"),
        "APP_ENV": "development",
        "CREWAI_DISABLE_TELEMETRY": "true",
        "OTEL_SDK_DISABLED": "true",
        "CREWAI_TRACING_ENABLED": "false",
    }
)
os.environ.pop("FIRST_SIP_LLM_MODEL", None)


def _service_missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI requires it; `make test` starts it)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The session's private PostgreSQL database, migrated to head."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _service_missing(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{TEST_DB}"')
    from app.db import migrate

    try:
        migrate.upgrade(TEST_DATABASE_URL)
        yield TEST_DATABASE_URL
    finally:
        from app.db.engine import dispose_engines

        dispose_engines()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file migrated to head: the embedded default, for tests that run on both databases."""
    from app.db import migrate

    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'first-sip.db'}"
    migrate.upgrade(url)
    return url


def _empty_tables() -> None:
    from sqlalchemy import text

    from app.db.engine import get_engine

    engine = get_engine()
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for table in ("plugin_runs", "user_plugin_configs", "users", "plugins"):
                conn.execute(text(f"DELETE FROM {table}"))
        else:
            conn.execute(
                text("TRUNCATE plugin_runs, user_plugin_configs, users, plugins RESTART IDENTITY CASCADE")
            )


@pytest.fixture
def db(pg_database: str) -> Iterator[str]:
    """Empty tables for this test (emptied first, so a failed test leaves evidence).

    PostgreSQL unless a wider fixture switched ``DATABASE_URL`` to SQLite (``on_both_databases``).
    """
    from app.config import get_settings

    _empty_tables()
    yield get_settings().database_url


@contextmanager
def using_database(url: str) -> Iterator[str]:
    """Point this process (and the processes it starts) at ``url`` for the duration of the block."""
    from app.config import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()
        try:
            yield url
        finally:
            get_settings.cache_clear()


@pytest.fixture(params=["postgresql", "sqlite"])
def on_both_databases(
    request: pytest.FixtureRequest, pg_database: str, sqlite_database: str
) -> Iterator[str]:
    """Run the test on PostgreSQL, then on SQLite (the embedded default), tables emptied first.

    Each hot write has a statement per dialect (app/db/bulk.py, app/db/runs.py): this is what
    runs the SQLite halves.
    """
    url = pg_database if request.param == "postgresql" else sqlite_database
    with using_database(url):
        _empty_tables()
        yield url


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(batch), 500):
        client.delete(*batch[i : i + 500])


@pytest.fixture(scope="session")
def redis_session() -> Iterator[redis.Redis]:
    """A client for the test Redis; deletes the session's keys at the end."""
    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        _service_missing(f"Redis not reachable at {TEST_REDIS_URL}: {exc}")
    yield client
    _delete_prefix(client, TEST_PREFIX)
    client.close()


@pytest.fixture
def redis_client(redis_session: redis.Redis) -> redis.Redis:
    """The test Redis with this session's keys deleted before the test."""
    _delete_prefix(redis_session, TEST_PREFIX)
    return redis_session


@pytest.fixture
def setenv(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set environment variables for this test and re-read settings."""
    from app.config import get_settings

    def apply(**values: str) -> None:
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()

    return apply


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    from app.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


_shut_down: list[Any] = []


def shut_down_after_test(thing: Any) -> None:
    """Call ``thing.shutdown()`` when the current test ends (an in-process consumer, say)."""
    _shut_down.append(thing)


@pytest.fixture(autouse=True)
def _shut_down_what_the_test_built() -> Iterator[None]:
    yield
    while _shut_down:
        _shut_down.pop().shutdown()


# ---- plugin folders -------------------------------------------------------------------------

VALID_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "frequency": {"type": "string", "enum": ["daily", "weekly"], "default": "daily"},
        "preferred_time": {
            "type": "string",
            "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
            "default": "06:00",
        },
        "topics": {
            "type": "array",
            "items": {"type": "string", "enum": ["technology", "science", "sports"]},
            "minItems": 1,
            "maxItems": 2,
            "default": ["technology"],
        },
    },
    "required": ["frequency", "topics"],
}


def manifest_text(name: str, **overrides: Any) -> str:
    """A valid plugin.yaml for ``name`` with top-level ``overrides`` (None removes a key)."""
    import yaml

    data: dict[str, Any] = {
        "name": name,
        "description": "A test plugin.",
        "owner": "tests",
        "version": "1.0.0",
        "capabilities": ["scheduled", "manual"],
        "default_config": {"topics": ["science"]},
        "settings_schema_path": "settings.schema.json",
        "entry_point": "crew/main.py:build_crew",
    }
    data.update(overrides)
    return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)


@pytest.fixture
def make_plugin(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: write a plugin folder under ``tmp_path/plugins`` and return it."""
    import json

    root = tmp_path / "plugins"
    root.mkdir(exist_ok=True)

    def make(
        name: str,
        *,
        folder: str | None = None,
        manifest: str | None = None,
        schema: Any = VALID_SCHEMA,
        crew: str = "def build_crew(ctx):\n    raise NotImplementedError\n",
        **overrides: Any,
    ) -> Path:
        path = root / (folder or name)
        (path / "crew").mkdir(parents=True, exist_ok=True)
        (path / "plugin.yaml").write_text(
            manifest if manifest is not None else manifest_text(name, **overrides)
        )
        if schema is not None:
            text = schema if isinstance(schema, str) else json.dumps(schema)
            (path / "settings.schema.json").write_text(text)
        (path / "crew" / "main.py").write_text(crew)
        return path

    make.root = root  # type: ignore[attr-defined]
    return make


def unique_email() -> str:
    """An email address no other test uses."""
    return f"user-{uuid.uuid4().hex[:10]}@example.com"
