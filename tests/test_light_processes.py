"""Light processes stay light: beat, the consumer, the API and the CLI never import CrewAI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

ENTRY_POINTS = {
    "api": "import app.api",
    "cli": "import app.cli",
    "consumer": "import app.streams.consumer, app.streams.consumer_process, app.commands.consumer",
    "beat": "import app.celery_app, app.tasks, app.beat_tick, app.outbox",
    "status": "import app.status",
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_does_not_import_crewai(name: str) -> None:
    heavy = "('crewai', 'litellm', 'chromadb')"
    found = f"sorted(m for m in sys.modules if m.split('.')[0] in {heavy})"
    code = f"{ENTRY_POINTS[name]}\nimport sys\nprint({found})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"{name} imports {proc.stdout.strip()}"


def test_running_a_scheduler_tick_does_not_import_crewai(db, redis_client) -> None:  # type: ignore[no-untyped-def]
    code = "from app.beat_tick import tick\ntick()\nimport sys\nprint('crewai' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def _imported_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of ``watched`` (modules and their submodules) a fresh interpreter has imported after ``code``."""
    probe = (
        f"{code}\nimport sys\n"
        f"watched = {watched!r}\n"
        "print(sorted(m for m in sys.modules if any(m == w or m.startswith(w + '.') for w in watched)))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return list(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


#: Every module of the streams and database packages, imported in one fresh interpreter.
EVERY_STREAMS_AND_DB_MODULE = (
    "import importlib, pkgutil, app.db, app.streams\n"
    "for package in (app.db, app.streams):\n"
    "    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + '.'):\n"
    "        importlib.import_module(info.name)\n"
)


def test_streams_and_db_do_not_reach_into_tasks_or_execution() -> None:
    """No loop back: streams and db never import the tasks, the execution package or CrewAI."""
    assert _imported_after(EVERY_STREAMS_AND_DB_MODULE, ("app.tasks", "app.execution", "crewai")) == []
    # The walk really imported them (a probe that imports nothing would pass the line above).
    assert "app.streams.dispatch" in _imported_after(EVERY_STREAMS_AND_DB_MODULE, ("app.streams",))


def test_celery_app_does_not_reach_into_tasks_execution_or_db() -> None:
    """The Celery application is configuration: its worker hooks live beside the tasks."""
    watched = ("app.tasks", "app.worker_hooks", "app.execution", "app.db", "crewai")
    assert _imported_after("import app.celery_app", watched) == []


def _imports_anywhere(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or lazily inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _reaches(imports: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imports if any(m == f or m.startswith(f + ".") for f in forbidden))


def test_no_hidden_import_loops() -> None:
    """Lazy imports count too: a function-level import of the tasks is still a loop back."""
    app_dir = ROOT / "app"
    worker_side = ("app.tasks", "app.execution", "app.beat_tick", "crewai")
    for path in sorted([*app_dir.joinpath("streams").glob("*.py"), *app_dir.joinpath("db").glob("*.py")]):
        assert _reaches(_imports_anywhere(path), worker_side) == [], path
    celery_side = _imports_anywhere(app_dir / "celery_app.py")
    assert _reaches(celery_side, ("app.tasks", "app.execution", "app.db", "app.streams", "crewai")) == []
