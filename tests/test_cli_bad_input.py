"""Inputs that used to end in a traceback: each is now one line, exit 1 or 2, nothing stored."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from app import api
from app.cli import cli
from app.db.engine import session_scope
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import ROOT, unique_email

runner = CliRunner()


@pytest.fixture
def user(db, redis_client) -> api.UserInfo:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        sync_plugins(session, discover(ROOT / "plugins"))
    info = api.create_user(unique_email())
    api.configure_plugin(info.id, "daily-news-digest", {"topics": ["science"]})
    return info


def _one_line(args: list[str], code: int, words: str) -> str:
    result = runner.invoke(cli, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (args[:4], result.output[-500:])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert len(lines) <= 3 and words in result.stderr, (args[:4], result.stderr[-500:])
    assert len(result.output) < 2000, len(result.output)  # nothing is echoed back in full
    return result.stderr


def test_bad_input_is_one_clear_line(user: api.UserInfo) -> None:
    who, plugin = str(user.id), "daily-news-digest"
    _one_line(["users", "set-timezone", who, "Europe"], 2, "unknown time zone 'Europe'")
    _one_line(["users", "set-timezone", who, "E" * 5000], 2, "unknown time zone")
    _one_line(["users", "add", unique_email(), "--timezone", "Europe"], 2, "unknown time zone")
    _one_line(["users", "show", str(2**31)], 1, f"no user with id {2**31}")
    _one_line(["runs", "list", "--user", str(2**63)], 1, "no user with id")
    _one_line(["configure", str(2**40), plugin], 1, "no user with id")
    _one_line(["run", who, plugin, "--idempotency-key", "k" * 201], 2, "idempotency key is 1 to 200")
    _one_line(["run", who, plugin, "--idempotency-key", "a\x00b"], 2, "idempotency key")
    nested = "x=" + "[" * 1000 + "]" * 1000
    _one_line(["configure", who, plugin, "--set", nested], 2, "nested deeper than 64 levels")
    _one_line(["configure", who, plugin, "--set", "preferred_time=" + "9" * 10_000_000], 2, "bytes as JSON")
    _one_line(["configure", who, plugin, "--set", "preferred_time=07:30\n"], 2, "/preferred_time")
    for ref in ("nope", "daily-news-digest/abc", "Bad Plugin/1-1", "x/" + "9" * 30 + "-0", "\x00"):
        _one_line(["dlq", "replay", ref], 1, "no dead letter")
    _one_line(["dlq", "list", "Bad Plugin"], 2, "not a valid plugin name")
    _one_line(["dlq", "purge", "--older-than", "9" * 40 + "d"], 2, "not a duration")
    _one_line(["dlq", "purge", "--older-than", "7d", "--plugin", "../x"], 2, "not a valid plugin name")
    _one_line(["runs", "show", "x" * 5000], 1, "is not a run id")
    _one_line(["run", who, plugin, "--wait", "--timeout", "nan"], 2, "--timeout")
    _one_line(["db", "upgrade", "no-such-revision"], 2, "cannot upgrade to that revision")
    assert api.get_config(user.id, plugin).settings == {"topics": ["science"]}
    assert api.list_runs(user_id=user.id) == []
