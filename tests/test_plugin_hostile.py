"""One bad plugin never breaks the others: each broken plugin is named (file and key) by validate,
and sync and release still sync every good plugin.

The cases are the ones that used to pass validate or crash it and stop
sync/release for every plugin, plus the YAML 1.1 surprises a strict manifest
refuses or reads as strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli import cli
from app.db.engine import session_scope
from app.db.models import PluginRow
from app.errors import PluginError
from app.plugins.manifest import PluginManifest, parse_manifest
from app.plugins.registry import Registry, discover, load_plugin
from app.plugins.sync import sync_plugins
from tests.conftest import VALID_SCHEMA, manifest_text

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``release`` configures logging in-process; undo it so no handler outlives CliRunner's streams."""
    import logging

    from app import logs

    root = logging.getLogger()
    handlers, level, configured = list(root.handlers), root.level, logs._configured
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logs._configured = configured


# A 1 KB "billion laughs": nine levels of nine aliases (about 4 GB once expanded).
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
    for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def _deep_schema(levels: int) -> str:
    return '{"type": "object", "properties": {"a": ' + '{"items": ' * levels + "{}" + "}" * levels + "}}"


def _manifest(name: str, extra: str) -> str:
    return manifest_text(name) + extra


# name -> (manifest text or None, schema text or None, file suffix, key, words in the message)
CASES: dict[str, tuple[str | None, str | None, str, str, str]] = {
    "schema-not-string": (
        None,
        json.dumps({**VALID_SCHEMA, "$schema": 7}),
        "settings.schema.json",
        "$schema",
        "string",
    ),
    "schema-deep": (None, _deep_schema(5000), "settings.schema.json", "", "nested"),
    "schema-nan": (
        None,
        '{"type": "object", "properties": {"a": {"type": "number", "default": NaN}}}',
        "settings.schema.json",
        "",
        "NaN",
    ),
    "schema-nul": (
        None,
        json.dumps({**VALID_SCHEMA, "description": "a\u0000b"}),
        "settings.schema.json",
        "/description",
        "NUL",
    ),
    "schema-remote-ref": (
        None,
        json.dumps({**VALID_SCHEMA, "properties": {"x": {"$ref": "https://example.invalid/s.json"}}}),
        "settings.schema.json",
        "/properties/x/$ref",
        "https://example.invalid/s.json",
    ),
    "binary-default": (
        "name: binary-default\ndescription: d\nowner: o\nversion: 1.0.0\n"
        "entry_point: crew/main.py:build_crew\ndefault_config:\n  topics: !!binary aGVsbG8=\n",
        None,
        "plugin.yaml",
        "",
        "binary",
    ),
    "timestamp-default": (
        "name: timestamp-default\ndescription: d\nowner: o\nversion: 1.0.0\n"
        "entry_point: crew/main.py:build_crew\ndefault_config:\n  topics: !!timestamp 2024-01-01\n",
        None,
        "plugin.yaml",
        "",
        "timestamp",
    ),
    "alias-bomb": (
        "name: alias-bomb\ndescription: d\nowner: o\nversion: 1.0.0\nentry_point: crew/main.py:build_crew\n"
        "default_config:\n" + "".join("  " + line + "\n" for line in ALIAS_BOMB.splitlines()),
        None,
        "plugin.yaml",
        "",
        "aliases",
    ),
    "duplicate-key": (
        "name: duplicate-key\ndescription: d\nowner: o\nversion: 1.0.0\n"
        "entry_point: crew/main.py:build_crew\ntimeout_seconds: 60\ntimeout_seconds: 600\n",
        None,
        "plugin.yaml",
        "timeout_seconds",
        "duplicate key",
    ),
    "sexagesimal": (
        None,
        None,
        "plugin.yaml",
        "timeout_seconds",
        "integer",
    ),
    "octal": (None, None, "plugin.yaml", "timeout_seconds", "integer"),
    "long-owner": (None, None, "plugin.yaml", "owner", "200"),
    # Escapes YAML allows in double-quoted strings, values PostgreSQL cannot store.
    "nul-description": (None, None, "plugin.yaml", "description", "NUL"),
    "surrogate-owner": (None, None, "plugin.yaml", "owner", "surrogate"),
    "nul-entry-point": (None, None, "plugin.yaml", "entry_point", "NUL"),
    "surrogate-config-key": (None, None, "plugin.yaml", "default_config.a\\udc80b", "surrogate"),
}
ESCAPED = {
    "nul-description": ("description", '"a\\0b"'),
    "surrogate-owner": ("owner", '"o\\ud800"'),
    "nul-entry-point": ("entry_point", '"crew/main.py:build_crew\\0"'),
    "surrogate-config-key": ("default_config", '{"a\\udc80b": 1}'),
}
OVERRIDES = {"sexagesimal": "timeout_seconds: 1:00\n", "octal": "timeout_seconds: 0777\n"}


