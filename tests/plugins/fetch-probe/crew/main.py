"""A crew that fetches ``url`` with ``ctx.fetch`` while building, and records how the fetch ended.

Records ``<run_id> fetched <status> <bytes>`` or ``<run_id> error <Type> <reason>``, so a test
can tell what the fetch did even when the framework gave up on the run.
"""

from __future__ import annotations

from typing import Any


def build_crew(ctx: Any) -> Any:
    s = ctx.settings

    def record(line: str) -> None:
        with open(s["record_path"], "a", encoding="utf-8") as f:
            f.write(f"{ctx.run_id} {line}\n")

    record("start")
    try:
        got = ctx.fetch(s["url"])
    except Exception as exc:
        record(f"error {type(exc).__name__} {getattr(exc, 'reason', exc)}")
        raise
    record(f"fetched {got.status_code} {len(got.content)}")
    return ctx.plan(ctx.crew_from_yaml(), {"word": s["word"]}, report={"bytes": len(got.content)})
