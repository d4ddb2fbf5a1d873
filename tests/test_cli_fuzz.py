"""Every CLI command with arbitrary arguments: exit 0, 1 or 2, never a traceback, nothing damaged.

In-process (typer's CliRunner) against the session's real PostgreSQL database
and Redis prefix. A failing command (exit 1 or 2) must leave every stored row
as it was. The commands are read from the CLI itself, so a new command is
fuzzed without editing this file. Long-running commands (``consumer`` without
``--check``, ``flower``, ``demo``) are not run: they serve until stopped.
Commands that write files (``plugins new``, ``release``) work in a copy of the
plugins folder, from a scratch working directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from typer.testing import CliRunner

from app import api
from app.cli import cli
from app.db.engine import get_engine, session_scope
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from app.redis_client import get_redis
from app.streams.dlq import move_to_dead_letters
from app.streams.envelope import Reason
from tests.conftest import ROOT, unique_email

runner = CliRunner()

#: Commands that serve until stopped, and how (if at all) they are fuzzed instead.
SERVING = {("consumer",): ["consumer", "--check"], ("flower",): None, ("demo",): None}


def _leaves(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    # Duck-typed: typer's groups are not click.Group subclasses (typer ships its own click).
    if isinstance(getattr(command, "commands", None), dict):
        return [
            leaf for name, sub in sorted(command.commands.items()) for leaf in _leaves(sub, (*path, name))
        ]
    return [path]


ALL_COMMANDS = _leaves(typer.main.get_command(cli))
COMMANDS = [
    *([*leaf] for leaf in ALL_COMMANDS if leaf not in SERVING),
    *(fuzzed for fuzzed in SERVING.values() if fuzzed is not None),
    [],
]
TABLES = ("users", "plugins", "user_plugin_configs", "plugin_runs")


def _tokens(fixture: dict[str, str]) -> st.SearchStrategy[str]:
    known = st.sampled_from(
        [
            fixture["email"],
            fixture["user_id"],
            fixture["plugin"],
            fixture["run_id"],
            fixture["dead_ref"],
            "--set",
            "--unset",
            "--file",
            "--replace",
            "--enable",
            "--disable",
            "--json",
            "--all",
            "--plugin",
            "--older-than",
            "--limit",
            "--status",
            "--before",
            "--timezone",
            "--idempotency-key",
            "--timeout",
            "--plugins-dir",
            "--failed",
            "new-plugin",
            "topics=[]",
            'topics=["science"]',
            "preferred_time=07:30\n",
            "max_items=NaN",
            "x=" + "[" * 1000 + "]" * 1000,
            "Europe",
            "a" * 5000,
            "2147483648",
            "99999999999999999999999",
            "-1",
            "0",
            "nan",
            "7d",
            "99999999999999d",
            "\x00",
            "\ud800",
            "k" * 201,
            "daily-news-digest/0-0",
            "/etc/passwd",
            "",
        ]
    )
    return known | st.text(max_size=30)


@pytest.fixture(autouse=True)
def _scratch_plugins(tmp_path, monkeypatch: pytest.MonkeyPatch, setenv) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """``plugins new`` and relative ``--plugins-dir`` write here, never into the repository."""
    shutil.copytree(ROOT / "plugins", tmp_path / "plugins")
    monkeypatch.chdir(tmp_path)
    setenv(PLUGINS_DIR=str(tmp_path / "plugins"))
    yield


@contextmanager
def _own_process_logging() -> Iterator[None]:
    """Each command as if in its own process: logging set up by one (``release`` configures it,
    on CliRunner's streams) is undone before the next, or its handler writes to a closed stream."""
    import logging

    from app import logs

    root = logging.getLogger()
    handlers, level, configured = list(root.handlers), root.level, logs._configured
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logs._configured = configured


def test_every_command_is_fuzzed() -> None:
    """The walk finds the commands a review once found missing; only serving ones are left out."""
    for command in (["release"], ["plugins", "new"], ["llm", "check"], ["dlq", "replay"], ["dlq", "purge"]):
        assert command in COMMANDS, command
    assert len(ALL_COMMANDS) >= 20
    assert {tuple(c) for c in COMMANDS} >= set(ALL_COMMANDS) - set(SERVING)


@pytest.fixture
def fixture(db, redis_client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        sync_plugins(session, discover(Path("plugins")))
    user = api.create_user(unique_email(), "Europe/Berlin")
    api.configure_plugin(user.id, "daily-news-digest", {"topics": ["science"]})
    run = api.trigger_run(user.id, "daily-news-digest")
    client = get_redis(decode_responses=False)
    dead = move_to_dead_letters(
        client,
        plugin="daily-news-digest",
        entry_id="1-1",
        fields={"v": "1", "payload": "{}"},
        reason=Reason.INVALID_PAYLOAD,
        message="test",
        delivery_count=1,
        consumer="tests",
        now=datetime.now(UTC),
    )
    return {
        "email": user.email,
        "user_id": str(user.id),
        "plugin": "daily-news-digest",
        "run_id": str(run.run_id),
        "dead_ref": f"daily-news-digest/{dead}",
    }


def _snapshot() -> dict[str, list[Any]]:
    with get_engine().connect() as conn:
        return {
            table: [
                json.dumps(dict(row._mapping), default=str, sort_keys=True)
                for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))
            ]
            for table in TABLES
        }


def _partial_success(command: list[str], stderr: str) -> bool:
    # Documented exits 1 that follow a change made on purpose: a run created then waited on in
    # vain, and a replay of several dead letters of which some could not be replayed.
    if command == ["run"] and ("still" in stderr or " failed" in stderr or "cancelled" in stderr):
        return True
    return command == ["dlq", "replay"] and "kept:" in stderr


def test_every_command_with_arbitrary_arguments(fixture: dict[str, str]) -> None:
    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(command=st.sampled_from(COMMANDS), args=st.lists(_tokens(fixture), max_size=5))
    def check(command: list[str], args: list[str]) -> None:
        before = _snapshot()
        with _own_process_logging():
            result = runner.invoke(cli, [*command, *args])
        where = (command, args, result.output[-2000:])
        assert result.exit_code in (0, 1, 2), where
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            *where,
            repr(result.exception),
        )
        assert "Traceback" not in result.output, where
        if result.exit_code != 0 and not _partial_success(command, result.stderr):
            assert _snapshot() == before, where

    check()
