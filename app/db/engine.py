"""Engine and session factory, one per process and database URL.

Guarantees: engines are created lazily and cached per URL; SQLite files get
their folder created, foreign keys enforced and WAL journaling so the worker
and the API can share the embedded default. Engines are disposed in forked
children (see ``app.celery_app``) so no connection crosses a fork.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # Several processes write the embedded default; wait rather than fail on a lock.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite file URL (the embedded default lives under ``./var``).

    Every engine on such a URL (this module's, Alembic's) needs it: SQLite
    creates the file but not its folder. Other URLs are left alone.
    """
    if not url.startswith("sqlite"):
        return
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


_engines: dict[str, Engine] = {}
_autocommit: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def engine_for(url: str) -> Engine:
    """The cached engine for ``url``."""
    engine = _engines.get(url)
    if engine is not None:
        return engine
    if url.startswith("sqlite"):
        ensure_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # No pre-ping: it costs a round trip per checkout on the hot path. After a server
        # restart the first statement on a dead connection fails once, SQLAlchemy then
        # invalidates the whole pool, and callers already treat a database error as
        # retryable (the run stays claimable, the entry stays pending).
        engine = create_engine(url, pool_size=5, max_overflow=10, pool_recycle=1800)
    _engines[url] = engine
    return engine


def get_engine() -> Engine:
    """The engine for the configured ``DATABASE_URL``."""
    return engine_for(get_settings().database_url)


@contextmanager
def autocommit_connection() -> Iterator[Connection]:
    """A pooled connection on which every statement commits by itself.

    For writes that are one statement (a compare-and-set UPDATE is atomic on its own):
    no BEGIN and COMMIT round trips. Anything that needs several statements to be one
    transaction uses :func:`session_scope` or ``get_engine().begin()`` instead.
    """
    url = get_settings().database_url
    engine = _autocommit.get(url)
    if engine is None:
        # Shares the pool of engine_for(url); the isolation level is set per checkout and reset on return.
        engine = _autocommit[url] = engine_for(url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn


def session_factory() -> sessionmaker[Session]:
    """The session factory bound to the configured database."""
    url = get_settings().database_url
    factory = _factories.get(url)
    if factory is None:
        factory = _factories[url] = sessionmaker(bind=engine_for(url), expire_on_commit=False)
    return factory


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines(*, close: bool = True) -> None:
    """Forget every engine. In a forked child pass ``close=False``: the parent owns the sockets."""
    for engine in _engines.values():
        engine.dispose(close=close)
    _engines.clear()
    _autocommit.clear()
    _factories.clear()