def _write_case(make_plugin: Any, name: str) -> None:
    manifest, schema, *_ = CASES[name]
    if name in OVERRIDES:
        manifest = manifest_text(name) + OVERRIDES[name]
    if name == "long-owner":
        manifest = manifest_text(name, owner="o" * 201)
    if name in ESCAPED:
        key, value = ESCAPED[name]
        manifest = manifest_text(name, **{key: None}) + f"{key}: {value}\n"
    path = make_plugin(name, manifest=manifest, schema=schema if schema is not None else VALID_SCHEMA)
    if schema is not None:
        (path / "settings.schema.json").write_text(schema)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_broken_plugin_is_named_with_file_and_key(make_plugin, name: str) -> None:  # type: ignore[no-untyped-def]
    _write_case(make_plugin, name)
    _, _, suffix, key, words = CASES[name]
    with pytest.raises(PluginError) as caught:
        load_plugin(make_plugin.root / name)
    problems = caught.value.problems
    assert any(
        p.file.endswith(f"{name}/{suffix}") and p.key == key and words.lower() in p.message.lower()
        for p in problems
    ), problems


def test_yaml_11_words_are_strings() -> None:
    text = manifest_text("words", description="x").replace("description: x", "description: yes")
    text = text.replace("owner: tests", "owner: off")
    manifest = parse_manifest(text, file="words/plugin.yaml")
    assert isinstance(manifest, PluginManifest)
    assert manifest.description == "yes" and manifest.owner == "off"


GOOD_CREW = """
from crewai import Agent, Crew, Task


def build_crew(ctx):
    agent = Agent(role="Greeter", goal="Greet", backstory="Polite.", llm=ctx.llm)
    task = Task(description="Say hello.", expected_output="A greeting.", agent=agent)
    return ctx.plan(Crew(agents=[agent], tasks=[task]), {})
"""


def test_validate_sync_and_release_with_every_broken_plugin(db, redis_client, make_plugin, setenv) -> None:  # type: ignore[no-untyped-def]
    for name in CASES:
        _write_case(make_plugin, name)
    make_plugin("good-one", crew=GOOD_CREW)  # validate and release build it
    root = str(make_plugin.root)

    validated = runner.invoke(cli, ["plugins", "validate", "--plugins-dir", root])
    assert validated.exit_code == 1 and "Traceback" not in validated.output
    for name in CASES:
        assert f"{name}/" in validated.stdout, name
    assert "1 plugin(s) valid" in validated.stderr

    synced = runner.invoke(cli, ["plugins", "sync", "--plugins-dir", root])
    assert synced.exit_code == 0, synced.output
    assert "inserted: good-one" in synced.stdout
    with session_scope() as session:
        assert list(session.scalars(select(PluginRow.name))) == ["good-one"]

    setenv(PLUGINS_DIR=root)
    released = runner.invoke(cli, ["release"])
    assert released.exit_code == 0, released.output
    assert released.stderr.count("plugin skipped:") >= len(CASES)


def test_sync_isolates_a_plugin_the_database_refuses(db, redis_client, make_plugin) -> None:  # type: ignore[no-untyped-def]
    """Defence in depth: should validate and the database ever disagree, only that plugin fails."""
    good = load_plugin(make_plugin("good-one"))
    other = load_plugin(make_plugin("other-one"))
    # Bypass the manifest's checks to build what validation would never let through.
    bad_manifest = PluginManifest.model_construct(
        **{**other.manifest.model_dump(), "name": "bad-one", "owner": "o" * 300}
    )
    bad = type(other)(bad_manifest, other.folder, other.settings_schema, other.validator)
    with session_scope() as session:
        report = sync_plugins(session, Registry(plugins={"bad-one": bad, "good-one": good}))
    assert report.inserted == ["good-one"]
    assert len(report.failed) == 1 and report.failed[0].startswith("bad-one")
    assert "INSERT" not in report.failed[0]  # the reason, never the statement
    with session_scope() as session:
        assert list(session.scalars(select(PluginRow.name))) == ["good-one"]


def test_sync_refuses_a_missing_plugins_folder(db, redis_client, make_plugin, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_plugin("good-one")
    with session_scope() as session:
        sync_plugins(session, discover(make_plugin.root))
    result = runner.invoke(cli, ["plugins", "sync", "--plugins-dir", str(tmp_path / "typo")])
    assert result.exit_code == 1 and "plugins folder not found" in result.stderr
    with session_scope() as session:  # nothing was disabled by the typo
        assert list(session.scalars(select(PluginRow.enabled))) == [True]
