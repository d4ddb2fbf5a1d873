"""A deterministic JSON value that validates against a JSON schema: the offline model's structured answers.

When a task asks for structured output (``output_json``, ``output_pydantic``,
``response_model``) or a tool needs arguments, the offline model answers with
:func:`instance`. Guarantees: a pure function of the schema and the texts it
is given; the value validates against schemas made of ``type``
(object/array/string/integer/number/boolean/null), ``properties`` and
``required`` (every property is filled), ``items``, ``enum``, ``const``,
``default``, ``$ref``/``$defs``, ``anyOf``/``oneOf``/``allOf``, the usual
length and range bounds and the ``date``, ``date-time``, ``email`` and
``uri`` formats. String values are the given texts, in order (the offline
model passes sentences of the task it is answering), falling back to the
property's title. ``pattern`` is not solved: a string with a pattern gets
its ``default`` or ``examples[0]`` if the schema has one.
"""

from __future__ import annotations

import math
from typing import Any

_FORMATS = {
    "date": "2026-01-01",
    "date-time": "2026-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "offline@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
MAX_DEPTH = 12


class _Texts:
    """Cycles through the given texts; deterministic."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = [t for t in texts if t.strip()]
        self._used = 0

    def next(self, fallback: str) -> str:
        if not self._texts:
            return fallback
        text = self._texts[self._used % len(self._texts)]
        self._used += 1
        return text


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while "$ref" in schema and seen < MAX_DEPTH:
        ref = str(schema["$ref"])
        target: Any = root
        for part in ref.lstrip("#/").split("/") if ref.startswith("#") else []:
            target = (
                target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
            )
        schema = {
            **(target if isinstance(target, dict) else {}),
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
        seen += 1
    return schema


def _string(schema: dict[str, Any], texts: _Texts, name: str) -> str:
    if "format" in schema and schema["format"] in _FORMATS:
        return _FORMATS[schema["format"]]
    if "pattern" in schema:
        examples = schema.get("examples") or []
        return str(examples[0]) if examples else name
    text = texts.next(str(schema.get("title") or name or "text"))
    minimum, maximum = int(schema.get("minLength", 0)), schema.get("maxLength")
    if len(text) < minimum:
        text = (text + " ") * (minimum // max(len(text) + 1, 1) + 1)
    if maximum is not None:
        text = text[: int(maximum)]
    return text


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    """A number inside the schema's bounds (inclusive or exclusive): the middle when both are set."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low_x, high_x = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if integer:
        lows: list[int] = [math.ceil(float(low))] if low is not None else []
        lows += [math.floor(float(low_x)) + 1] if low_x is not None else []
        highs: list[int] = [math.floor(float(high))] if high is not None else []
        highs += [math.ceil(float(high_x)) - 1] if high_x is not None else []
        if lows and highs:
            return (max(lows) + min(highs)) // 2
        if lows:
            return max(lows)
        return min(1, min(highs)) if highs else 1
    bottoms = [float(v) for v in (low, low_x) if v is not None]
    tops = [float(v) for v in (high, high_x) if v is not None]
    if bottoms and tops:
        return (max(bottoms) + min(tops)) / 2
    if bottoms:
        return max(bottoms) + 1.0
    if tops:
        return min(tops) - 1.0
    return 1.0


def _object(schema: dict[str, Any], root: dict[str, Any], texts: _Texts, depth: int) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    out = {}
    for key, sub in properties.items():
        out[key] = _value(sub if isinstance(sub, dict) else {}, root, texts, depth + 1, str(key))
    for key in schema.get("required") or []:
        if key not in out:
            out[key] = texts.next(str(key))
    return out


def _array(schema: dict[str, Any], root: dict[str, Any], texts: _Texts, depth: int, name: str) -> list[Any]:
    raw = schema.get("items")
    items: dict[str, Any] = raw if isinstance(raw, dict) else {}
    count = max(int(schema.get("minItems", 0)), min(3, int(schema.get("maxItems", 3))))
    values = [_value(items, root, texts, depth + 1, name) for _ in range(count)]
    if schema.get("uniqueItems") and len({repr(v) for v in values}) < len(values):
        values = values[:1]
    return values


def _value(schema: dict[str, Any], root: dict[str, Any], texts: _Texts, depth: int, name: str) -> Any:
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or [] if isinstance(o, dict)]
        if options:
            useful = [o for o in options if _resolve(o, root).get("type") != "null"] or options
            return _value(useful[0], root, texts, depth, name)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root))
        return _value(merged, root, texts, depth, name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if depth > MAX_DEPTH:
        return None if kind in (None, "null") else _value({"type": "string"}, root, texts, 0, name)
    if kind == "object" or (kind is None and "properties" in schema):
        return _object(schema, root, texts, depth)
    if kind == "array":
        return _array(schema, root, texts, depth, name)
    if kind == "integer":
        return _number(schema, True)
    if kind == "number":
        return _number(schema, False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, texts, name)


def instance(schema: dict[str, Any], texts: list[str] | None = None) -> Any:
    """A value valid against ``schema`` whose strings are ``texts`` in order (see the module docstring)."""
    return _value(schema, schema, _Texts(list(texts or [])), 0, str(schema.get("title") or "value"))
