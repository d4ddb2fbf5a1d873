"""A controllable crew for the execution tests.

Every execution appends ``<run_id> start`` to ``record_path`` when kickoff
begins and ``<run_id> done`` when it ends, so tests count executions by reading
the file. Inside kickoff it may sleep, raise a transient error (a class named
like litellm's ``RateLimitError``) on its first N executions of a run, or raise
a permanent one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class RateLimitError(Exception):
    """Named like the providers' rate-limit errors: the framework retries it."""


def _record(path: str, run_id: str, what: str) -> int:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{run_id} {what}\n")
    return sum(1 for line in Path(path).read_text().splitlines() if line == f"{run_id} {what}")


def build_crew(ctx: Any) -> Any:
    s = ctx.settings
    crew = ctx.crew_from_yaml()

    def before(inputs: dict[str, Any]) -> dict[str, Any]:
        starts = _record(s["record_path"], ctx.run_id, "start")
        time.sleep(s["sleep_seconds"])
        if starts <= s["transient_failures"]:
            raise RateLimitError(f"provider says slow down (execution {starts})")
        if s["permanent_error"]:
            raise ValueError(f"plugin exploded{s['error_detail']}{os.environ.get('TEST_API_KEY', '')}")
        return inputs

    def after(output: Any) -> Any:
        _record(s["record_path"], ctx.run_id, "done")
        return output

    crew.before_kickoff_callbacks.append(before)
    crew.after_kickoff_callbacks.append(after)
    inputs = {} if s["drop_input"] else {"word": s["word"]}
    return ctx.plan(crew, inputs, report={"word": s["word"]})
