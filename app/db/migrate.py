"""Running Alembic from code (release step, tests, demo) with the same configuration as the CLI.

Alembic's configuration is the ``[tool.alembic]`` table of the project's
``pyproject.toml`` (so plain ``alembic upgrade head`` works at the repository
root); the database URL always comes from settings, never from that file.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.config import get_settings

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """The folder holding ``pyproject.toml`` and ``migrations/``.

    A checkout (editable install) has it next to the package; an image that
    installed the package into site-packages runs from the project folder.
    """
    for candidate in (_PACKAGE_ROOT, Path.cwd()):
        if (candidate / "migrations" / "env.py").is_file() and (candidate / "pyproject.toml").is_file():
            return candidate
    raise FileNotFoundError(
        f"cannot find migrations/ and pyproject.toml next to {_PACKAGE_ROOT} or in {Path.cwd()}"
    )


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config from ``pyproject.toml``, bound to ``database_url`` (default: settings)."""
    cfg = Config(toml_file=str(project_root() / "pyproject.toml"))
    cfg.attributes["database_url"] = database_url or get_settings().database_url
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Bring the database to ``revision``; idempotent."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | None = None, revision: str = "base") -> None:
    """Take the database down to ``revision``."""
    command.downgrade(alembic_config(database_url), revision)
