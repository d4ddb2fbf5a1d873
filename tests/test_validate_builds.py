"""``plugins validate`` and ``release`` build every crew (in a subprocess) before deploy.

Each broken plugin fails with its cause named; the others still validate and
sync; the CLI process itself never imports CrewAI; what a plugin does at
import time stays in the check's own scratch folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db.engine import session_scope
from app.db.models import PluginRow
from app.plugins.scaffold import scaffold
from app.plugins.sync import BUILD_REJECTED_PREFIX, REJECTED_PREFIX
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def variant(root: Path, name: str) -> Path:
    """A copy of the scaffolded ``good`` plugin, renamed."""
    folder = root / name
    shutil.copytree(root / "good", folder)
    manifest = folder / "plugin.yaml"
    manifest.write_text(manifest.read_text().replace("name: good", f"name: {name}"))
    return folder


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def plugins_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("validate") / "plugins"
    root.mkdir()
    scaffold(root, "good")
    needy = variant(root, "needy")
    (needy / "crew" / "requirements.txt").write_text("pyyaml>=5\nnot-installed-anywhere>=1.0\n")
    broken = variant(root, "broken-import")
    edit(
        broken / "crew" / "crew.py", "from crewai import", "import not_installed_anywhere\nfrom crewai import"
    )
    no_agents = variant(root, "no-agents")
    tasks = no_agents / "crew" / "config" / "tasks.yaml"
    tasks.write_text("".join(line for line in tasks.read_text().splitlines(True) if "agent:" not in line))
    undefined = variant(root, "undefined-agent")
    edit(undefined / "crew" / "config" / "tasks.yaml", "agent: researcher", "agent: nobody")
    noisy = variant(root, "writes-on-import")
    edit(
        noisy / "crew" / "crew.py",
        "from crewai import",
        "open('imported.txt', 'w').close()\nfrom crewai import",
    )
    return root


def test_validate_fails_each_broken_plugin_with_its_cause(plugins_root: Path, tmp_path: Path) -> None:
    code = (
        "import sys\nfrom app.cli import cli\n"
        f"try:\n    cli(['plugins', 'validate', '--plugins-dir', {str(plugins_root)!r}])\n"
        "except SystemExit as exc:\n    status = exc.code\n"
        "print('EXIT', status, 'CREWAI-IMPORTED', 'crewai' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    out = proc.stdout
    assert out.strip().splitlines()[-1] == "EXIT 1 CREWAI-IMPORTED False", proc.stdout + proc.stderr
    lines = out.splitlines()

    def line_of(plugin: str) -> str:
        found = [line for line in lines if f"/{plugin}/" in line]
        assert len(found) == 1, (plugin, out)
        return found[0]

    assert line_of("needy").endswith(
        "needy/crew/requirements.txt:2 [not-installed-anywhere]: not-installed-anywhere is not installed"
    )
    assert (
        "cannot import crew/crew.py: module 'not_installed_anywhere' is not installed (at crew/crew.py:3)"
        in line_of("broken-import")
    )
    assert "crew/config/tasks.yaml: research_task, reporting_task: no 'agent'" in line_of("no-agents")
    assert (
        "crew/config/tasks.yaml: research_task.agent: no @agent named 'nobody' in the crew class"
        in line_of("undefined-agent")
    )
    assert "4 problem(s); 2 plugin(s) valid" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # the plugin's import-time write stayed in the check's folder


def test_validate_passes_the_valid_plugins_and_prints_notes(plugins_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    shutil.copytree(plugins_root / "good", root / "good")
    shutil.copytree(ROOT / "plugins" / "daily-news-digest", root / "daily-news-digest")
    proc = cli("plugins", "validate", "--plugins-dir", str(root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok: 2 plugin(s) valid (crews built): daily-news-digest, good")


def test_a_crew_that_hangs_at_import_is_stopped_at_the_time_limit(plugins_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    shutil.copytree(plugins_root / "good", root / "good")
    slow = variant(root, "hangs")
    edit(slow / "crew" / "crew.py", "from crewai import", "import time\ntime.sleep(3600)\nfrom crewai import")
    proc = cli("plugins", "validate", "--plugins-dir", str(root), "--timeout", "5", cwd=tmp_path)
    assert proc.returncode == 1
    assert (
        "hangs/plugin.yaml [entry_point]: importing and building the crew took longer than 5 s" in proc.stdout
    )
    assert "1 problem(s); 1 plugin(s) valid" in proc.stderr


def test_release_disables_a_plugin_whose_crew_stopped_building_and_syncs_the_others(
    db: str, plugins_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    shutil.copytree(plugins_root / "good", root / "good")
    flaky = variant(root, "flaky")
    env = {"PLUGINS_DIR": str(root)}
    first = cli("release", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    edit(
        flaky / "crew" / "crew.py", "from crewai import", "import not_installed_anywhere\nfrom crewai import"
    )
    edit(root / "good" / "plugin.yaml", "version: 0.1.0", "version: 0.2.0")
    second = cli("release", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "disabled: flaky" in second.stdout and "updated: good" in second.stdout
    with session_scope() as session:
        rows = {r.name: r for r in session.scalars(select(PluginRow))}
    assert rows["good"].enabled and rows["good"].version == "0.2.0"
    assert not rows["flaky"].enabled
    reason = rows["flaky"].disabled_reason or ""
    assert reason.startswith(REJECTED_PREFIX)
    assert "cannot import crew/crew.py: module 'not_installed_anywhere' is not installed" in reason


def test_sync_and_release_agree_a_plugin_whose_crew_does_not_build_stays_disabled(
    db: str, plugins_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    shutil.copytree(plugins_root / "broken-import", root / "broken-import")
    env = {"PLUGINS_DIR": str(root)}

    def row() -> PluginRow:
        with session_scope() as session:
            found = session.scalars(select(PluginRow).where(PluginRow.name == "broken-import")).one()
            session.expunge(found)
            return found

    first = cli("plugins", "sync", cwd=tmp_path, env=env)  # no build check: inserted, enabled
    assert first.returncode == 0 and "inserted: broken-import" in first.stdout, first.stdout + first.stderr
    released = cli("release", cwd=tmp_path, env=env)
    assert released.returncode == 0 and "disabled: broken-import" in released.stdout, released.stdout
    reason = row().disabled_reason
    assert reason is not None and reason.startswith(BUILD_REJECTED_PREFIX)
    again = cli("plugins", "sync", cwd=tmp_path, env=env)  # must not undo what release decided
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept disabled (its crew did not build at the last check): broken-import" in again.stdout
    assert not row().enabled and row().disabled_reason == reason
    checked = cli("plugins", "sync", "--build", cwd=tmp_path, env=env)  # the same check as release
    assert checked.returncode == 0 and "no changes" in checked.stdout, checked.stdout + checked.stderr
    edit(root / "broken-import" / "crew" / "crew.py", "import not_installed_anywhere\n", "")
    fixed = cli("plugins", "sync", "--build", cwd=tmp_path, env=env)
    assert "re-enabled: broken-import" in fixed.stdout, fixed.stdout + fixed.stderr
    assert row().enabled and row().disabled_reason is None


def test_a_check_that_cannot_run_shows_one_reason_line_and_logs_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from app.plugins import buildcheck
    from app.plugins.registry import load_plugin

    (tmp_path / "boom_check.py").write_text(
        "def _deep():\n    raise RuntimeError('the check broke')\n\n\n_deep()\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(buildcheck, "DRYRUN_MODULE", "boom_check")
    plugin = load_plugin(scaffold(tmp_path / "plugins", "good"))
    with (
        caplog.at_level(logging.DEBUG, logger="app.plugins.buildcheck"),
        pytest.raises(buildcheck.BuildCheckError) as info,
    ):
        buildcheck.check_builds([plugin], timeout=30)
    assert str(info.value) == "the build check could not run: RuntimeError: the check broke"
    assert "Traceback (most recent call last)" in caplog.text and "_deep" in caplog.text


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # killed, not yet reaped by whoever adopted it


def test_processes_a_plugin_starts_and_memory_it_eats_at_import_stay_in_its_own_check(
    plugins_root: Path, tmp_path: Path
) -> None:
    from app.plugins import buildcheck
    from app.plugins.registry import load_plugin

    root = tmp_path / "plugins"
    root.mkdir()
    shutil.copytree(plugins_root / "good", root / "good")
    pidfile = tmp_path / "sleeper.pid"
    forks = variant(root, "forks-a-sleeper")
    edit(
        forks / "crew" / "crew.py",
        "from crewai import",
        "import os, time\n"
        "_child = os.fork()\n"
        "if _child == 0:\n"
        "    time.sleep(600)\n"
        "    os._exit(0)\n"
        f"open({str(pidfile)!r}, 'w').write(str(_child))\n"
        "from crewai import",
    )
    hog = variant(root, "eats-memory")
    edit(
        hog / "crew" / "crew.py",
        "from crewai import",
        "_blocks = []\nwhile True:\n    _blocks.append(bytearray(64 * 1024 * 1024))\nfrom crewai import",
    )
    plugins = [load_plugin(root / name) for name in ("eats-memory", "forks-a-sleeper", "good")]
    results = buildcheck.check_builds(plugins, timeout=120, memory_mb=512)
    # The sleeper kept the result pipe open: the check reads the result line, not to EOF,
    # then kills the plugin's whole process group.
    assert results["forks-a-sleeper"].ok, results["forks-a-sleeper"].problems
    assert _dead(int(pidfile.read_text()))
    assert results["good"].ok
    [problem] = results["eats-memory"].problems
    assert "MemoryError" in problem.message or "died while building" in problem.message
