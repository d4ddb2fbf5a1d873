"""``first-sip plugins new NAME``: a new plugin folder with a classic CrewAI ``@CrewBase`` crew.

Guarantees: :func:`plugin_name` turns a project name into the plugin name
the way ``crewai create crew`` names its folder (``"News Brief"`` ->
``news_brief``; dashes are kept); :func:`scaffold` writes a complete plugin (manifest, settings
schema, ``crew/crew.py`` with a ``@CrewBase`` class in the shape
``crewai create crew NAME --classic`` generates, ``crew/config/agents.yaml``
and ``tasks.yaml``, an empty ``crew/requirements.txt``) that passes
``plugins validate`` and runs on the offline model as it is. It refuses an
invalid name or an existing folder and never overwrites anything. Light: it
writes text, it imports no CrewAI.
"""

from __future__ import annotations

import json
from pathlib import Path

from app.errors import FirstSipError
from app.plugins.names import PLUGIN_NAME_RE, PLUGIN_NAME_RULE


class ScaffoldError(FirstSipError):
    """The plugin cannot be created (bad name, folder exists)."""


MANIFEST = """\
name: {name}
description: {title} briefing, researched and written by two agents.
owner: you
version: 0.1.0
capabilities:
  - briefing
  - manual
default_config:
  topic: {title}
settings_schema_path: settings.schema.json
# A CrewAI @CrewBase class; the framework instantiates it, gives every agent the run's
# model and kicks it off with the run's settings as inputs ({{topic}}, ...).
entry_point: crew/crew.py:{cls}
timeout_seconds: 300
"""

CREW = '''\
"""{title}: a researcher and a reporting analyst, in CrewAI's classic project shape."""

from crewai import Agent, Crew, Process, Task
from crewai.agents.agent_builder.base_agent import BaseAgent
from crewai.project import CrewBase, agent, crew, task


@CrewBase
class {cls}:
    """The {name} crew. Agents and tasks are in config/agents.yaml and config/tasks.yaml."""

    agents: list[BaseAgent]
    tasks: list[Task]

    @agent
    def researcher(self) -> Agent:
        return Agent(config=self.agents_config["researcher"])  # type: ignore[index]

    @agent
    def reporting_analyst(self) -> Agent:
        return Agent(config=self.agents_config["reporting_analyst"])  # type: ignore[index]

    @task
    def research_task(self) -> Task:
        return Task(config=self.tasks_config["research_task"])  # type: ignore[index]

    @task
    def reporting_task(self) -> Task:
        # Written to the run's own folder and recorded with the run's output.
        config = self.tasks_config["reporting_task"]  # type: ignore[index]
        return Task(config=config, output_file="report.md")

    @crew
    def crew(self) -> Crew:
        return Crew(agents=self.agents, tasks=self.tasks, process=Process.sequential)
'''

AGENTS = """\
# No llm: the framework gives every agent the run's model.
researcher:
  role: >
    {{topic}} Senior Researcher
  goal: >
    Uncover the developments in {{topic}} that matter this year ({{current_year}})
  backstory: >
    You find the most relevant information about {{topic}} and present it clearly.

reporting_analyst:
  role: >
    {{topic}} Reporting Analyst
  goal: >
    Turn the research about {{topic}} into a short, clear report
  backstory: >
    You write reports that are easy to read and act on.
"""

TASKS = """\
research_task:
  description: >
    Research {{topic}}. The current year is {{current_year}}.
  expected_output: >
    A list of the five most relevant facts about {{topic}}.
  agent: researcher

reporting_task:
  description: >
    Expand each fact from the research into a short section of a report about {{topic}}.
  expected_output: >
    A report in markdown with one section per fact.
  agent: reporting_analyst
"""

REQUIREMENTS = "# Python packages this crew imports beyond CrewAI, one per line (checked before deploy).\n"


def plugin_name(text: str) -> str:
    """The plugin name for a project name: lower case, spaces as underscores (as CrewAI's folder)."""
    return "_".join(text.strip().lower().split())


def class_name(name: str) -> str:
    """``morning-brief`` / ``news_brief`` -> ``MorningBrief`` / ``NewsBrief``."""
    joined = "".join(part.capitalize() for part in name.replace("_", "-").split("-") if part)
    return joined if joined.isidentifier() else f"Crew{joined}"


def _schema(title: str) -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{title} settings",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "topic": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200,
                "default": title,
                "description": "What the briefing is about.",
            }
        },
        "required": ["topic"],
    }
    return json.dumps(schema, indent=2) + "\n"


def scaffold(root: Path, name: str) -> Path:
    """Create plugin ``plugin_name(name)`` under ``root``; the new folder."""
    given, name = name, plugin_name(name)
    if not PLUGIN_NAME_RE.fullmatch(name):
        raise ScaffoldError(f"{given!r} is not a plugin name: {PLUGIN_NAME_RULE}")
    folder = root / name
    if folder.exists():
        raise ScaffoldError(f"{folder} already exists; nothing was written")
    title = name.replace("-", " ").replace("_", " ").capitalize()
    values = {"name": name, "title": title, "cls": class_name(name)}
    files = {
        "plugin.yaml": MANIFEST.format(**values),
        "settings.schema.json": _schema(title),
        "crew/crew.py": CREW.format(**values),
        "crew/config/agents.yaml": AGENTS.format(**values),
        "crew/config/tasks.yaml": TASKS.format(**values),
        "crew/requirements.txt": REQUIREMENTS,
    }
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder
