"""Checks around a crew: requirements, import errors, the run folder, traces, the offline model's answers."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import select

from app.db.engine import session_scope
from app.db.models import PluginRow
from app.errors import PermanentError, PluginError
from app.execution import extractive, structured, trace, workdir
from app.execution.crew_loader import find_plugin, load_entry_point
from app.plugins.registry import discover, load_plugin
from app.plugins.requirements import check_file
from app.plugins.sync import REJECTED_PREFIX, sync_plugins

# ---- requirements.txt -----------------------------------------------------------------------------


def test_requirements_are_checked_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text(
        "# comment\n"
        "pyyaml>=5  # installed\n"
        "definitely-not-installed-pkg>=1\n"
        "jsonschema<1\n"
        "not a requirement!!\n"
        "-r other.txt\n"
        'old-only; python_version < "3.0"\n'
        "crewai[tools]\n"
    )
    problems = {p.line: p for p in check_file(path, label="p/crew/requirements.txt")}
    assert sorted(problems) == [3, 4, 5, 6, 8]
    assert problems[3].message == "definitely-not-installed-pkg is not installed"
    assert problems[3].key == "definitely-not-installed-pkg"
    assert "jsonschema 4." in problems[4].message and "needs <1" in problems[4].message
    assert problems[5].message.startswith("not a valid requirement")
    assert "pip options are not supported" in problems[6].message
    assert problems[8].message.startswith("crewai[tools] needs crewai-tools")
    assert str(problems[3]) == (
        "p/crew/requirements.txt:3 [definitely-not-installed-pkg]: "
        "definitely-not-installed-pkg is not installed"
    )


def test_unmet_requirement_rejects_only_that_plugin_and_sync_disables_it_with_the_reason(
    db: str, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("fine")
    needy = make_plugin("needy")
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))  # type: ignore[attr-defined]
    (needy / "crew" / "requirements.txt").write_text("feedparser>=6\nnot-installed-anywhere==1.0\n")
    registry = discover(make_plugin.root)  # type: ignore[attr-defined]
    assert sorted(registry.plugins) == ["fine"]
    assert "crew/requirements.txt:2 [not-installed-anywhere]" in registry.rejected["needy"]
    with session_scope() as session:
        report = sync_plugins(session, registry)
    assert report.disabled == ["needy"]
    with session_scope() as session:
        rows = {r.name: r for r in session.scalars(select(PluginRow))}
        assert rows["fine"].enabled
        assert not rows["needy"].enabled
        reason = rows["needy"].disabled_reason or ""
        assert reason.startswith(REJECTED_PREFIX) and "not-installed-anywhere is not installed" in reason
    with session_scope() as session:  # idempotent
        assert not sync_plugins(session, discover(make_plugin.root)).changed  # type: ignore[attr-defined]
    (needy / "crew" / "requirements.txt").write_text("feedparser>=6\n")
    with session_scope() as session:
        report = sync_plugins(session, discover(make_plugin.root))  # type: ignore[attr-defined]
    assert report.enabled == ["needy"]


def test_the_worker_names_an_unmet_requirement_instead_of_failing_on_import(
    make_plugin: Callable[..., Path],
) -> None:
    folder = make_plugin("needy", crew="import not_installed_anywhere\n")
    (folder / "crew" / "requirements.txt").write_text("not-installed-anywhere\n")
    with pytest.raises(PermanentError, match=r"requirements\.txt:1 \[not-installed-anywhere\]"):
        find_plugin("needy", make_plugin.root)  # type: ignore[attr-defined]


def test_an_import_error_names_the_module_and_where_it_was_imported(make_plugin: Callable[..., Path]) -> None:
    folder = make_plugin("deep", crew="from .helpers import NAME\n\ndef build_crew(ctx):\n    return NAME\n")
    (folder / "crew" / "helpers.py").write_text("import os\nimport feedparserx  # a typo\nNAME = 1\n")
    with pytest.raises(PermanentError) as info:
        load_entry_point(load_plugin(folder))
    assert str(info.value) == (
        "plugin deep: cannot import crew/main.py: module 'feedparserx' is not installed "
        "(at crew/helpers.py:2); list its package in requirements.txt next to the entry point"
    )
    folder = make_plugin("sibling", crew="from .nothing import NAME\n")
    with pytest.raises(PermanentError, match=r"the plugin has no module 'nothing' \(at crew/main.py:1\)"):
        load_entry_point(load_plugin(folder))


def test_requirements_outside_the_plugin_are_not_read(
    make_plugin: Callable[..., Path], tmp_path: Path
) -> None:
    folder = make_plugin("linked")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not-installed-anywhere\n")
    os.symlink(outside, folder / "requirements.txt")
    assert load_plugin(folder).name == "linked"
    with pytest.raises(PluginError):
        (folder / "crew" / "requirements.txt").write_text("not-installed-anywhere\n")
        load_plugin(folder)


# ---- the run folder -------------------------------------------------------------------------------


def test_collect_inlines_small_text_files_and_never_follows_links(tmp_path: Path) -> None:
    folder = workdir.create("abcdef12", tmp_path)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    (folder / "report.md").write_text("# Report\n")
    (folder / "data").mkdir()
    (folder / "data" / "big.txt").write_text("x" * (workdir.MAX_INLINE_BYTES + 1))
    (folder / "data" / "blob.bin").write_bytes(b"\xff\xfe\x00")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read me")
    os.symlink(secret, folder / "link.txt")
    files = workdir.collect(folder)
    assert files == [
        {"path": "data/big.txt", "bytes": workdir.MAX_INLINE_BYTES + 1},
        {"path": "data/blob.bin", "bytes": 3},
        {"path": "report.md", "bytes": 9, "text": "# Report\n"},
    ]
    workdir.remove(folder)
    assert not folder.exists() and secret.exists()


def test_inline_text_is_capped_in_total(tmp_path: Path) -> None:
    folder = workdir.create("abcdef12", tmp_path)
    size = workdir.MAX_INLINE_BYTES
    for index in range(workdir.MAX_INLINE_TOTAL // size + 2):
        (folder / f"f{index:02d}.txt").write_text("y" * size)
    inlined = [f for f in workdir.collect(folder) if "text" in f]
    assert sum(f["bytes"] for f in inlined) <= workdir.MAX_INLINE_TOTAL
    assert len(inlined) == workdir.MAX_INLINE_TOTAL // size


# ---- the offline model's answers --------------------------------------------------------------------

NESTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "$defs": {
        "Item": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["news", "note"]},
                "score": {"type": "integer", "minimum": 3, "maximum": 9},
                "when": {"type": "string", "format": "date"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            },
            "required": ["kind", "score", "when", "tags"],
            "additionalProperties": False,
        }
    },
    "properties": {
        "title": {"type": "string", "maxLength": 20},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 1},
        "summary": {"anyOf": [{"type": "null"}, {"type": "string", "minLength": 5}]},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    },
    "required": ["title", "items", "summary", "ratio"],
    "additionalProperties": False,
}


def test_structured_answers_validate_and_are_deterministic() -> None:
    value = structured.instance(NESTED_SCHEMA, ["A very long first sentence of the task.", "Second."])
    assert list(Draft202012Validator(NESTED_SCHEMA).iter_errors(value)) == []
    assert value == structured.instance(NESTED_SCHEMA, ["A very long first sentence of the task.", "Second."])
    assert value["title"] == "A very long first se"


def test_offline_model_answers_a_pydantic_model_with_json_that_validates() -> None:
    from pydantic import BaseModel, Field

    from app.execution.offline_llm import OfflineLLM

    class Item(BaseModel):
        name: str
        amount: int = Field(ge=2)

    class Basket(BaseModel):
        items: list[Item] = Field(min_length=1)
        note: str | None = None

    llm = OfflineLLM(model="offline/extractive")
    text = llm.call([{"role": "user", "content": "Current Task: Fill the basket."}], response_model=Basket)
    answer = text.split("Final Answer: ", 1)[1]
    Basket.model_validate_json(answer)


def test_classic_prompts_are_answered_from_the_task_not_as_a_digest() -> None:
    research = (
        "Current Task: Conduct a thorough research about AI LLMs. Find what is new in 2026.\n"
        "This is the expected criteria for your final answer: A list with 10 bullet points about AI LLMs\n"
        "you MUST return the actual complete content as the final answer, not a summary."
    )
    bullets = extractive.answer(research)
    assert bullets == "- Conduct a thorough research about AI LLMs.\n- Find what is new in 2026."
    report = (
        "Current Task: Expand each topic into a full section for a report.\n"
        "This is the expected criteria for your final answer: A fully fledged report. Formatted as markdown\n"
        "you MUST return the actual complete content as the final answer, not a summary.\n"
        f"This is the context you're working with:\n{bullets}\nProvide your complete response:"
    )
    written = extractive.answer(report)
    assert written.startswith("# Expand each topic into a full section for a report\n\n## Conduct a thorough")
    assert "## Find what is new in 2026" in written and "news digest" not in written
    assert extractive.answer(
        "Current Task: Say hi.\nThis is the expected criteria for your final answer: hi"
    ) == ("Say hi.")


# ---- structured output that did not validate ------------------------------------------------------


def test_output_problems_name_the_task_and_model_and_fail_on_turns_them_into_failures() -> None:
    from crewai import Agent, Task
    from crewai.tasks.task_output import TaskOutput
    from pydantic import BaseModel

    from app.execution.llm import make_llm

    class Brief(BaseModel):
        title: str

    agent = Agent(role="R", goal="g", backstory="b", llm=make_llm())
    tasks = [
        Task(name="ok", description="d", expected_output="e", agent=agent, output_json=Brief),
        Task(name="bad", description="d", expected_output="e", agent=agent, output_json=Brief),
        Task(name="free", description="d", expected_output="e", agent=agent),
    ]
    outputs = [
        TaskOutput(description="d", agent="R", raw='{"title": "x"}', json_dict={"title": "x"}),
        TaskOutput(description="d", agent="R", raw='{"headline": "x"}'),
        TaskOutput(description="d", agent="R", raw="free text"),
    ]

    class Crew:
        pass

    crew, result = Crew(), Crew()
    crew.tasks, result.tasks_output = tasks, outputs  # type: ignore[attr-defined]
    problems = trace.output_problems(crew, result)
    assert problems == [
        {
            "task": "bad",
            "model": "Brief",
            "error": "1 validation error(s); first: title: Field required",
            "count": 1,
        }
    ]
    trace.failures([], tool_errors=[], outputs=problems)  # recorded only
    with pytest.raises(
        PermanentError, match=r"fail_on: structured output did not validate: task 'bad' \(Brief\)"
    ):
        trace.failures(["output_validation"], tool_errors=[], outputs=problems)
    errors = [{"tool": "lookup", "error": "KeyError: 'SERPER_API_KEY'", "count": 2}]
    trace.failures(["output_validation"], tool_errors=errors, outputs=[])
    with pytest.raises(PermanentError, match=r"tool errors: lookup: KeyError: 'SERPER_API_KEY' \(x2\)"):
        trace.failures(["tool_errors"], tool_errors=errors, outputs=[])


def test_tool_error_text_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdefghijkl")
    run_trace = trace.RunTrace()
    run_trace.add_attempt("search", trace._text(ValueError("bad key sk-live-abcdefghijkl")))
    run_trace.add_failure("search", "exception", "bad key sk-live-abcdefghijkl")
    assert json.dumps(run_trace.tool_errors()) == json.dumps(
        [{"tool": "search", "error": "ValueError: bad key ***", "count": 1, "attempts": 1}]
    )


def test_sweep_removes_only_stale_run_folders(tmp_path: Path) -> None:
    stale = workdir.create("stale001", tmp_path)
    fresh = workdir.create("fresh001", tmp_path)
    other = tmp_path / "not-a-run"
    other.mkdir()
    (stale / "report.md").write_text("left by a killed worker")
    os.utime(stale, (0, 0))
    os.utime(other, (0, 0))
    assert workdir.sweep(tmp_path, older_than=3600) == 1
    assert not stale.exists() and fresh.exists() and other.exists()


# ---- one source for facts several modules use -----------------------------------------------------


def test_model_fields_are_crewais_and_one_list_serves_injection_validation_and_yaml() -> None:
    from crewai import Agent, Crew

    from app.execution import crew_yaml, dryrun, llm_injection
    from app.plugins import buildcheck

    assert set(llm_injection.AGENT_LLM_FIELDS) == {n for n in Agent.model_fields if n.endswith("llm")}
    assert set(llm_injection.CREW_LLM_FIELDS) == {n for n in Crew.model_fields if n.endswith("llm")}
    assert set(llm_injection.MODEL_FIELDS) <= set(crew_yaml.REFUSED)  # chat_llm was missing
    assert dryrun.RESULT_PREFIX is buildcheck.RESULT_PREFIX
    assert dryrun.MEMORY_LIMIT_MB is buildcheck.MEMORY_LIMIT_MB
