"""Sync: make the ``plugins`` table match the registry on disk.

Guarantees: idempotent (a second sync with no change on disk changes
nothing); new plugins are inserted, changed ones updated; a plugin whose folder
is gone is disabled with :data:`GONE_REASON`, and one that is on disk but
cannot run (an invalid manifest or schema, an unmet requirement, a crew that
does not build: ``Registry.rejected``) is disabled with its own reason, never
deleted, so its runs keep their history (its stored manifest is left as it
was). A plugin that comes back is enabled again; a plugin an operator
disabled stays disabled. A plugin disabled because its crew did not build
(:data:`BUILD_REJECTED_PREFIX`, set when the registry went through the build
check, as ``release`` and ``plugins sync --build`` do) is enabled again only by a sync
whose build check passed it: a sync without the check keeps it disabled, so
sync and release always agree on who is disabled and why. Configs saved under an older settings schema are
revalidated, migrated or disabled (:mod:`app.plugins.evolution`).

One plugin never breaks the others: each plugin is written inside its own
savepoint, and a plugin whose row cannot be written is rolled back alone and
reported in :attr:`SyncReport.failed` (with the reason, never the statement),
while every other plugin syncs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.db.models import PluginRow
from app.plugins.evolution import EvolutionReport, reconcile_configs
from app.plugins.jsonsafe import clip
from app.plugins.registry import Plugin, Registry
from app.streams.errors import DB_ERRORS

log = logging.getLogger(__name__)

GONE_REASON = "plugin folder missing or invalid at last sync"
#: Start of the reason of a plugin sync disabled because it cannot run (the problems follow).
REJECTED_PREFIX = "rejected at last sync: "
#: Start of the reason of a plugin disabled because its crew did not build (the problems follow).
BUILD_REJECTED_PREFIX = REJECTED_PREFIX + "its crew does not build: "


def _disabled_by_sync(row: PluginRow) -> bool:
    reason = row.disabled_reason or ""
    return not row.enabled and (reason == GONE_REASON or reason.startswith(REJECTED_PREFIX))


def _build_rejected(row: PluginRow) -> bool:
    return not row.enabled and (row.disabled_reason or "").startswith(BUILD_REJECTED_PREFIX)


@dataclass
class SyncReport:
    """What one sync changed, by plugin name."""

    inserted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: Plugins left disabled because their crew did not build at the last check (none ran now).
    kept_disabled: list[str] = field(default_factory=list)
    #: ``name: reason`` for each plugin that could not be written (the others were).
    failed: list[str] = field(default_factory=list)
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
            ("kept disabled (its crew did not build at the last check)", self.kept_disabled),
            ("config revalidated", self.configs.revalidated),
            ("config migrated", self.configs.migrated),
            ("config disabled", self.configs.disabled),
            ("failed", self.failed),
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
        try:
            with session.begin_nested():
                _sync_one(session, plugin, rows.get(name), report, build_checked=registry.build_checked)
        except DB_ERRORS:
            raise  # the database is gone: nothing else can sync either
        except (SQLAlchemyError, ValueError, TypeError, RecursionError) as exc:
            # The savepoint rolled back this plugin alone; its row (if any) keeps its old values.
            log.warning("plugin %s not synced: %s", name, type(exc).__name__, exc_info=True)
            reason = getattr(exc, "orig", None) or exc
            report.failed.append(
                f"{name} ({plugin.folder}): {type(reason).__name__}: {clip(str(reason), 200)}"
            )
            rows.pop(name, None)
    for name, row in sorted(rows.items()):
        if name in registry.plugins or not (row.enabled or _disabled_by_sync(row)):
            continue
        reason = GONE_REASON
        if name in registry.rejected:
            prefix = BUILD_REJECTED_PREFIX if name in registry.build_rejected else REJECTED_PREFIX
            reason = (prefix + registry.rejected[name])[:2000]
        if row.enabled or row.disabled_reason != reason:
            row.enabled, row.disabled_reason = False, reason
            report.disabled.append(name)
    session.flush()
    return report


def _sync_one(
    session: Session, plugin: Plugin, row: PluginRow | None, report: SyncReport, *, build_checked: bool
) -> None:
    name, values = plugin.name, _row_values(plugin)
    if row is None:
        session.add(PluginRow(name=name, enabled=True, **values))
        session.flush()
        report.inserted.append(name)
        return
    changed = {k: v for k, v in values.items() if getattr(row, k) != v}
    for key, value in changed.items():
        setattr(row, key, value)
    if _build_rejected(row) and not build_checked:
        # Its crew did not build at the last check and nobody has built it since: it stays
        # disabled with that reason (a sync without the build check cannot know better).
        report.kept_disabled.append(name)
    elif _disabled_by_sync(row):
        # Only re-enable what sync itself disabled; an operator's disable stands.
        row.enabled, row.disabled_reason = True, None
        report.enabled.append(name)
    elif changed:
        report.updated.append(name)
    else:
        report.unchanged.append(name)
    reconcile_configs(session, row, plugin, report.configs)
    session.flush()
