"""CrewAI's JSON-first crews (``crew.jsonc`` + ``agents/*.jsonc``) as entry points.

``crewai create crew NAME`` (CrewAI 1.15's default) writes such a project;
CrewAI loads it with ``crewai.project.crew_loader.load_crew``, and so does the
framework: no parser of our own. Guarantees:

* the crew is loaded by CrewAI's loader while the caller has the run's LLM
  injected (:mod:`app.execution.llm_injection`), so the ``"llm"`` every
  generated agent file names is replaced by the run's model, and recorded;
* loads are serialised in the process: CrewAI resolves a project's Python
  references (``{"python": ...}``, ``custom:`` tools) by putting the project
  root on ``sys.path`` for the import, which concurrent loads would race on;
* errors are a :class:`PermanentError` with CrewAI's message, paths shown
  relative to the plugin folder;
* the default inputs of ``crew.jsonc`` (``"inputs"``) are returned so the
  run's settings can override them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from app.errors import PermanentError

_load_lock = threading.Lock()


def _relative(message: str, folder: Path) -> str:
    return message.replace(str(folder.resolve()) + "/", f"{folder.name}/").replace(
        str(folder) + "/", f"{folder.name}/"
    )


def load(path: Path, *, folder: Path) -> tuple[Any, dict[str, Any]]:
    """(crew, default inputs) of the JSON crew at ``path``, loaded by CrewAI."""
    from crewai.project.crew_loader import load_crew
    from crewai.project.json_loader import JSONProjectError

    try:
        with _load_lock:
            crew, defaults = load_crew(path)
    except JSONProjectError as exc:
        raise PermanentError(_relative(str(exc), folder)) from exc
    except (OSError, ValueError) as exc:
        raise PermanentError(f"{_relative(str(path), folder)}: {type(exc).__name__}: {exc}") from exc
    for index, task in enumerate(crew.tasks):
        if getattr(task, "human_input", False):
            name = task.name or f"tasks[{index}]"
            raise PermanentError(
                f"{_relative(str(path), folder)}: {name}.human_input: nobody can answer a worker's prompt"
            )
    return crew, dict(defaults or {})
