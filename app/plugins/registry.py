"""Discovery: plugin folders on disk become a :class:`Registry` of valid plugins.

Guarantees: a broken plugin is skipped with every reason recorded in
``Registry.problems`` (and logged, and by name in ``Registry.rejected`` when
its manifest names it); it never stops the other plugins from loading. Two
plugins with the same name are both rejected. A loaded :class:`Plugin` has a
valid manifest, a valid Draft 2020-12 settings schema, a ``default_config``
that validates against it, and every requirement in its ``requirements.txt``
installed (:mod:`app.plugins.requirements`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import referencing.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing.jsonschema import DRAFT202012

from app.errors import PluginError, Problem
from app.plugins import jsonsafe
from app.plugins.manifest import MANIFEST_FILE, PluginManifest, load_manifest
from app.plugins.paths import PathEscapeError, resolve_inside
from app.plugins.requirements import requirement_problems
from app.plugins.settings import (
    LOCAL_REGISTRY,
    SettingsSpec,
    compile_validator,
    ecma_pattern,
    effective_settings,
    fingerprint,
    validation_issues,
)

log = logging.getLogger(__name__)

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class Plugin:
    """A valid plugin: its manifest, folder and compiled settings schema."""

    manifest: PluginManifest
    folder: Path
    settings_schema: dict[str, Any]
    validator: Draft202012Validator = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        """The plugin's name (equal to its folder name)."""
        return self.manifest.name

    # Computed once per loaded plugin (a frozen dataclass still has a __dict__ for the cache):
    # the worker validates every run's settings against the spec.

    @cached_property
    def schema_fingerprint(self) -> str:
        """A short stable hash of the settings schema: changes when the schema changes."""
        return fingerprint(self.settings_schema)

    @cached_property
    def spec(self) -> SettingsSpec:
        """What settings validation needs from this plugin."""
        return SettingsSpec(
            self.name, self.settings_schema, dict(self.manifest.default_config), self.validator
        )


@dataclass
class Registry:
    """The plugins that loaded, by name, and the problems of those that did not."""

    plugins: dict[str, Plugin] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: Plugins whose manifest names them but that cannot run, with the reason (sync disables them).
    rejected: dict[str, str] = field(default_factory=dict)
    #: True once every loaded plugin's crew was built (:func:`app.plugins.buildcheck.check_registry`).
    build_checked: bool = False
    #: Plugins rejected because their crew did not build (a subset of ``rejected``).
    build_rejected: set[str] = field(default_factory=set)

    def get(self, name: str) -> Plugin | None:
        """The plugin called ``name``, or None."""
        return self.plugins.get(name)

    def reject(self, name: str, problems: list[Problem], *, build: bool = False) -> None:
        """Move ``name`` out of the loaded plugins: it may not run, for these reasons.

        ``build`` says the reason is that its crew did not build (sync keeps such a
        plugin disabled until a build check passes it).
        """
        if build:
            self.build_rejected.add(name)
        self.plugins.pop(name, None)
        self.problems.extend(problems)
        reason = "; ".join(str(p) for p in problems)
        self.rejected[name] = f"{self.rejected[name]}; {reason}" if name in self.rejected else reason


def _load_schema(folder: Path, manifest: PluginManifest, manifest_file: str) -> dict[str, Any]:
    try:
        path = resolve_inside(folder, manifest.settings_schema_path)
    except PathEscapeError as exc:
        raise PluginError([Problem(manifest_file, "settings_schema_path", str(exc))]) from exc
    schema_file = str(folder / manifest.settings_schema_path)
    if not path.exists():
        raise PluginError([Problem(manifest_file, "settings_schema_path", f"{schema_file} does not exist")])
    if not path.is_file():
        raise PluginError([Problem(schema_file, "", "is not a regular file")])
    try:
        schema = jsonsafe.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError([Problem(schema_file, "", f"cannot read: {exc}")]) from exc
    except json.JSONDecodeError as exc:
        raise PluginError([Problem(schema_file, "", f"malformed JSON: {exc.msg}", exc.lineno)]) from exc
    except ValueError as exc:  # NaN, Infinity, too deep
        raise PluginError([Problem(schema_file, "", f"malformed JSON: {exc}")]) from exc
    stored = jsonsafe.storage_problems(schema)
    if stored:
        raise PluginError([Problem(schema_file, where or "/", message) for where, message in stored])
    problems = _schema_problems(schema, schema_file)
    if problems:
        raise PluginError(problems)
    return dict(schema)


