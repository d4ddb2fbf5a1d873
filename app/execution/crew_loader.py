"""Finding a plugin on this worker's disk and importing its crew entry point.

Guarantees:

* :func:`find_plugin` loads the plugin from ``PLUGINS_DIR`` as it is on disk
  now (current manifest and schema), or raises :class:`PermanentError`; the
  parsed plugin is reused until one of its files changes (mtime).
* :func:`load_entry_point` imports the entry point through
  :func:`app.plugins.loader.load_callable` (confined to the plugin folder, a
  private package per plugin version, imported once per file version) and
  turns a failure into a :class:`PermanentError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import PermanentError, PluginError
from app.plugins.loader import load_callable, resolve_ref
from app.plugins.manifest import MANIFEST_FILE
from app.plugins.registry import Plugin, load_plugin


def find_plugin(name: str, plugins_dir: Path | str) -> Plugin:
    """The plugin called ``name`` under ``plugins_dir`` (``os.pathsep``-separated folders)."""
    import os

    folders = [Path(root) / name for root in str(plugins_dir).split(os.pathsep) if root]
    found = [f for f in folders if (f / MANIFEST_FILE).is_file()]
    if not found:
        raise PermanentError(f"plugin {name!r} is not installed on this worker (PLUGINS_DIR={plugins_dir})")
    if len(found) > 1:
        raise PermanentError(f"plugin {name!r} is installed twice: {', '.join(map(str, found))}")
    try:
        return _load_cached(found[0])
    except PluginError as exc:
        raise PermanentError(f"plugin {name!r} is invalid on this worker: {exc}") from exc


_plugins: dict[Path, tuple[tuple[int, int], Plugin]] = {}


def _stamp(folder: Path, schema_path: str) -> tuple[int, int]:
    # Manifest and schema are what load_plugin reads; a changed file changes its mtime.
    return (folder / MANIFEST_FILE).stat().st_mtime_ns, (folder / schema_path).stat().st_mtime_ns


def _load_cached(folder: Path) -> Plugin:
    """``load_plugin`` once per version of the files: a run re-reads nothing that did not change."""
    cached = _plugins.get(folder)
    if cached is not None:
        try:
            if _stamp(folder, cached[1].manifest.settings_schema_path) == cached[0]:
                return cached[1]
        except OSError:
            pass  # a file vanished: load_plugin reports it properly
    plugin = load_plugin(folder)
    _plugins[folder] = (_stamp(folder, plugin.manifest.settings_schema_path), plugin)
    return plugin


def entry_point_file(plugin: Plugin) -> tuple[Path, str]:
    """The resolved entry point file (inside the plugin folder) and the callable's name."""
    try:
        return resolve_ref(plugin.folder, plugin.manifest.entry_point)
    except PluginError as exc:
        raise PermanentError(f"plugin {plugin.name}: entry_point: {exc.problems[0].message}") from exc


def load_entry_point(plugin: Plugin) -> Callable[..., Any]:
    """The plugin's ``build_crew`` callable. Import errors are a :class:`PermanentError`."""
    try:
        return load_callable(
            plugin.folder, plugin.manifest.entry_point, name=plugin.name, version=plugin.manifest.version
        )
    except PluginError as exc:
        raise PermanentError(f"plugin {plugin.name}: {exc.problems[0].message}") from exc
