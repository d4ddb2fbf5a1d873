"""Settings schema evolution: configs saved under an older schema, checked at sync time.

Guarantees: after :func:`reconcile_configs`, every *enabled* config of the
plugin validates against its current schema (its ``schema_fingerprint`` is the
plugin's). A config that no longer validates is upgraded by the plugin's
optional ``settings_migrator`` (``migrate_settings(settings, from_version)``)
if that yields valid settings, and otherwise disabled with the reason
recorded. Settings are never silently rewritten to something invalid, and a
config's previous settings are kept when it is disabled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import PluginRow, User, UserPluginConfig, utcnow
from app.errors import PluginError
from app.plugins.loader import load_callable
from app.plugins.registry import Plugin
from app.plugins.settings import effective_settings, validation_issues
from app.scheduling import ScheduleError, next_run_at

log = logging.getLogger(__name__)


@dataclass
class EvolutionReport:
    """Configs touched by a schema change, as ``plugin:user_id`` labels."""

    revalidated: list[str] = field(default_factory=list)
    migrated: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


def _migrate(
    plugin: Plugin, settings: dict[str, Any], from_version: str
) -> tuple[dict[str, Any] | None, str]:
    ref = plugin.manifest.settings_migrator
    if ref is None:
        return None, "no settings_migrator"
    try:
        migrated = load_callable(plugin.folder, ref)(dict(settings), from_version)
    except PluginError as exc:
        return None, f"settings_migrator could not be loaded: {exc}"
    except Exception as exc:  # plugin code: any failure disables the config, never the sync
        return None, f"settings_migrator raised {type(exc).__name__}: {exc}"
    if not isinstance(migrated, dict):
        return None, f"settings_migrator returned {type(migrated).__name__}, not an object"
    issues = validation_issues(plugin.spec, effective_settings(plugin.spec, migrated))
    if issues:
        return None, "migrated settings still invalid: " + "; ".join(str(i) for i in issues[:5])
    return migrated, ""


def reconcile_configs(session: Session, row: PluginRow, plugin: Plugin, report: EvolutionReport) -> None:
    """Bring every enabled config of ``plugin`` in line with its current schema (see module doc)."""
    configs = session.execute(
        select(UserPluginConfig, User.timezone)
        .join(User, User.id == UserPluginConfig.user_id)
        .where(
            UserPluginConfig.plugin_id == row.id,
            UserPluginConfig.enabled,
            UserPluginConfig.schema_fingerprint != plugin.schema_fingerprint,
        )
    )
    now = utcnow()
    for config, timezone in configs:
        label = f"{plugin.name}:{config.user_id}"
        issues = validation_issues(plugin.spec, effective_settings(plugin.spec, config.settings))
        if not issues:
            report.revalidated.append(label)
        else:
            migrated, reason = _migrate(plugin, config.settings, config.plugin_version)
            if migrated is None:
                problems = "; ".join(str(i) for i in issues[:5])
                config.enabled, config.next_run_at = False, None
                config.disabled_reason = (
                    f"settings invalid for {plugin.name} {plugin.manifest.version} ({problems}); {reason}"
                )
                report.disabled.append(label)
                log.warning(
                    "config disabled at sync",
                    extra={"config_id": config.id, "reason": config.disabled_reason},
                )
                continue
            config.settings = migrated
            report.migrated.append(label)
        config.plugin_version = plugin.manifest.version
        config.schema_fingerprint = plugin.schema_fingerprint
        if plugin.manifest.is_scheduled:
            try:
                config.next_run_at = next_run_at(
                    effective_settings(plugin.spec, config.settings), timezone, after=now
                )
            except ScheduleError:
                config.next_run_at = None
