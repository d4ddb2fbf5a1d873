"""The ``plugin.yaml`` manifest: a strict model and its parser.

Guarantees: :func:`load_manifest` either returns a fully valid
:class:`PluginManifest` or raises :class:`PluginError` listing every problem,
each naming the file, the key and (where YAML knows it) the line. Unknown keys
are errors, types are not coerced, and the plugin name is a safe token because
it becomes part of Redis keys. The YAML is read strictly
(:mod:`app.plugins.yamlsafe`): duplicate keys, aliases, non-core tags are
errors, and YAML 1.1 readings (``1:00`` as 60, ``yes`` as true, ``0777`` as
octal) do not happen: such values stay strings, so a key that wants a number
reports a type error. Every string, key or value, is one PostgreSQL can store
(no NUL, no lone surrogate: :mod:`app.plugins.jsonsafe`), so what validates
also syncs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.errors import PluginError, Problem
from app.plugins import jsonsafe, yamlsafe
from app.plugins.names import (
    DEFAULT_RUNS_QUEUE,
    PLUGIN_NAME_RE,
    PLUGIN_NAME_RULE,
    QUEUE_NAME_RE,
    SCHEDULER_QUEUE,
)

MANIFEST_FILE = "plugin.yaml"
# Semantic Versioning 2.0.0, the official regular expression.
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# ``relative/file.py:callable`` — the file is resolved inside the plugin folder.
CALLABLE_REF_RE = re.compile(r"^[^:\s]+\.py:[A-Za-z_][A-Za-z0-9_]*$")
# An entry point: a function or @CrewBase class (``file.py:Name``), or a CrewAI JSON crew file.
ENTRY_POINT_RE = re.compile(r"^(?:[^:\s]+\.py:[A-Za-z_][A-Za-z0-9_]*|[^:\s]+\.jsonc?)$")

#: Manifest format versions this framework understands.
SUPPORTED_SCHEMA_VERSIONS = ("v1",)
#: What a plugin may declare it can do. ``scheduled`` makes it eligible for the beat.
Capability = Literal["briefing", "scheduled", "manual"]
#: Problems a completed crew may have that the plugin wants to fail its run instead of being noted.
FailOn = Literal["tool_errors", "output_validation"]


class PluginManifest(BaseModel):
    """A parsed, valid ``plugin.yaml``. Immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(min_length=1)
    # Lengths are the database columns' (app/db/models.py): what validate accepts, sync can store.
    description: str = Field(min_length=1, max_length=10_000)
    owner: str = Field(min_length=1, max_length=200)
    version: str = Field(max_length=100)
    schema_version: str = "v1"
    capabilities: list[Capability] = Field(default_factory=list)
    default_config: dict[str, Any] = Field(default_factory=dict)
    settings_schema_path: str = "settings.schema.json"
    #: ``crew/main.py:build_crew`` (a function), ``crew/crew.py:MyCrew`` (a @CrewBase class)
    #: or ``crew/crew.jsonc`` (a CrewAI JSON crew): what builds the crew (worker only).
    entry_point: str
    #: Optional ``file.py:function`` that upgrades settings from an older plugin version.
    settings_migrator: str | None = None
    #: Hard time limit for one run, in seconds (capped by MAX_RUN_TIMEOUT_SECONDS).
    timeout_seconds: int | None = Field(default=None, ge=1, le=24 * 3600)
    #: Fail a run whose tools raised or whose structured output did not validate
    #: (otherwise the run completes and its report lists them).
    fail_on: list[FailOn] = Field(default_factory=list)
    #: At most this many runs of the plugin in flight across the whole cluster (None: no cap).
    #: Operators override it with FIRST_SIP_MAX_CONCURRENCY.
    max_concurrency: int | None = Field(default=None, ge=1, le=100_000)
    #: The Celery queue its runs go to, so a slow plugin can have workers of its own.
    queue: str = DEFAULT_RUNS_QUEUE

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not PLUGIN_NAME_RE.fullmatch(value):
            raise ValueError(f"must match {PLUGIN_NAME_RE.pattern} ({PLUGIN_NAME_RULE})")
        return value

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not SEMVER_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return value

    @field_validator("schema_version")
    @classmethod
    def _known_schema_version(cls, value: str) -> str:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(
                f"unknown schema_version {value!r}; supported: {', '.join(SUPPORTED_SCHEMA_VERSIONS)}"
            )
        return value

    @field_validator("entry_point")
    @classmethod
    def _entry_point(cls, value: str) -> str:
        if not ENTRY_POINT_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} must look like 'relative/path.py:build_crew', 'relative/path.py:MyCrew' "
                "or 'relative/crew.jsonc'"
            )
        return value

    @field_validator("settings_migrator")
    @classmethod
    def _migrator(cls, value: str | None) -> str | None:
        if value is not None and not CALLABLE_REF_RE.fullmatch(value):
            raise ValueError(f"{value!r} must look like 'relative/path.py:function'")
        return value

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not QUEUE_NAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} must match {QUEUE_NAME_RE.pattern} (lower-case letters, digits, . _ -)"
            )
        if value == SCHEDULER_QUEUE:
            raise ValueError(f"{value!r} is the scheduler's own queue; pick another name")
        return value

    @property
    def is_scheduled(self) -> bool:
        """True when the plugin may be run by the scheduler."""
        return "scheduled" in self.capabilities


def _key_lines(text: str) -> dict[str, int]:
    """Map each top-level key of a YAML mapping to its 1-based line, best effort."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {
        str(key.value): key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)
    }


def _validation_problems(file: str, exc: ValidationError, lines: dict[str, int]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        key = ".".join(loc)
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        elif err["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append(Problem(file=file, key=key, message=message, line=lines.get(loc[0])))
    return problems


def parse_manifest(text: str, *, file: str) -> PluginManifest:
    """Parse manifest ``text`` (named ``file`` in errors) into a valid manifest.

    Raises :class:`PluginError` with every problem found.
    """
    try:
        data = yamlsafe.load(text)
    except yamlsafe.YamlError as exc:
        raise PluginError([Problem(file, exc.key, f"malformed YAML: {exc.message}", exc.line)]) from exc
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise PluginError([Problem(file, "", f"must be a YAML mapping, got {kind}")])
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise PluginError([Problem(file, str(k), "keys must be strings") for k in bad_keys])
    stored = jsonsafe.storage_problems(data)
    if stored:
        # Every manifest string is stored (plugins table): NUL or a lone surrogate is this
        # plugin's problem here, not PostgreSQL's at sync.
        lines = _key_lines(text)
        raise PluginError(
            [
                Problem(file, where[1:].replace("/", "."), message, lines.get(where[1:].split("/")[0]))
                for where, message in stored
            ]
        )
    try:
        return PluginManifest.model_validate(data)
    except ValidationError as exc:
        raise PluginError(_validation_problems(file, exc, _key_lines(text))) from exc


def load_manifest(folder: Path) -> PluginManifest:
    """Read and parse ``folder/plugin.yaml``; the name must equal the folder name."""
    path = folder / MANIFEST_FILE
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError([Problem(file, "", f"cannot read: {exc}")]) from exc
    manifest = parse_manifest(text, file=file)
    if manifest.name != folder.name:
        line = _key_lines(text).get("name")
        raise PluginError(
            [Problem(file, "name", f"{manifest.name!r} must equal the folder name {folder.name!r}", line)]
        )
    return manifest
