"""The offline model: a deterministic CrewAI ``BaseLLM`` for development, tests and benchmarks.

It never touches the network. It answers in CrewAI's ``Final Answer:`` format,
and it counts tokens (whitespace-separated words) so runs record a real,
non-zero token usage. What it answers:

* a task that asks for structured output (the ``response_model`` CrewAI
  passes, or the task's ``response_model``/``output_pydantic``/``output_json``,
  or the JSON schema CrewAI puts in the prompt): JSON built from that schema
  by :func:`app.execution.structured.instance`, filled with sentences of the
  task, so it validates;
* an agent with tools, on the first call of a task: one deterministic call of
  its first tool (arguments built from the tool's schema); once the
  conversation holds an observation, the final answer;
* otherwise: text written by :mod:`app.execution.extractive` from the task in
  its prompt (a digest when the prompt carries articles, else an answer built
  from the task and its context).

``delay_seconds`` makes each call sleep, to benchmark LLM-bound crews; it is 0
unless ``FIRST_SIP_OFFLINE_LLM_DELAY`` is set.

Importing this module imports CrewAI: only the worker (and tests, benchmarks) do.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from crewai.llms.base_llm import BaseLLM

from app.execution import extractive, structured
from app.llm_config import OFFLINE_MODEL

# Large enough that CrewAI never tries to summarise a prompt to fit.
CONTEXT_WINDOW = 1_000_000
#: Where CrewAI's prompt carries the schema of a structured answer.
_SCHEMA_MARKER = re.compile(r"(?:OpenAPI schema|JSON schema)\s*:\s*", re.IGNORECASE)
#: CrewAI's own tools (delegation, memory) are never the one the offline model tries.
_INTERNAL_TOOLS = ("delegate work to coworker", "ask question to coworker", "recall", "remember")


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message
    if isinstance(content, list):  # content blocks
        return "\n".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)
    return "" if content is None else str(content)


def count_tokens(text: str) -> int:
    """The offline model's token count: whitespace-separated words."""
    return len(text.split())


def _schema_of(model: Any) -> dict[str, Any] | None:
    schema = getattr(model, "model_json_schema", None)
    if callable(schema):
        return dict(schema())
    return None


def requested_schema(prompt: str, response_model: Any, task: Any) -> dict[str, Any] | None:
    """The JSON schema the answer must follow, if the call asks for structured output."""
    for candidate in (
        response_model,
        getattr(task, "response_model", None),
        getattr(task, "output_pydantic", None),
        getattr(task, "output_json", None),
    ):
        schema = _schema_of(candidate) if candidate is not None else None
        if schema is not None:
            return schema
    match = _SCHEMA_MARKER.search(prompt)
    if match:
        try:
            found, _ = json.JSONDecoder().raw_decode(prompt[match.end() :])
        except ValueError:
            return None
        return found if isinstance(found, dict) else None
    return None


def _first_tool(agent: Any, task: Any) -> Any:
    for tool in [*(getattr(task, "tools", None) or []), *(getattr(agent, "tools", None) or [])]:
        name = str(getattr(tool, "name", "")).strip()
        if name and name.lower() not in _INTERNAL_TOOLS:
            return tool
    return None


def _tool_call(tool: Any, texts: list[str]) -> str:
    schema_model = getattr(tool, "args_schema", None)
    schema = _schema_of(schema_model) or {"type": "object", "properties": {}}
    arguments = structured.instance(schema, texts)
    return (
        f"Thought: I will use {tool.name} once before answering.\n"
        f"Action: {tool.name}\nAction Input: {json.dumps(arguments if isinstance(arguments, dict) else {})}"
    )


def _observations(messages: list[Any]) -> list[str]:
    """The tool results in the conversation (CrewAI appends ``Observation: ...`` after the first turn)."""
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    found = []
    for message in turns[1:]:
        _, marker, result = _content(message).partition("Observation:")
        if marker:
            found.append(result.strip())
    return found


class OfflineLLM(BaseLLM):
    """Deterministic extractive model; not a language model. Model name ``offline/extractive``."""

    llm_type: str = "offline"
    model: str = OFFLINE_MODEL
    provider: str = "offline"
    delay_seconds: float = 0.0

    def _answer(self, messages: list[Any], response_model: Any, task: Any, agent: Any) -> str:
        prompt = "\n\n".join(_content(m) for m in messages if isinstance(m, dict) and m.get("role") == "user")
        everything = "\n\n".join(_content(m) for m in messages if isinstance(m, dict))
        react = "Action Input:" in everything and "Final Answer:" in everything
        tool = _first_tool(agent, task) if react and response_model is None else None
        observations = _observations(messages)
        if tool is not None and not observations:
            return _tool_call(tool, [" ".join(extractive.task_sentences(prompt))[:500]])
        if observations and extractive.CONTEXT_MARKER not in prompt:
            # What the tool said is context for the answer, like an earlier task's output.
            prompt = f"{prompt}\n{extractive.CONTEXT_MARKER}\n" + "\n".join(observations)
        texts = extractive.task_sentences(prompt)
        schema = requested_schema(prompt, response_model, task)
        if schema is not None:
            body = json.dumps(structured.instance(schema, texts), ensure_ascii=False)
        else:
            body = extractive.answer(prompt)
        return "Thought: I now know the final answer\nFinal Answer: " + body

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        """Answer ``messages`` (see the module docstring)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)
        text = self._answer(messages, response_model, from_task, from_agent)
        self._track_token_usage_internal(
            {
                "prompt_tokens": sum(count_tokens(_content(m)) for m in messages),
                "completion_tokens": count_tokens(text),
            }
        )
        return text

    async def acall(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        """Same as :meth:`call` (there is no I/O to await)."""
        return self.call(
            messages, tools, callbacks, available_functions, from_task, from_agent, response_model
        )

    def supports_function_calling(self) -> bool:
        """No native tool calls: CrewAI uses its text (ReAct) format."""
        return False

    def get_context_window_size(self) -> int:
        """Effectively unlimited."""
        return CONTEXT_WINDOW

    def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
        """The same word count :meth:`call` records (CrewAI would log a warning for its estimate)."""
        if isinstance(messages, str):
            return count_tokens(messages)
        return sum(count_tokens(_content(m)) for m in messages)
