"""Sync: make the ``plugins`` table match the registry on disk.

Guarantees: idempotent (a second sync with no change on disk changes
nothing); new plugins are inserted, changed ones updated; a plugin whose folder
is gone (or no longer loads) is disabled with the reason, never deleted, so its
runs keep their history. A plugin that comes back is enabled again. Configs
saved under an older settings schema are revalidated, migrated or disabled
(:mod:`app.plugins.evolution`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import PluginRow
from app.plugins.evolution import EvolutionReport, reconcile_configs
from app.plugins.registry import Plugin, Registry

GONE_REASON = "plugin folder missing or invalid at last sync"


@dataclass
class SyncReport:
    """What one sync changed, by plugin name."""

    inserted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    configs: EvolutionReport = field(default_factory=EvolutionReport)

    @property
    def changed(self) -> bool:
        """True if the sync wrote anything."""
        c = self.configs
        return bool(
            self.inserted
            or self.updated
            or self.enabled
            or self.disabled
            or c.migrated
            or c.disabled
            or c.revalidated
        )

    def lines(self) -> list[str]:
        """One human-readable line per change."""
        out: list[str] = []
        for label, names in (
            ("inserted", self.inserted),
            ("updated", self.updated),
            ("re-enabled", self.enabled),
            ("disabled", self.disabled),
            ("config revalidated", self.configs.revalidated),
            ("config migrated", self.configs.migrated),
            ("config disabled", self.configs.disabled),
        ):
            out.extend(f"{label}: {name}" for name in names)
        return out or ["no changes"]


def _row_values(plugin: Plugin) -> dict[str, Any]:
    m = plugin.manifest
    return {
        "description": m.description,
        "owner": m.owner,
        "version": m.version,
        "schema_version": m.schema_version,
        "capabilities": list(m.capabilities),
        "default_config": dict(m.default_config),
        "settings_schema": plugin.settings_schema,
        "schema_fingerprint": plugin.schema_fingerprint,
        "timeout_seconds": m.timeout_seconds,
        "max_concurrency": m.max_concurrency,
        "queue": m.queue,
    }


def sync_plugins(session: Session, registry: Registry) -> SyncReport:
    """Upsert ``registry`` into the ``plugins`` table within ``session`` (caller commits)."""
    report = SyncReport()
    rows = {row.name: row for row in session.scalars(select(PluginRow))}
    for name, plugin in sorted(registry.plugins.items()):
        values = _row_values(plugin)
        row = rows.get(name)
        if row is None:
            session.add(PluginRow(name=name, enabled=True, **values))
            report.inserted.append(name)
            continue
        changed = {k: v for k, v in values.items() if getattr(row, k) != v}
        for key, value in changed.items():
            setattr(row, key, value)
        if not row.enabled and row.disabled_reason == GONE_REASON:
            # Only re-enable what sync itself disabled; an operator's disable stands.
            row.enabled, row.disabled_reason = True, None
            report.enabled.append(name)
        elif changed:
            report.updated.append(name)
        else:
            report.unchanged.append(name)
        reconcile_configs(session, row, plugin, report.configs)
    for name, row in sorted(rows.items()):
        if name not in registry.plugins and row.enabled:
            row.enabled, row.disabled_reason = False, GONE_REASON
            report.disabled.append(name)
    session.flush()
    return report
