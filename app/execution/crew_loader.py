"""Finding a plugin on this worker's disk and importing its crew entry point.

Guarantees:

* :func:`find_plugin` loads the plugin from ``PLUGINS_DIR`` as it is on disk
  now (current manifest and schema), or raises :class:`PermanentError`; the
  parsed plugin is reused until one of its files changes (mtime).
* :func:`load_entry_point` imports the entry point file by path, confined to
  the plugin folder, as a module of a private package per plugin folder and
  version (``_first_sip_plugin_<name>_<hash>``): plugins never share module
  names, never touch ``sys.path``, and may use relative imports (``from .feeds
  import ...``) for their own helper modules. Each version is imported once
  per process; importing is serialised so concurrent runs in a threads pool
  never see a half-imported module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import PermanentError, PluginError
from app.plugins.manifest import MANIFEST_FILE
from app.plugins.paths import PathEscapeError, resolve_inside
from app.plugins.registry import Plugin, load_plugin

_import_lock = threading.Lock()
_entry_points: dict[tuple[str, str, int], Callable[..., Any]] = {}


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
    relative, _, function = plugin.manifest.entry_point.partition(":")
    try:
        path = resolve_inside(plugin.folder, relative)
    except PathEscapeError as exc:
        raise PermanentError(f"plugin {plugin.name}: entry_point: {exc}") from exc
    if not path.is_file():
        raise PermanentError(f"plugin {plugin.name}: entry_point file {relative} does not exist")
    return path, function


def _package_name(plugin: Plugin, path: Path, mtime_ns: int) -> str:
    digest = hashlib.sha256(f"{path}|{plugin.manifest.version}|{mtime_ns}".encode()).hexdigest()[:12]
    return f"_first_sip_plugin_{re.sub(r'[^a-z0-9]', '_', plugin.name)}_{digest}"


def _import(package: str, path: Path) -> types.ModuleType:
    # A synthetic package whose __path__ is the entry point's folder: the
    # entry module and its siblings import as package.<module>.
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = [str(path.parent)]
        pkg.__package__ = package
        sys.modules[package] = pkg
    name = f"{package}.{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_entry_point(plugin: Plugin) -> Callable[..., Any]:
    """The plugin's ``build_crew`` callable. Import errors are a :class:`PermanentError`."""
    path, function = entry_point_file(plugin)
    mtime_ns = path.stat().st_mtime_ns
    key = (str(path), plugin.manifest.version, mtime_ns)
    cached = _entry_points.get(key)
    if cached is not None:
        return cached
    with _import_lock:
        cached = _entry_points.get(key)
        if cached is not None:
            return cached
        package = _package_name(plugin, path, mtime_ns)
        try:
            module = _import(package, path)
        except Exception as exc:
            for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
                del sys.modules[name]
            raise PermanentError(
                f"plugin {plugin.name}: cannot import {path.name}: {type(exc).__name__}: {exc}"
            ) from exc
        target: Callable[..., Any] | None = getattr(module, function, None)
        if not callable(target):
            raise PermanentError(f"plugin {plugin.name}: {path.name} has no callable {function!r}")
        _entry_points[key] = target
        return target
