"""The offline model: a deterministic CrewAI ``BaseLLM`` for development, tests and benchmarks.

It never touches the network. It answers in CrewAI's ``Final Answer:`` format
with text written by :mod:`app.execution.extractive` from the task in its
prompt, and it counts tokens (whitespace-separated words) so runs record a
real, non-zero token usage. ``delay_seconds`` makes each call sleep, to
benchmark LLM-bound crews; it is 0 unless ``FIRST_SIP_OFFLINE_LLM_DELAY`` is set.

Importing this module imports CrewAI: only the worker (and tests, benchmarks) do.
"""

from __future__ import annotations

import time
from typing import Any

from crewai.llms.base_llm import BaseLLM

from app.execution import extractive
from app.llm import OFFLINE_MODEL

# Large enough that CrewAI never tries to summarise a prompt to fit.
CONTEXT_WINDOW = 1_000_000


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else message
    if isinstance(content, list):  # content blocks
        return "\n".join(str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content)
    return "" if content is None else str(content)


def count_tokens(text: str) -> int:
    """The offline model's token count: whitespace-separated words."""
    return len(text.split())


class OfflineLLM(BaseLLM):
    """Deterministic extractive model; not a language model. Model name ``offline/extractive``."""

    llm_type: str = "offline"
    model: str = OFFLINE_MODEL
    provider: str = "offline"
    delay_seconds: float = 0.0

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
        """Answer the user turns of ``messages`` (see :func:`extractive.answer`)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if self.delay_seconds > 0:
            time.sleep(self.delay_seconds)
        prompt = "\n\n".join(_content(m) for m in messages if isinstance(m, dict) and m.get("role") == "user")
        text = "Thought: I now know the final answer\nFinal Answer: " + extractive.answer(prompt)
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
