"""One error tree: every exception class defined under ``app/`` derives from ``FirstSipError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import app
from app.errors import FirstSipError


def _app_modules() -> list[str]:
    # __main__ runs the command line when imported.
    return sorted(
        info.name
        for info in pkgutil.walk_packages(app.__path__, prefix="app.")
        if not info.name.endswith(".__main__")
    )


def test_every_exception_defined_in_app_derives_from_first_sip_error() -> None:
    defined: list[type[BaseException]] = []
    for name in _app_modules():
        module = importlib.import_module(name)
        defined.extend(
            obj
            for _, obj in inspect.getmembers(module, inspect.isclass)
            if obj.__module__ == name and issubclass(obj, BaseException)
        )
    assert len(defined) > 20  # the walk found the tree, not an empty package
    outside = sorted(
        f"{cls.__module__}.{cls.__qualname__}" for cls in defined if not issubclass(cls, FirstSipError)
    )
    assert outside == []


def test_errors_callers_catch_as_value_errors_still_are() -> None:
    from app.plugins.paths import PathEscapeError
    from app.plugins.yamlsafe import YamlError
    from app.scheduling import ScheduleError

    for cls in (PathEscapeError, YamlError, ScheduleError):
        assert issubclass(cls, FirstSipError) and issubclass(cls, ValueError), cls
