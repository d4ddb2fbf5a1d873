"""``first-sip plugins validate|list``: problems printed, exit codes, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from app.cli import cli
from tests.conftest import ROOT

runner = CliRunner()


def test_validate_ok_on_reference_plugins() -> None:
    result = runner.invoke(cli, ["plugins", "validate", "--plugins-dir", str(ROOT / "plugins")])
    assert result.exit_code == 0, result.output
    assert "daily-news-digest" in result.output


def test_validate_prints_every_problem_and_exits_1(make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("fine")
    make_plugin("bad-a", version="1")
    make_plugin("bad-b", colour="red")
    result = runner.invoke(cli, ["plugins", "validate", "--plugins-dir", str(make_plugin.root)])
    assert result.exit_code == 1
    assert "bad-a/plugin.yaml:4 [version]: '1' is not a semantic version" in result.output
    assert "bad-b/plugin.yaml:13 [colour]: unknown key" in result.output


def test_list_json(make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("shown")
    make_plugin("hidden", version="x")
    result = runner.invoke(cli, ["plugins", "list", "--json", "--plugins-dir", str(make_plugin.root)])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [p["name"] for p in data["plugins"]] == ["shown"]
    assert len(data["problems"]) == 1


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app", "plugins", "list"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "daily-news-digest" in proc.stdout
