"""CrewAI projects made by the installed CrewAI CLI, turned into plugins by adding two files.

``classic_plugin`` runs ``crewai create crew NAME --classic --skip-provider``
and ``json_plugin`` runs ``crewai create crew NAME --skip-provider`` (CrewAI's
non-interactive mode, ``CREWAI_DMN=1``), both offline, then add only
``plugin.yaml`` and ``settings.schema.json``: nothing CrewAI generated is
changed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

CREWAI_CLI = Path(sys.executable).parent / "crewai"
QUIET = {"CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true", "CREWAI_TRACING_ENABLED": "false"}

TOPIC_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {"topic": {"type": "string", "minLength": 1, "default": "AI LLMs"}},
    "required": ["topic"],
}


def _crewai(root: Path, *args: str, env: dict[str, str] | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(CREWAI_CLI), "create", "crew", *args, "--skip-provider"],
        cwd=root,
        env={**os.environ, **QUIET, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def add_plugin_files(folder: Path, entry_point: str, **manifest: Any) -> Path:
    """Write ``plugin.yaml`` and ``settings.schema.json`` into a CrewAI project folder."""
    data = {
        "name": folder.name,
        "description": f"The {folder.name} crew, as CrewAI generated it.",
        "owner": "tests",
        "version": "1.0.0",
        "capabilities": ["manual"],
        "entry_point": entry_point,
        **manifest,
    }
    (folder / "plugin.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (folder / "settings.schema.json").write_text(json.dumps(TOPIC_SCHEMA))
    return folder


def project_names(name: str) -> tuple[str, str]:
    """(folder and package, class) ``crewai create crew NAME`` makes of ``name`` ("news brief")."""
    folder = re.sub(r"[^a-zA-Z0-9_]", "", name.replace(" ", "_").replace("-", "_").lower())
    cls = re.sub(r"[^a-zA-Z0-9_]", "", name.replace("_", " ").replace("-", " ").title().replace(" ", ""))
    return folder, cls


def classic_plugin(root: Path, name: str, **manifest: Any) -> Path:
    """``crewai create crew NAME --classic`` under ``root``, plus the two plugin files."""
    _crewai(root, name, "--classic")
    package, cls = project_names(name)
    return add_plugin_files(root / package, f"src/{package}/crew.py:{cls}", **manifest)


def json_plugin(root: Path, name: str, **manifest: Any) -> Path:
    """``crewai create crew NAME`` (JSON-first, non-interactive) under ``root``, plus the two files."""
    _crewai(root, name, env={"CREWAI_DMN": "1"})
    return add_plugin_files(root / name, "crew.jsonc", **manifest)


# ---- a YAML crew (ctx.crew_from_yaml) with a tool and output_json -----------------------------

STRUCTURED_CREW = """\
from pydantic import BaseModel, Field
from crewai.tools import tool


class Brief(BaseModel):
    title: str
    points: list[str] = Field(min_length=2)
    confidence: float = Field(ge=0, le=1)


def build_crew(ctx):
    @tool("lookup")
    def lookup(query: str) -> str:
        \"\"\"Look a fact up.\"\"\"
        if ctx.settings.get("frequency") == "weekly":
            raise RuntimeError("SERPER_API_KEY is not set")
        return f"Facts about {query}."

    crew = ctx.crew_from_yaml(tools=[lookup], models=[Brief])
    return ctx.plan(crew, {"topics": ", ".join(ctx.settings["topics"])})
"""
STRUCTURED_AGENTS = "analyst:\n  role: Analyst of {topics}\n  goal: Brief {topics}\n  backstory: Brief.\n"
STRUCTURED_TASKS = (
    "brief:\n  description: Write a brief about {topics}. Use the lookup tool.\n"
    "  expected_output: A brief.\n  output_json: Brief\n  tools: [lookup]\n  output_file: out/{topics}.json\n"
)


def structured_folder(root: Path, name: str, **manifest: Any) -> Path:
    """A plugin whose YAML crew has a tool (that raises for ``frequency: weekly``) and ``output_json``."""
    from tests.conftest import VALID_SCHEMA, manifest_text

    folder = root / name
    (folder / "crew").mkdir(parents=True)
    (folder / "plugin.yaml").write_text(manifest_text(name, capabilities=["manual"], **manifest))
    (folder / "settings.schema.json").write_text(json.dumps(VALID_SCHEMA))
    (folder / "crew" / "main.py").write_text(STRUCTURED_CREW)
    (folder / "crew" / "agents.yaml").write_text(STRUCTURED_AGENTS)
    (folder / "crew" / "tasks.yaml").write_text(STRUCTURED_TASKS)
    return folder
