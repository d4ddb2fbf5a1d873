"""Parsing ``--set key=value`` and ``--file settings.json`` into a settings object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.plugins import jsonsafe


def parse_settings(pairs: list[str] | None, file: Path | None) -> dict[str, Any]:
    """Settings from a JSON file overlaid with ``key=value`` pairs.

    A value is read as JSON when it parses (``max_items=3``,
    ``topics=["science"]``), else as a plain string (``preferred_time=07:30``;
    ``NaN`` and ``Infinity`` are not JSON, so they are strings too). Raises
    ``ValueError`` naming the bad argument or file; a value nested deeper than
    :data:`app.plugins.jsonsafe.MAX_DEPTH` is refused, never read as a string.
    """
    settings: dict[str, Any] = {}
    if file is not None:
        try:
            loaded = jsonsafe.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{file}: cannot read: {exc.strerror or exc}") from exc
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, too deep
            raise ValueError(f"{file}: not valid JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: settings must be a JSON object, got {type(loaded).__name__}")
        settings.update(loaded)
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: expected key=value")
        try:
            settings[key] = jsonsafe.loads(raw)
        except json.JSONDecodeError:
            settings[key] = raw
        except ValueError as exc:
            if "nested deeper" in str(exc):
                raise ValueError(f"--set {key}: {exc}") from exc
            settings[key] = raw  # NaN / Infinity: not JSON, so the plain string
    return settings