def _schema_problems(schema: Any, schema_file: str) -> list[Problem]:
    if not isinstance(schema, dict):
        return [Problem(schema_file, "", "a settings schema must be a JSON object")]
    declared = schema.get("$schema")
    if declared is not None and (not isinstance(declared, str) or declared.rstrip("#") != DRAFT_2020_12):
        got = jsonsafe.clip(repr(declared), 100)
        return [Problem(schema_file, "$schema", f"must be the string {DRAFT_2020_12}, got {got}")]
    try:
        Draft202012Validator.check_schema(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    except SchemaError as exc:
        where = jsonsafe.pointer(exc.absolute_path) or "/"
        return [Problem(schema_file, where, f"invalid JSON Schema: {jsonsafe.clip(exc.message)}")]
    except RecursionError:
        return [Problem(schema_file, "", "nested too deeply to check")]
    if schema.get("type") != "object":
        return [Problem(schema_file, "type", 'settings schema must have "type": "object"')]
    return list(_keyword_problems(schema, schema_file))


# Keywords whose values are data, not subschemas: never read as $ref/format/pattern.
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
_SCHEMA_URI = "urn:first-sip:settings-schema"


def _keyword_problems(schema: dict[str, Any], schema_file: str) -> Iterator[Problem]:
    """What the metaschema allows but this framework cannot honour: remote refs, unknown formats."""
    formats = Draft202012Validator.FORMAT_CHECKER.checkers
    root = LOCAL_REGISTRY.with_resource(_SCHEMA_URI, DRAFT202012.create_resource(schema))
    stack: list[tuple[Any, tuple[Any, ...], Any]] = [(schema, (), root.resolver(base_uri=_SCHEMA_URI))]
    while stack:
        node, path, resolver = stack.pop()
        if isinstance(node, list):
            stack.extend((child, (*path, i), resolver) for i, child in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        where = jsonsafe.pointer(path)
        if isinstance(node.get("$id"), str) and path:
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        for keyword in ("$ref", "$dynamicRef"):
            ref = node.get(keyword)
            if not isinstance(ref, str):
                continue
            try:
                resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                yield Problem(
                    schema_file,
                    f"{where}/{keyword}",
                    f"cannot resolve {jsonsafe.clip(repr(ref), 200)}: references must point inside the "
                    "schema (remote schemas are never downloaded)",
                )
        fmt = node.get("format")
        if isinstance(fmt, str) and fmt not in formats:
            yield Problem(
                schema_file,
                f"{where}/format",
                f"unknown format {jsonsafe.clip(repr(fmt), 60)}: it would not be checked "
                f"(known: {', '.join(sorted(formats))})",
            )
        patterns = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            patterns += list(node["patternProperties"])
        for pattern in patterns:
            try:
                re.compile(ecma_pattern(pattern))
            except re.error as exc:
                yield Problem(schema_file, f"{where}/pattern", f"invalid regular expression: {exc}")
        for key, child in node.items():
            if key not in _DATA_KEYWORDS:
                stack.append((child, (*path, key), resolver))


def load_plugin(folder: Path) -> Plugin:
    """Load and fully validate the plugin in ``folder``; raise :class:`PluginError` if invalid."""
    manifest = load_manifest(folder)
    manifest_file = str(folder / MANIFEST_FILE)
    schema = _load_schema(folder, manifest, manifest_file)
    targets = {}
    for key in ("entry_point", "settings_migrator"):
        ref = getattr(manifest, key)
        if ref is None:
            continue
        try:
            target = resolve_inside(folder, ref.split(":", 1)[0])
        except PathEscapeError as exc:
            raise PluginError([Problem(manifest_file, key, str(exc))]) from exc
        if not target.is_file():
            raise PluginError(
                [Problem(manifest_file, key, f"{ref.split(':', 1)[0]} is not a file in the plugin folder")]
            )
        targets[key] = target
    stored = jsonsafe.storage_problems(manifest.default_config)
    if stored:
        raise PluginError(
            [Problem(manifest_file, "default_config" + where.replace("/", "."), m) for where, m in stored]
        )
    unmet = requirement_problems(folder, targets["entry_point"])
    if unmet:
        raise PluginError(unmet)
    plugin = Plugin(
        manifest,
        folder,
        schema,
        compile_validator(schema),
    )
    # default_config is checked as it will be used: merged over the schema's defaults.
    issues = validation_issues(plugin.spec, effective_settings(plugin.spec, None))
    if issues:
        raise PluginError(
            [
                Problem(
                    manifest_file, "default_config" + (i.path.replace("/", ".") if i.path else ""), i.message
                )
                for i in issues
            ]
        )
    return plugin


def _declared_name(folder: Path) -> str | None:
    """The name a broken plugin's manifest gives itself, if it parses (for the disable reason)."""
    try:
        return load_manifest(folder).name
    except PluginError:
        return None


def _plugin_dirs(plugins_dir: Path | str) -> list[Path]:
    # PLUGINS_DIR may list several folders, like PATH; a name may appear in only one.
    return [Path(p) for p in str(plugins_dir).split(os.pathsep) if p]


def missing_roots(plugins_dir: Path | str) -> list[str]:
    """The folders of ``plugins_dir`` that are not folders: a sync must not read them as "no plugins"."""
    return [str(root) for root in _plugin_dirs(plugins_dir) if not root.is_dir()]


def discover(plugins_dir: Path | str) -> Registry:
    """Load every plugin under ``plugins_dir`` (one per subfolder holding ``plugin.yaml``).

    ``plugins_dir`` may be several folders separated by ``os.pathsep``.
    """
    registry = Registry()
    found: dict[str, list[Plugin]] = {}
    for root in _plugin_dirs(plugins_dir):
        if not root.exists():
            registry.problems.append(Problem(str(root), "", "plugins folder does not exist"))
            continue
        if not root.is_dir():
            registry.problems.append(Problem(str(root), "", "is a file; expected the plugins folder"))
            continue
        for folder in sorted(root.iterdir()):
            if folder.name.startswith((".", "_")) or not folder.is_dir():
                continue
            manifest_path = folder / MANIFEST_FILE
            if not manifest_path.exists():
                log.debug("skipping %s: no %s", folder, MANIFEST_FILE)
                continue
            try:
                plugin = load_plugin(folder)
            except PluginError as exc:
                name = _declared_name(folder)
                if name is None:
                    registry.problems.extend(exc.problems)
                else:
                    registry.reject(name, exc.problems)
                continue
            except Exception as exc:  # a plugin must never stop discovery of the others
                log.exception("unexpected error loading %s", folder)
                message = f"could not be loaded: {type(exc).__name__}: {jsonsafe.clip(str(exc), 200)}"
                registry.problems.append(Problem(str(manifest_path), "", message))
                continue
            found.setdefault(plugin.name, []).append(plugin)
    for name, candidates in found.items():
        if len(candidates) == 1 and name not in registry.rejected:
            registry.plugins[name] = candidates[0]
            continue
        where = ", ".join(str(c.folder) for c in candidates)
        registry.rejected[name] = f"duplicate plugin name {name!r} (in {where})"
        for c in candidates:
            registry.problems.append(
                Problem(
                    str(c.folder / MANIFEST_FILE),
                    "name",
                    f"duplicate plugin name {name!r} (in {where}); all copies rejected",
                )
            )
    for problem in registry.problems:
        log.warning("plugin skipped: %s", problem)
    return registry
