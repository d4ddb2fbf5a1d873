"""Finding a plugin on this worker's disk and importing its crew entry point.

Guarantees:

* :func:`find_plugin` loads the plugin from ``PLUGINS_DIR`` as it is on disk
  now (current manifest and schema), or raises :class:`PermanentError`; the
  parsed plugin is reused until one of its files changes (mtime).
* :func:`entry_point_file` resolves the entry point inside the plugin folder
  once per loaded plugin.
* :func:`load_entry_point` imports the entry point through
  :func:`app.plugins.loader.load_callable` (confined to the plugin folder, a
  private package per plugin version, imported once per file version) and
  turns a failure into a :class:`PermanentError`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import PermanentError, PluginError
from app.plugins.loader import load_callable, resolve_ref
from app.plugins.manifest import MANIFEST_FILE
from app.plugins.registry import Plugin, load_plugin


def find_plugin(name: str, plugins_dir: Path | str) -> Plugin:
    """The plugin called ``name`` under ``plugins_dir`` (``os.pathsep``-separated folders)."""
    # os.stat on strings, not pathlib: this runs for every run, and a stat is all it needs.
    found: list[tuple[str, int]] = []
    for root in str(plugins_dir).split(os.pathsep):
        if not root:
            continue
        folder = os.path.join(root, name)
        try:
            info = os.stat(os.path.join(folder, MANIFEST_FILE))
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((folder, info.st_mtime_ns))
    if not found:
        raise PermanentError(f"plugin {name!r} is not installed on this worker (PLUGINS_DIR={plugins_dir})")
    if len(found) > 1:
        raise PermanentError(f"plugin {name!r} is installed twice: {', '.join(f for f, _ in found)}")
    try:
        return _load_cached(Path(found[0][0]), found[0][1])
    except PluginError as exc:
        raise PermanentError(f"plugin {name!r} is invalid on this worker: {exc}") from exc


_plugins: dict[Path, tuple[tuple[int, int], Plugin]] = {}


def _stamp(folder: Path, schema_path: str, manifest_mtime: int | None = None) -> tuple[int, int]:
    # Manifest and schema are what load_plugin reads; a changed file changes its mtime.
    if manifest_mtime is None:
        manifest_mtime = os.stat(os.path.join(folder, MANIFEST_FILE)).st_mtime_ns
    return manifest_mtime, os.stat(os.path.join(folder, schema_path)).st_mtime_ns


def _load_cached(folder: Path, manifest_mtime: int | None = None) -> Plugin:
    """``load_plugin`` once per version of the files: a run re-reads nothing that did not change."""
    cached = _plugins.get(folder)
    if cached is not None:
        try:
            if _stamp(folder, cached[1].manifest.settings_schema_path, manifest_mtime) == cached[0]:
                return cached[1]
        except OSError:
            pass  # a file vanished: load_plugin reports it properly
    plugin = load_plugin(folder)
    _plugins[folder] = (_stamp(folder, plugin.manifest.settings_schema_path), plugin)
    return plugin


_entry_files: dict[tuple[Path, str], tuple[Plugin, tuple[Path, str]]] = {}


def entry_point_file(plugin: Plugin) -> tuple[Path, str]:
    """The resolved entry point file (inside the plugin folder) and the callable's name.

    Resolved once per loaded plugin (again after :func:`find_plugin` reloads it): resolving
    a path symlink by symlink costs more than the rest of a no-op run's crew thread.
    """
    key = (plugin.folder, plugin.manifest.entry_point)
    cached = _entry_files.get(key)
    if cached is not None and cached[0] is plugin:
        return cached[1]
    try:
        resolved = resolve_ref(plugin.folder, plugin.manifest.entry_point)
    except PluginError as exc:
        raise PermanentError(f"plugin {plugin.name}: entry_point: {exc.problems[0].message}") from exc
    _entry_files[key] = (plugin, resolved)
    return resolved


def load_entry_point(plugin: Plugin) -> Callable[..., Any]:
    """The plugin's ``build_crew`` callable. Import errors are a :class:`PermanentError`."""
    try:
        return load_callable(
            plugin.folder,
            plugin.manifest.entry_point,
            name=plugin.name,
            version=plugin.manifest.version,
            resolved=entry_point_file(plugin),
        )
    except PluginError as exc:
        raise PermanentError(f"plugin {plugin.name}: {exc.problems[0].message}") from exc
