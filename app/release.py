"""The release step a deploy runs before starting processes: migrate, check crews, sync plugins.

Guarantees: :func:`release` brings the database to the newest migration,
builds every plugin's crew in a subprocess (:mod:`app.plugins.buildcheck`: a
plugin that would fail every run is rejected with the reason), then makes the
``plugins`` table match the plugins on disk (one transaction). Broken plugins
are skipped and reported in :attr:`ReleaseReport.problems`; they never
stop the others from syncing. Any other failure (database unreachable, a
migration error) raises, so the deploy stops. It prints nothing: the CLI
(``first-sip release``) and the demo decide what to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.errors import FirstSipError, Problem
from app.plugins.sync import SyncReport


class ReleaseError(FirstSipError):
    """The release cannot proceed (e.g. the plugins folder is missing); the deploy must stop."""


@dataclass(frozen=True)
class ReleaseReport:
    """What a release did: the sync's changes, the plugins it had to skip, notes from the build check."""

    sync: SyncReport
    problems: list[Problem]
    notes: list[str]


def release(*, plugins_dir: Path | str | None = None, build_check: bool = True) -> ReleaseReport:
    """Migrate, check crews (unless ``build_check`` is off), sync ``plugins_dir`` (default: settings)."""
    from app.config import get_settings
    from app.db import migrate
    from app.db.engine import session_scope
    from app.plugins.buildcheck import check_registry
    from app.plugins.registry import discover, missing_roots
    from app.plugins.sync import sync_plugins

    settings = get_settings()
    folder = plugins_dir or settings.plugins_dir
    missing = missing_roots(folder)
    if missing:
        # Read as "no plugins", a missing folder would disable every plugin.
        raise ReleaseError(f"release failed: plugins folder not found: {', '.join(missing)}")
    migrate.upgrade()
    registry = discover(folder)
    notes = check_registry(registry, timeout=settings.plugin_check_timeout_seconds) if build_check else []
    with session_scope() as session:
        report = sync_plugins(session, registry)
    return ReleaseReport(report, list(registry.problems), notes)
