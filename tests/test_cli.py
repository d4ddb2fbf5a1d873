"""The CLI over the API: every command, its JSON output and its error paths."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from app import api
from app.cli import cli
from app.db.engine import session_scope
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import unique_email

runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(cli, list(args))


@pytest.fixture
def plugin(db, redis_client, make_plugin):  # type: ignore[no-untyped-def]
    make_plugin("cli-plugin")
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))
    return "cli-plugin"


def test_users_add_show_and_errors(plugin) -> None:  # type: ignore[no-untyped-def]
    email = unique_email()
    result = invoke("users", "add", email, "--timezone", "Europe/Berlin", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["email"] == email and data["timezone"] == "Europe/Berlin"
    assert email in invoke("users", "show", email).stdout
    dup = invoke("users", "add", email)
    assert dup.exit_code == 1 and "already exists" in dup.stderr
    bad = invoke("users", "add", unique_email(), "--timezone", "Nowhere/City")
    assert bad.exit_code == 2 and "unknown time zone" in bad.stderr
    missing = invoke("users", "show", "ghost@example.com")
    assert missing.exit_code == 1 and "no user with email" in missing.stderr


def test_configure_ok_and_validation_errors(plugin, tmp_path) -> None:  # type: ignore[no-untyped-def]
    user = api.create_user(unique_email())
    result = invoke(
        "configure", user.email, plugin, "--set", "preferred_time=07:30", "--set", 'topics=["sports"]'
    )
    assert result.exit_code == 0, result.output
    assert "enabled; next run" in result.stdout
    assert api.get_config(user.id, plugin).settings == {"preferred_time": "07:30", "topics": ["sports"]}

    bad = invoke("configure", str(user.id), plugin, "--set", "topics=[]", "--set", "preferred_time=7")
    assert bad.exit_code == 2
    assert (
        "/preferred_time: 7 is not of type 'string'" in bad.stderr
        and "/topics: [] should be non-empty" in bad.stderr
    )
    assert api.get_config(user.id, plugin).settings["preferred_time"] == "07:30"  # unchanged

    settings_file = tmp_path / "s.json"
    settings_file.write_text(json.dumps({"topics": ["science"]}))
    result = invoke("configure", user.email, plugin, "--file", str(settings_file), "--disable", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["enabled"] is False

    settings_file.write_text("{oops")
    result = invoke("configure", user.email, plugin, "--file", str(settings_file))
    assert result.exit_code == 2 and "s.json: not valid JSON" in result.stderr
    result = invoke("configure", user.email, plugin, "--set", "novalue")
    assert result.exit_code == 2 and "expected key=value" in result.stderr
    result = invoke("configure", user.email, "nope-plugin")
    assert result.exit_code == 1 and "no plugin named 'nope-plugin'" in result.stderr


def test_run_and_runs_commands(plugin) -> None:  # type: ignore[no-untyped-def]
    user = api.create_user(unique_email())
    result = invoke("run", user.email, plugin, "--json")
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)
    assert run["status"] == "queued" and run["trigger"] == "manual"

    listed = json.loads(invoke("runs", "list", "--user", user.email, "--json").stdout)
    assert [r["run_id"] for r in listed] == [run["run_id"]]
    assert run["run_id"] in invoke("runs", "list", "--plugin", plugin).stdout
    shown = json.loads(invoke("runs", "show", run["run_id"], "--json").stdout)
    assert shown["run_id"] == run["run_id"]
    assert invoke("runs", "list", "--status", "bogus").exit_code == 2

    cancelled = invoke("runs", "cancel", run["run_id"])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    again = invoke("runs", "cancel", run["run_id"])
    assert again.exit_code == 1 and "already cancelled" in again.stderr
    assert invoke("runs", "show", str(uuid.uuid4())).exit_code == 1

    bad = invoke("run", user.email, plugin, "--set", 'topics=["cooking"]')
    assert bad.exit_code == 2 and "/topics/0" in bad.stderr


def test_run_wait_times_out_without_a_worker(plugin) -> None:  # type: ignore[no-untyped-def]
    user = api.create_user(unique_email())
    result = invoke("run", user.email, plugin, "--wait", "--timeout", "0.5")
    assert result.exit_code == 1 and "still queued" in result.stderr


def test_status(plugin) -> None:  # type: ignore[no-untyped-def]
    user = api.create_user(unique_email())
    api.trigger_run(user.id, plugin)
    data = json.loads(invoke("status", "--json").stdout)
    (row,) = [r for r in data if r["plugin"] == plugin]
    assert row["stream_length"] == 1 and row["runs_24h"] == {"queued": 1}
    text = invoke("status").stdout
    assert plugin in text and "queued=1" in text
