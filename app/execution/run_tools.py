"""The run's context for crews CrewAI builds, and the framework's tools a crew may name.

A function entry point is handed ``ctx``; a ``@CrewBase`` class and a JSON
crew are built by CrewAI, so they get the same context another way:

* a ``@CrewBase`` instance has ``self.ctx`` (the run's
  :class:`~app.execution.contract.CrewContext`) before its ``__init__`` runs,
  so ``__init__``, ``@agent``, ``@task`` and ``@tool`` methods may all use it;
* anything CrewAI constructs while the framework builds a crew (a JSON crew's
  ``custom:`` tools, a tool class named by import reference) may call
  :func:`current_context`;
* the framework's tools are usable by name: ``tools: [fetch_url]`` in a
  ``@CrewBase`` class's ``agents.yaml``/``tasks.yaml`` or in the YAML of
  ``ctx.crew_from_yaml()`` (unless the plugin defines a tool of that name
  itself), and ``"tools": ["app.execution.run_tools:FetchUrlTool"]`` in a
  JSON crew's agent file.

``fetch_url`` fetches one URL through :meth:`CrewContext.fetch` (public
http(s) addresses only, a total deadline, a size cap, stopped with the run)
and answers with the text of the page, cut to :data:`MAX_TOOL_CHARS`; a
refused or failed fetch is a tool error (recorded in the run's report). The
tool is bound to the run it was built for. This module imports CrewAI only
when a tool is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import TYPE_CHECKING, Any

from app.errors import PermanentError

if TYPE_CHECKING:
    from app.execution.contract import CrewContext

#: The name crews use for the framework's URL fetch tool.
FETCH_TOOL_NAME = "fetch_url"
#: Characters of a fetched page the tool hands the agent (a page can be far larger than a prompt).
MAX_TOOL_CHARS = 20_000

_current: ContextVar[CrewContext | None] = ContextVar("first_sip_run_context", default=None)


@contextmanager
def active(ctx: CrewContext) -> Iterator[CrewContext]:
    """Within this block (this context only), :func:`current_context` is ``ctx``."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def current_context() -> CrewContext:
    """The context of the run whose crew is being built in this thread; :class:`PermanentError` if none."""
    ctx = _current.get()
    if ctx is None:
        raise PermanentError(
            "no run is being built here: the run's context exists only while its crew is built"
        )
    return ctx


@cache
def _tool_class() -> type:
    from crewai.tools import BaseTool
    from pydantic import BaseModel, Field, PrivateAttr

    class FetchUrlInput(BaseModel):
        url: str = Field(description="The http(s) address of the page to read.")

    class FetchUrlTool(BaseTool):  # type: ignore[misc]
        """CrewAI tool over the run's ``ctx.fetch``."""

        name: str = FETCH_TOOL_NAME
        description: str = (
            "Fetch one web page by its http(s) address and return its text (public addresses only)."
        )
        args_schema: type[BaseModel] = FetchUrlInput
        _ctx: Any = PrivateAttr(default=None)

        def model_post_init(self, context: Any, /) -> None:
            super().model_post_init(context)
            self._ctx = current_context()

        def _run(self, url: str) -> str:
            from app.net.errors import FetchError

            try:
                text = str(self._ctx.fetch(url).text)
            except FetchError as exc:
                raise RuntimeError(f"cannot fetch {url}: {exc.reason}") from exc
            return text if len(text) <= MAX_TOOL_CHARS else text[:MAX_TOOL_CHARS] + "\n[cut]"

    FetchUrlTool.__module__ = __name__
    FetchUrlTool.__qualname__ = "FetchUrlTool"
    return FetchUrlTool


def fetch_tool(ctx: CrewContext) -> Any:
    """A ``fetch_url`` CrewAI tool bound to ``ctx``."""
    with active(ctx):
        return _tool_class()()


def tool_factories(ctx: CrewContext) -> dict[str, Callable[[], Any]]:
    """The framework's tools by name, as ``@tool``-style factories (CrewAI calls them to get the tool)."""

    def fetch_url() -> Any:
        return fetch_tool(ctx)

    fetch_url.is_tool = True  # type: ignore[attr-defined]  # CrewAI's @tool marker
    return {FETCH_TOOL_NAME: fetch_url}


def __getattr__(name: str) -> Any:
    # ``app.execution.run_tools:FetchUrlTool`` (a JSON crew's import reference) without
    # importing CrewAI when this module is imported.
    if name == "FetchUrlTool":
        return _tool_class()
    raise AttributeError(name)
