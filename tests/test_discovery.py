"""Manifest parsing and discovery: every bad input names its culprit; the others still load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from app.errors import PluginError
from app.plugins.manifest import parse_manifest
from app.plugins.registry import discover, load_plugin
from tests.conftest import ROOT, VALID_SCHEMA, manifest_text


def _problems(registry, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(p) for p in registry.problems if f"/{name}/" in p.file or p.file.endswith(f"/{name}")]


def test_reference_plugin_loads() -> None:
    registry = discover(ROOT / "plugins")
    assert registry.problems == []
    plugin = registry.plugins["daily-news-digest"]
    assert plugin.manifest.is_scheduled
    assert plugin.settings_schema["properties"]["feeds"]["default"] == ["bundled:sample-feed.xml"]


def test_valid_plugin_loads(make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("alpha")
    registry = discover(make_plugin.root)
    assert list(registry.plugins) == ["alpha"]
    assert registry.problems == []


# Each case: (folder name, writer kwargs, expected fragments of the error text).
BAD_CASES = {
    "malformed-yaml": (dict(manifest="name: x\n  bad: [unclosed\n"), ["plugin.yaml:", "malformed YAML"]),
    "unknown-key": (dict(colour="blue"), ["[colour]", "unknown key"]),
    "wrong-type": (dict(capabilities="scheduled"), ["[capabilities]", "valid list"]),
    "missing-field": (dict(owner=None), ["[owner]", "required key is missing"]),
    "bad-semver": (dict(version="1.0"), ["[version]", "'1.0' is not a semantic version"]),
    "bad-schema-version": (dict(schema_version="v9"), ["[schema_version]", "unknown schema_version 'v9'"]),
    "unknown-capability": (dict(capabilities=["teleport"]), ["[capabilities.0]", "'briefing'"]),
    "schema-escape": (dict(settings_schema_path="../outside.json"), ["[settings_schema_path]", "'..'"]),
    "schema-absolute": (dict(settings_schema_path="/etc/passwd"), ["[settings_schema_path]", "absolute"]),
    "schema-missing": (
        dict(settings_schema_path="nope.json"),
        ["[settings_schema_path]", "nope.json does not exist"],
    ),
    "schema-invalid-json": (dict(schema="{not json"), ["settings.schema.json:1", "malformed JSON"]),
    "schema-invalid": (
        dict(schema={"type": "object", "properties": {"a": {"type": "strnig"}}}),
        ["settings.schema.json", "/properties/a/type", "invalid JSON Schema"],
    ),
    "schema-not-object": (dict(schema={"type": "array"}), ["settings.schema.json", '"type": "object"']),
    "schema-other-draft": (
        dict(schema={**VALID_SCHEMA, "$schema": "http://json-schema.org/draft-07/schema#"}),
        ["[$schema]", "draft/2020-12"],
    ),
    "default-violates": (
        dict(default_config={"topics": ["cooking"]}),
        ["[default_config.topics.0]", "'cooking' is not one of"],
    ),
    "default-unknown-key": (
        dict(default_config={"colour": "red"}),
        ["[default_config]", "Additional properties are not allowed ('colour'"],
    ),
    "entry-escape": (dict(entry_point="../../evil.py:run"), ["[entry_point]", "'..'"]),
    "entry-malformed": (dict(entry_point="crew/main.py"), ["[entry_point]", "relative/path.py:build_crew"]),
    "bad-timeout": (dict(timeout_seconds=0), ["[timeout_seconds]", "greater than or equal to 1"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_plugin_is_named_and_others_still_load(make_plugin, case: str) -> None:  # type: ignore[no-untyped-def]
    kwargs, fragments = BAD_CASES[case]
    make_plugin("good-one")
    make_plugin(case, **kwargs)
    make_plugin("good-two")
    registry = discover(make_plugin.root)
    assert sorted(registry.plugins) == ["good-one", "good-two"]
    messages = _problems(registry, case)
    assert messages, registry.problems
    text = "\n".join(messages)
    assert f"{case}/" in text  # the file is named
    for fragment in fragments:
        assert fragment in text


def test_yaml_error_reports_line(make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("liney", manifest="name: liney\ndescription: d\nowner: [\n")
    (problem,) = discover(make_plugin.root).problems
    assert problem.line is not None and problem.line >= 3


def test_unknown_key_reports_its_line(make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("keyline", manifest=manifest_text("keyline") + "surprise: 1\n")
    (problem,) = discover(make_plugin.root).problems
    assert problem.key == "surprise"
    assert problem.line == len(manifest_text("keyline").splitlines()) + 1


def test_name_must_match_folder(make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("other-name", folder="folder-name")
    registry = discover(make_plugin.root)
    (problem,) = registry.problems
    assert "folder-name/plugin.yaml" in problem.file and problem.key == "name"
    assert "'other-name' must equal the folder name 'folder-name'" in problem.message


def test_unsafe_name_rejected(make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("Bad_Name")
    (problem,) = discover(make_plugin.root).problems
    assert problem.key == "name" and "lower-case" in problem.message


def test_duplicate_names_both_rejected(tmp_path: Path, make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("twin")
    make_plugin("solo")
    second_root = tmp_path / "more"
    (second_root / "twin" / "crew").mkdir(parents=True)
    (second_root / "twin" / "plugin.yaml").write_text(manifest_text("twin"))
    (second_root / "twin" / "settings.schema.json").write_text(json.dumps(VALID_SCHEMA))
    (second_root / "twin" / "crew" / "main.py").write_text("")
    registry = discover(f"{make_plugin.root}{os.pathsep}{second_root}")
    assert list(registry.plugins) == ["solo"]
    dupes = [p for p in registry.problems if "duplicate plugin name 'twin'" in p.message]
    assert len(dupes) == 2


def test_schema_symlink_escape_rejected(tmp_path: Path, make_plugin) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(VALID_SCHEMA))
    folder = make_plugin("linky", schema=None)
    (folder / "settings.schema.json").symlink_to(outside)
    (problem,) = discover(make_plugin.root).problems
    assert problem.key == "settings_schema_path" and "outside the plugin folder" in problem.message


def test_entry_point_symlink_escape_rejected(tmp_path: Path, make_plugin) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "evil.py"
    outside.write_text("")
    folder = make_plugin("linky2")
    (folder / "crew" / "main.py").unlink()
    (folder / "crew" / "main.py").symlink_to(outside)
    (problem,) = discover(make_plugin.root).problems
    assert problem.key == "entry_point" and "outside the plugin folder" in problem.message


def test_empty_plugins_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    registry = discover(tmp_path / "empty")
    assert registry.plugins == {} and registry.problems == []


def test_missing_plugins_folder(tmp_path: Path) -> None:
    registry = discover(tmp_path / "nope")
    (problem,) = registry.problems
    assert "does not exist" in problem.message and "nope" in problem.file


def test_file_where_folder_expected(tmp_path: Path, make_plugin) -> None:  # type: ignore[no-untyped-def]
    not_a_dir = tmp_path / "plugins.txt"
    not_a_dir.write_text("")
    (problem,) = discover(not_a_dir).problems
    assert "is a file" in problem.message
    # plugin.yaml that is a folder, and a schema path that is a folder
    folder = make_plugin("dir-manifest")
    (folder / "plugin.yaml").unlink()
    (folder / "plugin.yaml").mkdir()
    folder2 = make_plugin("dir-schema", schema=None)
    (folder2 / "settings.schema.json").mkdir()
    make_plugin("fine")
    registry = discover(make_plugin.root)
    assert list(registry.plugins) == ["fine"]
    text = "\n".join(str(p) for p in registry.problems)
    assert "dir-manifest/plugin.yaml: cannot read" in text
    assert "dir-schema/settings.schema.json: is not a regular file" in text


def test_stray_files_and_folders_ignored(make_plugin) -> None:  # type: ignore[no-untyped-def]
    make_plugin("real")
    (make_plugin.root / "README.md").write_text("hello")
    (make_plugin.root / "__pycache__").mkdir()
    (make_plugin.root / "no-manifest").mkdir()
    registry = discover(make_plugin.root)
    assert list(registry.plugins) == ["real"] and registry.problems == []


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("- a\n- b\n", "got list"),
        ("just a string", "got str"),
        ("1: one\n", "keys must be strings"),
    ],
)
def test_parse_manifest_non_mapping(text: str, fragment: str) -> None:
    with pytest.raises(PluginError) as exc:
        parse_manifest(text, file="x/plugin.yaml")
    assert "x/plugin.yaml" in str(exc.value) and fragment in str(exc.value)


def test_manifest_reports_all_problems_at_once(make_plugin) -> None:  # type: ignore[no-untyped-def]
    folder = make_plugin("many", version="x", owner=None, extra_key=1)
    with pytest.raises(PluginError) as exc:
        load_plugin(folder)
    keys = {p.key for p in exc.value.problems}
    assert keys == {"version", "owner", "extra_key"}
