"""Sync to the plugins table: insert, update, disable on removal, idempotence."""

from __future__ import annotations

import shutil

from sqlalchemy import select

from app.db.engine import session_scope
from app.db.models import PluginRow
from app.plugins.registry import discover
from app.plugins.sync import GONE_REASON, sync_plugins


def _sync(root):  # type: ignore[no-untyped-def]
    with session_scope() as session:
        return sync_plugins(session, discover(root))


def _rows() -> dict[str, PluginRow]:
    with session_scope() as session:
        return {r.name: r for r in session.scalars(select(PluginRow))}


def test_insert_update_disable_and_idempotence(db, make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("alpha")
    make_plugin("beta")
    report = _sync(make_plugin.root)
    assert report.inserted == ["alpha", "beta"] and report.changed
    rows = _rows()
    assert rows["alpha"].version == "1.0.0" and rows["alpha"].enabled
    assert rows["alpha"].settings_schema["properties"]["topics"]["maxItems"] == 2
    assert rows["alpha"].capabilities == ["scheduled", "manual"]

    again = _sync(make_plugin.root)
    assert not again.changed and again.unchanged == ["alpha", "beta"]
    assert again.lines() == ["no changes"]

    make_plugin("alpha", version="1.1.0", description="Better.")
    report = _sync(make_plugin.root)
    assert report.updated == ["alpha"] and report.unchanged == ["beta"]
    assert _rows()["alpha"].version == "1.1.0" and _rows()["alpha"].description == "Better."

    shutil.rmtree(make_plugin.root / "beta")
    report = _sync(make_plugin.root)
    assert report.disabled == ["beta"]
    beta = _rows()["beta"]
    assert beta.enabled is False and beta.disabled_reason == GONE_REASON  # not deleted
    assert not _sync(make_plugin.root).changed

    make_plugin("beta")
    report = _sync(make_plugin.root)
    assert report.enabled == ["beta"] and _rows()["beta"].enabled


def test_broken_plugin_is_disabled_not_deleted(db, make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("gamma")
    _sync(make_plugin.root)
    make_plugin("gamma", version="not-semver")
    report = _sync(make_plugin.root)
    assert report.disabled == ["gamma"]
    assert _rows()["gamma"].version == "1.0.0"  # what was stored is kept


def test_operator_disable_survives_sync(db, make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("delta")
    _sync(make_plugin.root)
    with session_scope() as session:
        row = session.scalars(select(PluginRow).where(PluginRow.name == "delta")).one()
        row.enabled, row.disabled_reason = False, "operator: noisy"
    assert not _sync(make_plugin.root).changed
    assert _rows()["delta"].enabled is False


def test_cli_sync_prints_changes(db, make_plugin) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from app.cli import cli

    make_plugin("epsilon")
    runner = CliRunner()
    result = runner.invoke(cli, ["plugins", "sync", "--plugins-dir", str(make_plugin.root)])
    assert result.exit_code == 0, result.output
    assert "inserted: epsilon" in result.output
    result = runner.invoke(cli, ["plugins", "sync", "--plugins-dir", str(make_plugin.root)])
    assert "no changes" in result.output
