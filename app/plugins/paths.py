"""Confining plugin-supplied paths to the plugin's own folder."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from app.errors import FirstSipError


class PathEscapeError(FirstSipError, ValueError):
    """A plugin-supplied path points outside the plugin folder (a ``ValueError``: bad input)."""


def resolve_inside(folder: Path, relative: str) -> Path:
    """Return ``folder/relative`` resolved, guaranteed to lie inside ``folder``.

    Rejects absolute paths, ``..`` components, backslashes and symlinks that
    lead out of the folder (the check is made on the fully resolved path).
    """
    pure = PurePosixPath(relative)
    if not relative or "\\" in relative or "\x00" in relative:
        raise PathEscapeError(f"{relative!r} is not a plain relative path")
    if pure.is_absolute():
        raise PathEscapeError(f"{relative!r} is absolute; it must be relative to the plugin folder")
    if ".." in pure.parts:
        raise PathEscapeError(f"{relative!r} contains '..'; it must stay inside the plugin folder")
    root = folder.resolve()
    target = (root / pure).resolve()
    if not target.is_relative_to(root):
        raise PathEscapeError(f"{relative!r} resolves outside the plugin folder (symlink?)")
    return target
