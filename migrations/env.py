"""Alembic environment: metadata from the models, URL from settings, no pooling."""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import create_engine, pool

from app.config import get_settings
from app.db.engine import ensure_sqlite_folder
from app.db.models import Base

config = context.config
target_metadata = Base.metadata

if config.cmd_opts is not None:
    # Plain `alembic ...` at the command line: show what it does. Our processes (release,
    # tests, the demo) configure logging themselves and decide what is shown.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-5.5s [%(name)s] %(message)s")
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)


def _url() -> str:
    # An explicit URL (tests, first-sip db) wins over the environment.
    return config.attributes.get("database_url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    ensure_sqlite_folder(_url())
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
