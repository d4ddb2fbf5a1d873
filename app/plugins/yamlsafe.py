"""A strict YAML loader for every YAML file a plugin ships (``plugin.yaml``, crew files).

PyYAML's ``safe_load`` is safe from code execution but not from surprises:
it reads YAML 1.1, where ``1:00`` is the integer 60 (sexagesimal), ``on``,
``yes`` and ``no`` are booleans and ``0777`` is octal 511; duplicate keys
silently keep the last value; ``!!binary`` and timestamps produce values JSON
cannot hold; and a 1 KB document of nested aliases expands to gigabytes.

Guarantees of :func:`load`:

* Plain scalars resolve as in the YAML 1.2 core schema, minus its traps:
  ``null``/``~``/empty, ``true``/``false`` (three spellings each), decimal
  integers without leading zeros, ``0x``/``0o`` integers, decimal floats and
  ``.inf``/``.nan`` (which JSON checks reject later with their key). Anything
  else — ``1:00``, ``on``, ``yes``, ``0777``, ``2024-01-01``, ``1_000`` — is a string.
* Only the core tags are accepted (``!!str``, ``!!int``, ``!!float``,
  ``!!bool``, ``!!null``, ``!!seq``, ``!!map``); ``!!binary``,
  ``!!timestamp``, ``!!set`` and the rest are errors.
* Aliases are refused (no alias bomb can expand); anchors alone are harmless.
* A duplicate key in any mapping is an error naming the key and its line.
* Every failure is a :class:`YamlError` with a line (when known) and a message;
  a document nested deeper than :data:`MAX_DEPTH` is one too.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from app.errors import FirstSipError

#: Deeper documents are refused before PyYAML's recursive composer could overflow the stack.
MAX_DEPTH = 64

_CORE = "tag:yaml.org,2002:"
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9]*)|0x[0-9a-fA-F]+|0o[0-7]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+|\.[0-9]+[eE][-+]?[0-9]+)"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class YamlError(FirstSipError, ValueError):
    """A YAML document this loader refuses; ``line`` is 1-based when known, ``key`` names a key."""

    def __init__(self, message: str, *, line: int | None = None, key: str = "") -> None:
        self.message, self.line, self.key = message, line, key
        super().__init__(f"line {line}: {message}" if line is not None else message)


def _line(node_or_mark: Any) -> int | None:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return mark.line + 1 if mark is not None and hasattr(mark, "line") else None


class _CoreResolver(BaseResolver):
    """YAML 1.2 core-schema resolution of plain scalars (see the module docstring)."""

    def resolve(self, kind: type[Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode and implicit[0]:
            for tag, pattern in (("null", _NULL), ("bool", _BOOL), ("int", _INT), ("float", _FLOAT)):
                if pattern.match(value):
                    return _CORE + tag
        return str(super().resolve(kind, value, implicit))  # type: ignore[no-untyped-call]


class _StrictComposer(Composer):
    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):  # type: ignore[attr-defined]
            event = self.get_event()  # type: ignore[attr-defined]
            raise YamlError(
                f"aliases (*{event.anchor}) are not allowed: write the value out",
                line=_line(event.start_mark),
            )
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[attr-defined]
                raise YamlError(f"nested deeper than {MAX_DEPTH} levels", line=_line(event.start_mark))
            return super().compose_node(parent, index)  # type: ignore[no-untyped-call,no-any-return]
        finally:
            self._depth -= 1


class _StrictConstructor(SafeConstructor):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):
            raise YamlError(f"expected a mapping, found {node.id}", line=_line(node))
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, (list, dict)):
                raise YamlError("a mapping key must be a scalar", line=_line(key_node))
            if key in mapping:
                raise YamlError(f"duplicate key {key!r}", line=_line(key_node), key=str(key))
            mapping[key] = self.construct_object(value_node, deep=deep)  # type: ignore[no-untyped-call]
        return mapping

    def construct_yaml_map(self, node: MappingNode) -> Any:
        data: dict[Any, Any] = {}
        yield data
        data.update(self.construct_mapping(node))

    def construct_yaml_int(self, node: ScalarNode) -> int:
        value = str(self.construct_scalar(node))
        if not _INT.match(value):
            raise YamlError(f"{value!r} is not an integer (decimal, 0x or 0o)", line=_line(node))
        return int(value, 0)

    def construct_yaml_float(self, node: ScalarNode) -> float:
        value = str(self.construct_scalar(node))
        if not (_FLOAT.match(value) or _INT.match(value)):
            raise YamlError(f"{value!r} is not a number", line=_line(node))
        lowered = value.lower()
        if lowered.endswith(".inf"):
            return float("-inf") if lowered.startswith("-") else float("inf")
        if lowered == ".nan":
            return float("nan")
        return float(int(value, 0)) if _INT.match(value) else float(value)

    def construct_yaml_bool(self, node: ScalarNode) -> bool:
        value = str(self.construct_scalar(node))
        if not _BOOL.match(value):
            raise YamlError(f"{value!r} is not a boolean (true or false)", line=_line(node))
        return value.lower() == "true"

    def construct_yaml_null(self, node: ScalarNode) -> None:
        value = str(self.construct_scalar(node))
        if not _NULL.match(value):
            raise YamlError(f"{value!r} is not null", line=_line(node))

    def construct_undefined(self, node: Node) -> Any:
        raise YamlError(
            f"tag {node.tag} is not allowed: only strings, numbers, booleans, null, lists and mappings",
            line=_line(node),
        )


# Only the core tags; everything else (binary, timestamp, set, omap, pairs, python/*) is refused.
_StrictConstructor.yaml_constructors = {
    _CORE + "null": _StrictConstructor.construct_yaml_null,
    _CORE + "bool": _StrictConstructor.construct_yaml_bool,
    _CORE + "int": _StrictConstructor.construct_yaml_int,
    _CORE + "float": _StrictConstructor.construct_yaml_float,
    _CORE + "str": SafeConstructor.construct_yaml_str,
    _CORE + "seq": SafeConstructor.construct_yaml_seq,
    _CORE + "map": _StrictConstructor.construct_yaml_map,
    None: _StrictConstructor.construct_undefined,
}
_StrictConstructor.yaml_multi_constructors = {}


class StrictLoader(Reader, Scanner, Parser, _StrictComposer, _StrictConstructor, _CoreResolver):
    """PyYAML loader with the rules of the module docstring."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)  # type: ignore[no-untyped-call]
        Scanner.__init__(self)  # type: ignore[no-untyped-call]
        Parser.__init__(self)  # type: ignore[no-untyped-call]
        _StrictComposer.__init__(self)  # type: ignore[no-untyped-call]
        _StrictConstructor.__init__(self)  # type: ignore[no-untyped-call]
        _CoreResolver.__init__(self)  # type: ignore[no-untyped-call]


def load(text: str) -> Any:
    """Parse one YAML document strictly (see the module docstring); raises :class:`YamlError`."""
    loader: StrictLoader | None = None
    try:
        loader = StrictLoader(text)
        return loader.get_single_data()  # type: ignore[no-untyped-call]
    except YamlError:
        raise
    except ConstructorError as exc:
        raise YamlError(str(exc.problem or exc), line=_line(exc.problem_mark)) from exc
    except yaml.MarkedYAMLError as exc:
        raise YamlError(str(exc.problem or exc), line=_line(exc.problem_mark)) from exc
    except yaml.reader.ReaderError as exc:
        raise YamlError(f"character #x{exc.character:04x} is not allowed in YAML") from exc
    except yaml.YAMLError as exc:
        raise YamlError(str(exc)) from exc
    except RecursionError as exc:  # the scanner's own recursion, on pathological flow nesting
        raise YamlError(f"nested deeper than {MAX_DEPTH} levels") from exc
    finally:
        if loader is not None:
            loader.dispose()  # type: ignore[no-untyped-call]
