"""Per-user settings: effective values and validation against the plugin's schema.

Effective settings are, from lowest to highest precedence: the schema's
top-level ``default`` values, the plugin's ``default_config``, the user's
values. Validation runs on the effective settings, so ``required`` keys that a
default supplies are satisfied and ``additionalProperties: false`` still
rejects a user's unknown key.

Validation works from a :class:`SettingsSpec`: a loaded plugin has one
(``Plugin.spec``, built once), and so does a ``plugins`` row
(:func:`spec_from_row`), so light processes validate against the schema stored
in the database without reading plugin folders.

Validation agrees with storage: a value PostgreSQL could not store (NUL or a
lone surrogate in a string or key, NaN or Infinity, nesting deeper than 64
levels, a control character in a key) or that is larger than
:data:`MAX_SETTINGS_BYTES` is refused with its path before the schema is even
consulted. The schema is applied with the rules a plugin author expects from
JSON Schema, not Python's: ``pattern`` follows ECMA-262, where ``$`` matches
only at the very end (Python's ``$`` also matches before a trailing newline, so
``"07:30\n"`` would pass ``^..:..$``) and ``\\d`` is ASCII only; every declared
``format`` is checked (unknown formats are refused when the plugin loads); and
a ``$ref`` is only ever resolved inside the schema: nothing is downloaded.
Error messages never quote more than a short, printable prefix of a value.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import referencing.exceptions
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema_specifications import REGISTRY as SPECIFICATIONS  # type: ignore[import-untyped]
from referencing import Registry, Resource

from app.errors import PluginError, Problem, SettingsIssue, SettingsValidationError
from app.plugins.jsonsafe import clip, pointer, storage_problems

if TYPE_CHECKING:
    from app.db.models import PluginRow


@dataclass(frozen=True)
class SettingsSpec:
    """What validation needs: the plugin name, its schema, defaults and compiled validator."""

    plugin: str
    schema: dict[str, Any]
    default_config: dict[str, Any]
    validator: Draft202012Validator = field(repr=False, compare=False)


def fingerprint(schema: dict[str, Any]) -> str:
    """A short stable hash of a settings schema: changes when the schema changes."""
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


#: Largest settings object accepted, as compact JSON (a run copies its settings into its row).
MAX_SETTINGS_BYTES = 256 * 1024
_KEY_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refuse_retrieval(uri: str) -> Resource[Any]:
    # A remote $ref is never fetched: a configure or a sync must not depend on (or call) the network.
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


#: The JSON Schema metaschemas, and nothing that would have to be downloaded.
LOCAL_REGISTRY: Registry[Any] = Registry(retrieve=_refuse_retrieval).combine(SPECIFICATIONS)  # type: ignore[call-arg]


def ecma_pattern(pattern: str) -> str:
    """``pattern`` rewritten so Python's ``re`` applies ECMA-262 semantics to ``$`` and ``\\d``.

    Outside character classes an unescaped ``$`` becomes ``\\Z`` (end of string
    only) and ``\\d``/``\\D`` become ``[0-9]``/``[^0-9]``; inside a class
    ``\\d`` becomes ``0-9``. Everything else is kept as written.
    """
    out: list[str] = []
    i, in_class, n = 0, False, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "d":
                out.append("0-9" if in_class else "[0-9]")
            elif nxt == "D" and not in_class:
                out.append("[^0-9]")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            out.append(char)
            i += 1
            # A "]" right after "[" or "[^" is a literal, not the end of the class.
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("]")
                i += 1
            continue
        elif char == "$":
            out.append(r"\Z")
            i += 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(ecma_pattern(pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{clip(repr(instance), 80)} does not match {clip(repr(pattern), 120)}")


def _pattern_properties(
    validator: Any, properties: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in properties.items():
        for key, value in instance.items():
            if _compiled(pattern).search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


#: Draft 2020-12 with ECMA-262 ``pattern``/``patternProperties`` (see the module docstring).
SettingsValidator = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _pattern, "patternProperties": _pattern_properties}
)


def compile_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A Draft 2020-12 validator for ``schema``: formats checked, ECMA patterns, no remote ``$ref``."""
    validator: Draft202012Validator = SettingsValidator(
        schema, format_checker=Draft202012Validator.FORMAT_CHECKER, registry=LOCAL_REGISTRY
    )
    return validator


