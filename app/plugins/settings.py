"""Per-user settings: effective values and validation against the plugin's schema.

Effective settings are, from lowest to highest precedence: the schema's
top-level ``default`` values, the plugin's ``default_config``, the user's
values. Validation runs on the effective settings, so ``required`` keys that a
default supplies are satisfied and ``additionalProperties: false`` still
rejects a user's unknown key.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from app.errors import SettingsIssue, SettingsValidationError

if TYPE_CHECKING:
    from app.plugins.registry import Plugin


def _pointer(parts: Any) -> str:
    # RFC 6901: "~" and "/" inside a key are escaped.
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def effective_settings(plugin: Plugin, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Merge schema defaults, the plugin's default_config and ``settings`` (not validated)."""
    merged: dict[str, Any] = {}
    for key, prop in (plugin.settings_schema.get("properties") or {}).items():
        if isinstance(prop, dict) and "default" in prop:
            merged[key] = copy.deepcopy(prop["default"])
    merged.update(copy.deepcopy(dict(plugin.manifest.default_config)))
    merged.update(copy.deepcopy(settings or {}))
    return merged


def validation_issues(plugin: Plugin, settings: Any) -> list[SettingsIssue]:
    """Every reason ``settings`` (as given, no defaults applied) fails the schema, sorted by path."""
    errors = plugin.validator.iter_errors(settings)
    issues = [SettingsIssue(_pointer(e.absolute_path), e.message) for e in errors]
    return sorted(issues, key=lambda i: (i.path, i.message))


def validate_settings(plugin: Plugin, settings: dict[str, Any] | None) -> dict[str, Any]:
    """Return the effective settings for ``plugin``, guaranteed valid against its schema.

    Raises :class:`SettingsValidationError` carrying *all* errors, each with a
    JSON-pointer path. ``settings`` itself is never modified.
    """
    if settings is not None and not isinstance(settings, dict):
        raise SettingsValidationError(
            plugin.name, [SettingsIssue("", f"settings must be a JSON object, got {type(settings).__name__}")]
        )
    merged = effective_settings(plugin, settings)
    issues = validation_issues(plugin, merged)
    if issues:
        raise SettingsValidationError(plugin.name, issues)
    return merged
