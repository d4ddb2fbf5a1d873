"""Per-user settings: effective values and validation against the plugin's schema.

Effective settings are, from lowest to highest precedence: the schema's
top-level ``default`` values, the plugin's ``default_config``, the user's
values. Validation runs on the effective settings, so ``required`` keys that a
default supplies are satisfied and ``additionalProperties: false`` still
rejects a user's unknown key.

Validation works from a :class:`SettingsSpec`: a loaded plugin has one, and so
does a ``plugins`` row (:func:`spec_from_row`), so light processes validate
against the schema stored in the database without reading plugin folders.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator

from app.errors import SettingsIssue, SettingsValidationError

if TYPE_CHECKING:
    from app.db.models import PluginRow
    from app.plugins.registry import Plugin


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


def compile_validator(schema: dict[str, Any]) -> Draft202012Validator:
    """A Draft 2020-12 validator for ``schema`` with format checking on."""
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@lru_cache(maxsize=256)
def _cached_validator(canonical_schema: str) -> Draft202012Validator:
    return compile_validator(json.loads(canonical_schema))


def spec_from_row(row: PluginRow) -> SettingsSpec:
    """The settings spec stored in a ``plugins`` row (validators are cached per schema)."""
    canonical = json.dumps(row.settings_schema, sort_keys=True)
    return SettingsSpec(row.name, row.settings_schema, dict(row.default_config), _cached_validator(canonical))


def _spec(target: Plugin | SettingsSpec) -> SettingsSpec:
    return target if isinstance(target, SettingsSpec) else target.spec


def _pointer(parts: Any) -> str:
    # RFC 6901: "~" and "/" inside a key are escaped.
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def effective_settings(target: Plugin | SettingsSpec, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Merge schema defaults, the plugin's default_config and ``settings`` (not validated)."""
    spec = _spec(target)
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


def validation_issues(target: Plugin | SettingsSpec, settings: Any) -> list[SettingsIssue]:
    """Every reason ``settings`` (as given, no defaults applied) fails the schema, sorted by path."""
    errors = _spec(target).validator.iter_errors(settings)
    issues = [SettingsIssue(_pointer(e.absolute_path), e.message) for e in errors]
    return sorted(issues, key=lambda i: (i.path, i.message))


def validate_settings(target: Plugin | SettingsSpec, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Return the effective settings, guaranteed valid against the plugin's schema.

    Raises :class:`SettingsValidationError` carrying *all* errors, each with a
    JSON-pointer path. ``settings`` itself is never modified.
    """
    spec = _spec(target)
    if settings is not None and not isinstance(settings, dict):
        raise SettingsValidationError(
            spec.plugin, [SettingsIssue("", f"settings must be a JSON object, got {type(settings).__name__}")]
        )
    merged = effective_settings(spec, settings)
    issues = validation_issues(spec, merged)
    if issues:
        raise SettingsValidationError(spec.plugin, issues)
    return merged