@lru_cache(maxsize=256)
def _cached_validator(canonical_schema: str) -> Draft202012Validator:
    return compile_validator(json.loads(canonical_schema))


def spec_from_row(row: PluginRow) -> SettingsSpec:
    """The settings spec stored in a ``plugins`` row (validators are cached per schema)."""
    canonical = json.dumps(row.settings_schema, sort_keys=True)
    return SettingsSpec(row.name, row.settings_schema, dict(row.default_config), _cached_validator(canonical))


def effective_settings(spec: SettingsSpec, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Merge schema defaults, the plugin's default_config and ``settings`` (not validated)."""
    merged: dict[str, Any] = {}
    for key, prop in (spec.schema.get("properties") or {}).items():
        if isinstance(prop, dict) and "default" in prop:
            merged[key] = _copy(prop["default"])
    merged.update({k: _copy(v) for k, v in spec.default_config.items()})
    merged.update({k: _copy(v) for k, v in (settings or {}).items()})
    return merged


def _copy(value: Any) -> Any:
    # Only containers can be shared by mistake; scalars are immutable (this is on the scheduler's hot path).
    return copy.deepcopy(value) if isinstance(value, (dict, list)) else value


def storage_issues(settings: Any) -> list[SettingsIssue]:
    """Every reason ``settings`` could not be stored, whatever the schema says (see the module doc)."""
    issues = [SettingsIssue(path, message) for path, message in storage_problems(settings)]
    if issues:
        return issues
    stack: list[tuple[Any, tuple[Any, ...]]] = [(settings, ())]
    while stack:  # keys with control characters: invisible, and never what a user meant
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if _KEY_CONTROL.search(key):
                    issues.append(SettingsIssue(pointer((*path, key)), "key contains a control character"))
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
    size = len(json.dumps(settings, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_SETTINGS_BYTES:
        issues.append(SettingsIssue("", f"settings are {size} bytes as JSON; at most {MAX_SETTINGS_BYTES}"))
    return sorted(issues, key=lambda i: (i.path, i.message))


def validation_issues(spec: SettingsSpec, settings: Any) -> list[SettingsIssue]:
    """Every reason ``settings`` (as given, no defaults applied) fails, sorted by path.

    Values that could not be stored are reported instead of schema errors (the
    schema is not applied to them). A schema whose ``$ref`` cannot be resolved
    locally raises :class:`PluginError` naming the reference.
    """
    return storage_issues(settings) or _schema_issues(spec, settings)


def _schema_issues(spec: SettingsSpec, settings: Any) -> list[SettingsIssue]:
    try:
        errors = list(spec.validator.iter_errors(settings))
    except referencing.exceptions.Unresolvable as exc:
        ref = getattr(exc, "ref", str(exc))
        raise PluginError(
            [Problem(f"settings schema of {spec.plugin}", "$ref", f"cannot resolve {clip(repr(ref), 200)}")]
        ) from exc
    issues = [SettingsIssue(pointer(e.absolute_path), clip(e.message)) for e in errors]
    return sorted(issues, key=lambda i: (i.path, i.message))


def validate_settings(spec: SettingsSpec, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Return the effective settings, guaranteed valid against the plugin's schema.

    Raises :class:`SettingsValidationError` carrying *all* errors, each with a
    JSON-pointer path. ``settings`` itself is never modified.
    """
    if settings is not None and not isinstance(settings, dict):
        raise SettingsValidationError(
            spec.plugin, [SettingsIssue("", f"settings must be a JSON object, got {type(settings).__name__}")]
        )
    stored = storage_issues(settings)
    if stored:  # report the user's own paths before defaults are merged in
        raise SettingsValidationError(spec.plugin, stored)
    merged = effective_settings(spec, settings)
    # Defaults come from the plugin, checked when it loaded: only the schema is left to apply.
    issues = _schema_issues(spec, merged)
    if issues:
        raise SettingsValidationError(spec.plugin, issues)
    return merged
