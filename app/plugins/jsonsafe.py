"""What a JSON value must be to be stored: the rules PostgreSQL's ``jsonb`` enforces, checked first.

``json.loads`` accepts ``NaN`` and ``Infinity``, Python strings may hold NUL
and lone surrogates, and a value may nest arbitrarily deep. PostgreSQL refuses
all of them, with a traceback that prints the statement. These checks run at
every edge (settings, schemas, ``default_config``) so such a value is refused
with the path that holds it, before anything is written.

Guarantees: :func:`storage_problems` walks a value iteratively (no recursion
limit to hit) and returns every problem as ``(JSON pointer, message)``;
:func:`loads` parses JSON text refusing NaN/Infinity and deep nesting with a
:class:`ValueError`; messages never contain the offending value itself, only
its path and kind, and paths are printable (see :func:`printable`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Deepest nesting accepted in settings, schemas and default_config.
MAX_DEPTH = 64
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates shown as escapes (safe to print)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters (with a note of how much was cut), printable."""
    text = printable(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def pointer(parts: Any) -> str:
    """An RFC 6901 JSON pointer for ``parts`` (``~`` and ``/`` escaped), printable."""
    return printable("".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts))


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (invalid Unicode), which cannot be stored"
    return None


def storage_problems(value: Any, *, max_depth: int = MAX_DEPTH) -> list[tuple[str, str]]:
    """Every reason ``value`` cannot be stored as JSON, as ``(pointer, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) > max_depth:
            problems.append((pointer(path), f"nested deeper than {max_depth} levels"))
            continue
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                problems.append((pointer(path), f"string {problem}"))
        elif isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append(
                    (pointer(path), f"{item} is not a JSON number (NaN and Infinity are refused)")
                )
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    problems.append((pointer(path), f"keys must be strings, got {type(key).__name__}"))
                    continue
                problem = _string_problem(key)
                if problem:
                    problems.append((pointer((*path, key)), f"key {problem}"))
                    continue
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
        else:
            problems.append((pointer(path), f"a {type(item).__name__} is not a JSON value"))
    return sorted(problems)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (NaN and Infinity are refused)")


def loads(text: str | bytes) -> Any:
    """Parse JSON strictly: NaN/Infinity and nesting past :data:`MAX_DEPTH` raise ``ValueError``."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from exc
    deep = [p for p in storage_problems(value) if "nested deeper" in p[1]]
    if deep:
        raise ValueError(f"{deep[0][0] or '/'}: {deep[0][1]}")
    return value
