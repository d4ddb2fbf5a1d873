"""CrewAI-shaped plugins through a real Celery worker (threads pool), PostgreSQL and Redis, offline model.

The classic and JSON projects are generated in the test by the installed CrewAI
CLI and become plugins by adding ``plugin.yaml`` and ``settings.schema.json``
only. Outcomes are read from the run rows, the worker's directory and the
run-folder root, never from mocks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from app.db.engine import session_scope
from app.db.models import PluginRow, PluginRun, RunStatus
from app.plugins.registry import discover
from app.plugins.sync import sync_plugins
from tests.conftest import ROOT
from tests.crewai_projects import classic_plugin, json_plugin, structured_folder
from tests.plugins.harness import dispatch, make_user, wait_for
from tests.processes import ManagedProcess, celery_worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugins_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crew-plugins") / "plugins"
    root.mkdir()
    classic_plugin(root, "newsroom")
    json_plugin(root, "briefing")
    structured_folder(root, "structured")
    structured_folder(root, "strict", fail_on=["tool_errors"])
    return root


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run-folders")


@pytest.fixture(scope="module")
def worker(
    pg_database: str, redis_session: redis.Redis, plugins_root: Path, runs_root: Path
) -> Iterator[ManagedProcess]:
    env = {"PLUGINS_DIR": str(plugins_root), "RUN_WORKDIR_ROOT": str(runs_root), "LEASE_SECONDS": "10"}
    with celery_worker(pool="threads", concurrency=4, env=env) as process:
        yield process


def run(plugins_root: Path, plugin: str, settings: dict[str, Any] | None = None) -> PluginRun:
    """Sync the plugins, insert a run of ``plugin``, send it to the worker, wait for its end."""
    with session_scope() as session:
        sync_plugins(session, discover(plugins_root))
        plugin_id = session.scalar(select(PluginRow.id).where(PluginRow.name == plugin))
    assert plugin_id is not None, f"{plugin} did not sync"
    run_id = uuid.uuid4()
    with session_scope() as session:
        session.add(
            PluginRun(
                run_id=run_id,
                user_id=make_user(),
                plugin_id=plugin_id,
                trigger="manual",
                status=RunStatus.QUEUED,
                input=settings or {},
            )
        )
    dispatch(run_id)
    return wait_for(run_id)


def test_classic_crewai_project_runs_and_its_report_lands_in_the_run_folder(
    worker: ManagedProcess, db: str, plugins_root: Path, runs_root: Path
) -> None:
    row = run(plugins_root, "newsroom", {"topic": "solar power"})
    assert row.status == RunStatus.COMPLETED, row.error_message
    out = row.output
    assert out is not None
    assert [t["name"] for t in out["tasks"]] == ["research_task", "reporting_task"]
    assert out["tasks"][0]["agent"].strip() == "solar power Senior Data Researcher"  # settings are the inputs
    assert "news digest" not in out["content"]
    [report] = out["files"]
    assert report["path"] == "report.md" and report["text"] == out["content"]
    assert out["report"]["framework"]["entry_point"] == "crewbase"
    assert out["token_usage"]["successful_requests"] == 2
    assert not (ROOT / "report.md").exists()  # not in the worker's directory
    assert list(runs_root.iterdir()) == []  # the run's folder is removed after the run


def test_json_first_crewai_project_runs(worker: ManagedProcess, db: str, plugins_root: Path) -> None:
    row = run(plugins_root, "briefing")
    assert row.status == RunStatus.COMPLETED, row.error_message
    out = row.output
    assert out is not None
    assert out["tasks"][0]["agent"] == "Senior Researcher"
    assert out["report"]["framework"]["model_overrides"] == ["openai/gpt-4o"]
    assert out["report"]["framework"]["memory_disabled"] is True


def test_yaml_crew_with_output_json_and_a_tool(worker: ManagedProcess, db: str, plugins_root: Path) -> None:
    row = run(plugins_root, "structured")
    assert row.status == RunStatus.COMPLETED, row.error_message
    out = row.output
    assert out is not None
    brief = out["tasks"][0]["json"]
    assert isinstance(brief["title"], str) and len(brief["points"]) >= 2 and 0 <= brief["confidence"] <= 1
    assert out["report"]["framework"]["tool_errors"] == []
    assert [f["path"] for f in out["files"]] == ["out/science.json"]


def test_tool_error_is_recorded_in_the_completed_runs_report(
    worker: ManagedProcess, db: str, plugins_root: Path
) -> None:
    row = run(plugins_root, "structured", {"frequency": "weekly"})
    assert row.status == RunStatus.COMPLETED, row.error_message
    assert row.output is not None
    [error] = row.output["report"]["framework"]["tool_errors"]
    assert (error["tool"], error["error"], error["count"]) == (
        "lookup",
        "RuntimeError: SERPER_API_KEY is not set",
        1,
    )


def test_fail_on_tool_errors_fails_the_run(worker: ManagedProcess, db: str, plugins_root: Path) -> None:
    ok = run(plugins_root, "strict")
    assert ok.status == RunStatus.COMPLETED, ok.error_message
    failed = run(plugins_root, "strict", {"frequency": "weekly"})
    assert failed.status == RunStatus.FAILED
    assert failed.error_message == (
        "PermanentError: failed by the plugin's fail_on: "
        "tool errors: lookup: RuntimeError: SERPER_API_KEY is not set (x1)"
    )


def test_plugins_new_scaffolds_a_plugin_that_validates_and_runs(
    worker: ManagedProcess, db: str, plugins_root: Path
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app", "plugins", *args, "--plugins-dir", str(plugins_root)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env=os.environ,
        )

    created = cli("new", "morning-brief")
    assert created.returncode == 0, created.stderr
    assert cli("new", "morning-brief").returncode == 1  # never overwrites
    assert cli("new", "../Bad").returncode == 1
    checked = cli("validate")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "morning-brief" in checked.stdout
    row = run(plugins_root, "morning-brief")
    assert row.status == RunStatus.COMPLETED, row.error_message
    assert row.output is not None
    assert [f["path"] for f in row.output["files"]] == ["report.md"]
    assert row.output["content"].startswith("# Expand each fact from the research")
