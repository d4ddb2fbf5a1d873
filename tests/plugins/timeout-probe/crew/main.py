"""A crew that sleeps ``sleep_seconds`` inside kickoff; the manifest allows it one second.

Records ``<run_id> start`` and ``<run_id> done`` like the controlled plugin, so
a test can tell whether an abandoned crew ever finished.
"""

from __future__ import annotations

import time
from typing import Any


def build_crew(ctx: Any) -> Any:
    s = ctx.settings
    crew = ctx.crew_from_yaml()

    def record(what: str) -> None:
        with open(s["record_path"], "a", encoding="utf-8") as f:
            f.write(f"{ctx.run_id} {what}\n")

    def before(inputs: dict[str, Any]) -> dict[str, Any]:
        record("start")
        time.sleep(s["sleep_seconds"])
        return inputs

    def after(output: Any) -> Any:
        record("done")
        return output

    crew.before_kickoff_callbacks.append(before)
    crew.after_kickoff_callbacks.append(after)
    return ctx.plan(crew, {"word": s["word"]})
