"""Light processes stay light: beat, the consumer, the API and the CLI never import CrewAI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

ENTRY_POINTS = {
    "api": "import app.api",
    "cli": "import app.cli",
    "consumer": "import app.streams.consumer, app.streams.runner, app.commands.consumer",
    "beat": "import app.celery_app, app.tasks, app.scheduler, app.outbox",
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
    code = "from app.scheduler import tick\ntick()\nimport sys\nprint('crewai' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
