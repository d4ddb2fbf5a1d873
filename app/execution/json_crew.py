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
* options unsafe in a shared worker
  (:data:`app.execution.shared_worker.CREW_REFUSED` in ``crew.jsonc``,
  :data:`~app.execution.shared_worker.AGENT_REFUSED` in an agent file, at
  its top level or under ``"settings"``) are refused naming the file and key
  before CrewAI builds anything (CrewAI would build an embedder first);
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
from app.execution.shared_worker import AGENT_REFUSED, CREW_REFUSED, HUMAN_INPUT_REASON

_load_lock = threading.Lock()


def _relative(message: str, folder: Path) -> str:
    return message.replace(str(folder.resolve()) + "/", f"{folder.name}/").replace(
        str(folder) + "/", f"{folder.name}/"
    )


def _refuse_unsafe(path: Path, folder: Path) -> None:
    """Refuse the unsafe options the crew's files set (read with CrewAI's own JSONC parser)."""
    from crewai.project.json_loader import find_json_project_file, load_jsonc_file

    crew = load_jsonc_file(path)
    if not isinstance(crew, dict):
        return  # CrewAI reports it
    files: list[tuple[Path, Any, dict[str, str]]] = [(path, crew, CREW_REFUSED)]
    for name in crew.get("agents") or []:
        agent_file = find_json_project_file(path.parent / "agents", name) if isinstance(name, str) else None
        if agent_file is not None:
            files.append((agent_file, load_jsonc_file(agent_file), AGENT_REFUSED))
    for file, data, refused in files:
        if not isinstance(data, dict):
            continue
        raw = data.get("settings")
        settings: dict[str, Any] = raw if isinstance(raw, dict) else {}
        for key, reason in refused.items():
            if key in data or key in settings:
                raise PermanentError(f"{_relative(str(file), folder)}: {key}: not allowed: {reason}")


def load(path: Path, *, folder: Path) -> tuple[Any, dict[str, Any]]:
    """(crew, default inputs) of the JSON crew at ``path``, loaded by CrewAI."""
    from crewai.project.crew_loader import load_crew
    from crewai.project.json_loader import JSONProjectError

    try:
        _refuse_unsafe(path, folder)
        with _load_lock:
            crew, defaults = load_crew(path)
    except JSONProjectError as exc:
        raise PermanentError(_relative(str(exc), folder)) from exc
    except (OSError, ValueError) as exc:
        raise PermanentError(f"{_relative(str(path), folder)}: {type(exc).__name__}: {exc}") from exc
    for index, task in enumerate(crew.tasks):
        if getattr(task, "human_input", False):
            name = task.name or f"tasks[{index}]"
            raise PermanentError(f"{_relative(str(path), folder)}: {name}.human_input: {HUMAN_INPUT_REASON}")
    return crew, dict(defaults or {})
