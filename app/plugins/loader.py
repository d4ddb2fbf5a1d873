"""Loading a callable from a plugin's own files (``path/inside.py:function``).

Guarantees: the file is resolved inside the plugin folder (symlinks included);
each plugin file gets its own module name, so two plugins' ``main.py`` never
collide in ``sys.modules``; a failure to load is a :class:`PluginError`
naming the plugin, the reference and the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from app.errors import PluginError, Problem
from app.plugins.paths import PathEscapeError, resolve_inside


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return f"first_sip_plugin_{path.stem}_{digest}"


def load_module(folder: Path, relative: str) -> ModuleType:
    """Import ``folder/relative`` as a uniquely named module (cached per file)."""
    try:
        path = resolve_inside(folder, relative)
    except PathEscapeError as exc:
        raise PluginError([Problem(str(folder), relative, str(exc))]) from exc
    name = _module_name(path)
    cached = sys.modules.get(name)
    if cached is not None:
        return cached
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError([Problem(str(path), "", "not an importable Python file")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise PluginError([Problem(str(path), "", f"import failed: {type(exc).__name__}: {exc}")]) from exc
    return module


def load_callable(folder: Path, ref: str) -> Callable[..., Any]:
    """The function named by ``ref`` (``relative/file.py:function``) in the plugin folder."""
    relative, _, attr = ref.partition(":")
    module = load_module(folder, relative)
    func = getattr(module, attr, None)
    if not callable(func):
        raise PluginError([Problem(str(folder / relative), attr, f"{ref!r} does not name a function")])
    return func  # type: ignore[no-any-return]
