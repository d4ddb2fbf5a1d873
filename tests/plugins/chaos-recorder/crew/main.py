"""The chaos run's crew: one short task, and a line per execution start and end.

Each line is ``<event> <run_id> <pid> <ppid> <unix time>`` appended with one
``write`` to an ``O_APPEND`` file, so lines from concurrent processes never
interleave. The chaos harness reads them to count executions per run.
"""

from __future__ import annotations

import os
import time
from typing import Any


def _record(path: str, event: str, run_id: str) -> None:
    line = f"{event} {run_id} {os.getpid()} {os.getppid()} {time.time():.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def build_crew(ctx: Any) -> Any:
    settings = ctx.settings
    crew = ctx.crew_from_yaml()

    def before(inputs: dict[str, Any]) -> dict[str, Any]:
        _record(settings["record_path"], "start", ctx.run_id)
        time.sleep(settings["sleep_seconds"])
        return inputs

    def after(output: Any) -> Any:
        _record(settings["record_path"], "done", ctx.run_id)
        return output

    crew.before_kickoff_callbacks.append(before)
    crew.after_kickoff_callbacks.append(after)
    return ctx.plan(crew, {"word": "chaos"})
