"""The release step a deploy runs before starting processes: migrate, then sync the plugins.

Guarantees: :func:`release` brings the database to the newest migration, then
makes the ``plugins`` table match the plugins on disk (one transaction). Broken
plugins are skipped and reported in :attr:`ReleaseReport.problems`; they never
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
    """What a release did: the sync's changes and the plugins it had to skip."""

    sync: SyncReport
    problems: list[Problem]


def release(*, plugins_dir: Path | str | None = None) -> ReleaseReport:
    """Migrate the configured database to head, then sync ``plugins_dir`` (default: settings)."""
    from app.config import get_settings
    from app.db import migrate
    from app.db.engine import session_scope
    from app.plugins.registry import discover, missing_roots
    from app.plugins.sync import sync_plugins

    folder = plugins_dir or get_settings().plugins_dir
    missing = missing_roots(folder)
    if missing:
        # Read as "no plugins", a missing folder would disable every plugin.
        raise ReleaseError(f"release failed: plugins folder not found: {', '.join(missing)}")
    migrate.upgrade()
    registry = discover(folder)
    with session_scope() as session:
        report = sync_plugins(session, registry)
    return ReleaseReport(report, list(registry.problems))
