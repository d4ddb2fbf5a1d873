"""Every CLI command with PostgreSQL stopped, then with Redis stopped: one line, a non-zero exit.

The services are PRIVATE (tests/chaos_services.py): a PostgreSQL cluster and a
redis-server of this test's own, on free ports, stopped by the test. The
shared servers are never touched. Commands run in-process (CliRunner) with the
environment pointing at the private servers; two also run as real processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from app import api
from app.cli import cli
from app.db import migrate
from app.db.engine import dispose_engines, session_scope
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from app.redis_client import get_redis, reset_clients
from app.streams.dlq import move_to_dead_letters
from app.streams.envelope import Reason
from tests.chaos_services import PrivatePostgres, PrivateRedis
from tests.conftest import ROOT

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``release`` configures logging in-process; undo it so no handler outlives CliRunner's streams."""
    import logging

    from app import logs

    root = logging.getLogger()
    handlers, level, configured = list(root.handlers), root.level, logs._configured
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs._configured = configured


PASSWORD = "Pg-Outage-Pw-7"  # in the URL; trust auth ignores it, and it must never be printed


def _commands(ids: dict[str, str]) -> dict[str, list[str]]:
    user, plugin = ids["user"], "daily-news-digest"
    return {
        "users add": ["users", "add", "new@example.com"],
        "users show": ["users", "show", user],
        "users set-timezone": ["users", "set-timezone", user, "Europe/Paris"],
        "configure": ["configure", user, plugin, "--set", "max_items=3"],
        "run": ["run", user, plugin],
        "runs list": ["runs", "list"],
        "runs show": ["runs", "show", ids["run"]],
        "runs cancel": ["runs", "cancel", ids["run"]],
        "status": ["status"],
        "dlq list": ["dlq", "list"],
        "dlq replay": ["dlq", "replay", ids["dead"]],
        "dlq replay --all": ["dlq", "replay", "--all"],
        "dlq purge": ["dlq", "purge", "--older-than", "1d"],
        "plugins sync": ["plugins", "sync"],
        "release": ["release"],
        "db upgrade": ["db", "upgrade"],
        "consumer --check": ["consumer", "--check"],
    }


#: Commands that need no Redis: with only Redis down they must simply work.
NO_REDIS = {
    "users add",
    "users show",
    "users set-timezone",
    "configure",
    "runs list",
    "runs show",
    "runs cancel",
    "plugins sync",
    "release",
    "db upgrade",
}
#: The only command that needs no PostgreSQL.
NO_POSTGRES = {"consumer --check"}


@pytest.fixture
def private(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[PrivatePostgres, PrivateRedis, dict[str, str]]]:
    from app.config import get_settings

    pg, rd = PrivatePostgres(), PrivateRedis()
    try:
        pg.start()
        rd.start()
        # Trust authentication ignores the password; it is there to prove it is never printed.
        monkeypatch.setenv("DATABASE_URL", pg.url.replace("root@", f"root:{PASSWORD}@"))
        monkeypatch.setenv("REDIS_URL", rd.url)
        monkeypatch.setenv("PLUGINS_DIR", str(ROOT / "plugins"))
        get_settings.cache_clear()
        dispose_engines()
        reset_clients()
        migrate.upgrade()
        with session_scope() as session:
            sync_plugins(session, discover(ROOT / "plugins"))
        user = api.create_user("outage@example.com")
        api.configure_plugin(user.id, "daily-news-digest", {"topics": ["science"]})
        run = api.trigger_run(user.id, "daily-news-digest")
        ids = {"user": str(user.id), "run": str(run.run_id), "dead": _dead_letter()}
        yield pg, rd, ids
    finally:
        dispose_engines()
        reset_clients()
        rd.stop()
        pg.stop()
        get_settings.cache_clear()


def _dead_letter() -> str:
    dead = move_to_dead_letters(
        get_redis(decode_responses=False),
        plugin="daily-news-digest",
        entry_id="1-1",
        fields={"v": "1", "payload": "{}"},
        reason=Reason.INVALID_PAYLOAD,
        message="test",
        delivery_count=1,
        consumer="tests",
        now=datetime.now(UTC),
    )
    return f"daily-news-digest/{dead}"


def _check_down(name: str, args: list[str], service: str, port: int) -> None:
    result = runner.invoke(cli, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (name, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (name, result.exception)
    assert "Traceback" not in result.output and PASSWORD not in result.output, (name, result.output)
    assert len(lines) == 1, (name, result.stderr)
    assert f"{service} at 127.0.0.1:{port} does not answer" in lines[0], (name, lines)


def test_every_command_with_redis_then_postgres_stopped(  # type: ignore[no-untyped-def]
    private, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.config import get_settings

    pg, rd, ids = private
    commands = _commands(ids)

    rd.stop()
    reset_clients()
    for name, args in commands.items():
        if name in NO_REDIS:
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, (name, result.output)
        else:
            _check_down(name, args, "Redis", rd.port)

    # PostgreSQL down with Redis up (a fresh private one: the first is gone).
    fresh = PrivateRedis().start()
    try:
        monkeypatch.setenv("REDIS_URL", fresh.url)
        get_settings.cache_clear()
        reset_clients()
        commands = _commands({**ids, "dead": _dead_letter()})
        pg.stop()
        dispose_engines()
        for name, args in commands.items():
            if name not in NO_POSTGRES:
                _check_down(name, args, "PostgreSQL", pg.port)
    finally:
        reset_clients()
        fresh.stop()


def test_real_processes_print_one_line(private) -> None:  # type: ignore[no-untyped-def]
    pg, rd, _ids = private
    pg.stop()
    rd.stop()
    env = {**os.environ, "DATABASE_URL": pg.url.replace("root@", f"root:{PASSWORD}@")}
    for args, service, port in (
        (["runs", "list"], "PostgreSQL", pg.port),
        (["release"], "PostgreSQL", pg.port),
        (["consumer", "--check"], "Redis", rd.port),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "app", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and PASSWORD not in done.stderr + done.stdout
        assert f"{service} at 127.0.0.1:{port}" in done.stderr, (args, done.stderr)
        assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1, done.stderr
