"""topic-brief: a researcher with a glossary tool and an editor who writes a structured brief.

A CrewAI ``@CrewBase`` class, as ``crewai create crew NAME --classic`` generates
it, plus one ``@tool`` and one ``@output_json`` model. The framework
instantiates it per run, gives every agent the run's model, kicks it off with
the run's settings as inputs ({topic}) and records the brief's JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from crewai import Agent, Crew, Process, Task
from crewai.agents.agent_builder.base_agent import BaseAgent
from crewai.project import CrewBase, agent, crew, output_json, task, tool
from crewai.tools import BaseTool
from pydantic import BaseModel, Field

GLOSSARY = Path(__file__).with_name("glossary.json")


class GlossaryInput(BaseModel):
    """Arguments of the glossary tool."""

    query: str = Field(description="A term, or a sentence whose terms to look up.")


class GlossaryTool(BaseTool):
    """Looks terms up in the glossary shipped with the plugin (no network)."""

    name: str = "glossary"
    description: str = "Explains the energy terms found in the query, from the plugin's glossary."
    args_schema: type[BaseModel] = GlossaryInput

    def _run(self, query: str) -> str:
        entries = json.loads(GLOSSARY.read_text(encoding="utf-8"))
        text = query.lower()
        found = [f"{term}: {meaning}" for term, meaning in sorted(entries.items()) if term in text]
        return "\n".join(found) or "No glossary term in the query."


@CrewBase
class TopicBrief:
    """The topic-brief crew; agents and tasks are in config/agents.yaml and config/tasks.yaml."""

    agents: list[BaseAgent]
    tasks: list[Task]

    @output_json
    class Brief(BaseModel):
        """The brief the editor writes (the run records it as JSON)."""

        title: str = Field(min_length=1, max_length=120)
        summary: str = Field(min_length=1)
        key_points: list[str] = Field(min_length=3, max_length=5)
        terms: list[str] = Field(default_factory=list)

    @tool
    def glossary(self) -> BaseTool:
        return GlossaryTool()

    @agent
    def researcher(self) -> Agent:
        return Agent(config=self.agents_config["researcher"], tools=[self.glossary()])  # type: ignore[index]

    @agent
    def editor(self) -> Agent:
        return Agent(config=self.agents_config["editor"])  # type: ignore[index]

    @task
    def research_task(self) -> Task:
        return Task(config=self.tasks_config["research_task"])  # type: ignore[index]

    @task
    def brief_task(self) -> Task:
        return Task(config=self.tasks_config["brief_task"], output_file="brief.json")  # type: ignore[index]

    @crew
    def crew(self) -> Crew:
        return Crew(agents=self.agents, tasks=self.tasks, process=Process.sequential)
