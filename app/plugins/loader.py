"""Importing a plugin's own Python files: the one place plugin code is loaded.

Guarantees:

* A reference ``relative/file.py:function`` is resolved inside the plugin
  folder (symlinks included) before anything is imported.
* Each plugin file is imported as a module of a private synthetic package per
  folder, plugin version and file version (``_first_sip_plugin_<name>_<hash>``):
  plugins never share module names, never touch ``sys.path``, may use relative
  imports (``from .feeds import ...``) for their own helpers, and a changed
  file is imported afresh.
* A plugin laid out as a Python package (the entry point's folder has an
  ``__init__.py``, as ``src/news_brief/`` in ``crewai create crew "news brief"
  --classic``) may also import its own modules absolutely, by the package's
  name (``from news_brief.crew import NewsBrief``, ``from
  news_brief.tools.custom_tool import MyTool``): while the plugin's files are
  imported, that name resolves to the plugin's private package (the same
  module objects, never a second copy). Only at import time (an import inside
  a function that runs later must be relative), and only when the name is
  not a module installed in the worker (an installed package is never
  shadowed).
* Each file version is imported once per process; imports are serialised, so
  concurrent runs in a threads pool never see a half-imported module.
* Any failure is a :class:`PluginError` naming the file and the reason; an
  import error also names the module that could not be imported and the
  plugin file and line that imported it (a missing package shows as what it
  is, not as a failure of the entry point file).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import PluginError, Problem
from app.plugins.paths import PathEscapeError, resolve_inside

#: Start of every plugin's private package name (how an import error is recognised as the plugin's own).
PRIVATE_PACKAGE_PREFIX = "_first_sip_plugin_"

_lock = threading.Lock()
_loaded: dict[tuple[str, str, str, int], Callable[..., Any]] = {}


def resolve_ref(folder: Path, ref: str) -> tuple[Path, str]:
    """The file (inside ``folder``) and function name of ``relative/file.py:function``."""
    relative, _, function = ref.partition(":")
    try:
        path = resolve_inside(folder, relative)
    except PathEscapeError as exc:
        raise PluginError([Problem(str(folder), ref, str(exc))]) from exc
    if not path.is_file():
        raise PluginError([Problem(str(folder), ref, f"{relative} does not exist")])
    return path, function


def _origin(folder: Path, exc: BaseException) -> str | None:
    """``file:line`` of the innermost plugin frame in ``exc``'s traceback (where the import failed)."""
    root = folder.resolve()
    found = None
    tb = exc.__traceback__
    while tb is not None:
        filename = Path(tb.tb_frame.f_code.co_filename)
        if filename.is_absolute() and filename.resolve().is_relative_to(root):
            found = f"{filename.resolve().relative_to(root)}:{tb.tb_lineno}"
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename:
        target = Path(exc.filename).resolve()
        if target.is_relative_to(root):
            found = f"{target.relative_to(root)}:{exc.lineno}"
    return found


def import_failure(folder: Path, path: Path, exc: BaseException) -> str:
    """Why importing the plugin file ``path`` failed, naming the module and where it was imported."""
    relative = path.relative_to(folder.resolve()) if path.is_relative_to(folder.resolve()) else path.name
    where = _origin(folder, exc)
    at = f" (at {where})" if where else ""
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.startswith(PRIVATE_PACKAGE_PREFIX):
        sibling = exc.name.partition(".")[2] or exc.name
        return f"cannot import {relative}: the plugin has no module {sibling!r}{at}"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return (
            f"cannot import {relative}: module {exc.name!r} is not installed{at}; "
            "list its package in requirements.txt next to the entry point"
        )
    return f"cannot import {relative}: {type(exc).__name__}: {exc}{at}"


def _package_name(name: str, path: Path, version: str, mtime_ns: int) -> str:
    digest = hashlib.sha256(f"{path}|{version}|{mtime_ns}".encode()).hexdigest()[:12]
    return f"{PRIVATE_PACKAGE_PREFIX}{re.sub(r'[^a-z0-9]', '_', name)}_{digest}"


def project_package(folder: Path, path: Path) -> str | None:
    """The name the plugin's own code may import itself by, or None (see the module docstring)."""
    parent = path.parent
    root = folder.resolve()
    if not (parent / "__init__.py").is_file() or not parent.is_relative_to(root) or parent == root:
        return None
    name = parent.name
    if not name.isidentifier() or name in sys.modules:
        return None
    try:
        installed = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return name if installed is None else None


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``alias`` and ``alias.*`` to the same modules under the plugin's private ``package``."""

    def __init__(self, alias: str, package: str) -> None:
        self.alias, self.package = alias, package
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.alias and not fullname.startswith(self.alias + "."):
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> types.ModuleType:
        private = self.package + spec.name[len(self.alias) :]
        module = sys.modules.get(private) or importlib.import_module(private)
        self._specs[private] = getattr(module, "__spec__", None)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # Already run under its private name; the import system just replaced its
        # spec with the alias's: put the real one back.
        module.__spec__ = self._specs.get(module.__name__)


def _exec_with_alias(package: str, alias: str | None, run: Callable[[], None]) -> None:
    if alias is None:
        run()
        return
    finder = _Alias(alias, package)
    sys.meta_path.insert(0, finder)
    try:
        run()
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m == alias or m.startswith(alias + ".")]:
            del sys.modules[name]  # the private names stay; the alias was for import time only


def _import(package: str, path: Path, folder: Path) -> types.ModuleType:
    # A synthetic package whose __path__ is the file's folder: the module and its
    # siblings import as package.<module>.
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
    loader = spec.loader
    _exec_with_alias(package, project_package(folder, path), lambda: loader.exec_module(module))
    return module


def load_callable(
    folder: Path,
    ref: str,
    *,
    name: str | None = None,
    version: str = "",
    resolved: tuple[Path, str] | None = None,
) -> Callable[..., Any]:
    """The function ``ref`` names in the plugin in ``folder`` (see the module docstring).

    ``resolved`` is what :func:`resolve_ref` returned for ``folder`` and ``ref`` earlier
    (a caller that keeps it saves resolving the path again); the file is still stat'ed,
    so a changed file is imported afresh.
    """
    path, function = resolved or resolve_ref(folder, ref)
    name = name or folder.name
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as exc:
        raise PluginError([Problem(str(folder), ref, f"{ref.partition(':')[0]} does not exist")]) from exc
    key = (str(path), function, version, mtime_ns)
    with _lock:
        cached = _loaded.get(key)
        if cached is not None:
            return cached
        package = _package_name(name, path, version, mtime_ns)
        try:
            module = _import(package, path, folder)
        except Exception as exc:
            for loaded in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
                del sys.modules[loaded]
            message = import_failure(folder, path, exc)
            raise PluginError([Problem(str(path), ref, message)]) from exc
        target = getattr(module, function, None)
        if not callable(target):
            raise PluginError([Problem(str(path), ref, f"{path.name} has no callable {function!r}")])
        _loaded[key] = target
        return target  # type: ignore[no-any-return]
