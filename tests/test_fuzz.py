"""Bad input everywhere: a typed error with a clear message, never a crash, never a damaged row."""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from app.errors import PluginError, SettingsValidationError
from app.plugins.manifest import PluginManifest, parse_manifest
from app.plugins.registry import discover
from app.plugins.settings import validate_settings
from tests.conftest import ROOT, manifest_text

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
VALID = yaml.safe_load(manifest_text("fuzzed"))
DIGEST = discover(ROOT / "plugins").plugins["daily-news-digest"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.text(max_size=400))
def test_any_text_as_manifest(text: str) -> None:
    try:
        result = parse_manifest(text, file="p/plugin.yaml")
    except PluginError as exc:
        assert exc.problems and all(p.file == "p/plugin.yaml" and p.message for p in exc.problems)
    else:
        assert isinstance(result, PluginManifest)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_as_manifest(data: bytes) -> None:
    try:
        parse_manifest(data.decode("utf-8", errors="replace"), file="p/plugin.yaml")
    except PluginError as exc:
        assert str(exc).startswith("p/plugin.yaml")


@FUZZ
@given(
    key=st.sampled_from(
        [*VALID.keys(), "schema_version", "timeout_seconds", "settings_migrator", "surprise"]
    ),
    value=JSON,
    drop=st.booleans(),
)
def test_mutated_valid_manifest(key: str, value: Any, drop: bool) -> None:
    data = dict(VALID)
    if drop:
        data.pop(key, None)
    else:
        data[key] = value
    try:
        manifest = parse_manifest(yaml.safe_dump(data), file="m/plugin.yaml")
    except PluginError as exc:
        assert all(p.key or "YAML" in p.message or "mapping" in p.message for p in exc.problems), exc.problems
    else:
        assert manifest.name == data["name"]


@FUZZ
@given(JSON)
def test_any_json_as_settings(value: Any) -> None:
    try:
        effective = validate_settings(DIGEST.spec, value)
    except SettingsValidationError as exc:
        assert exc.errors and all(isinstance(e.path, str) and e.message for e in exc.errors)
    else:
        assert DIGEST.validator.is_valid(effective)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["topics", "feeds", "frequency", "preferred_time", "max_items", "x"]), JSON
    )
)
def test_settings_near_the_schema(value: dict[str, Any]) -> None:
    try:
        validate_settings(DIGEST.spec, value)
    except SettingsValidationError as exc:
        paths = {e.path.split("/")[1] if e.path else "" for e in exc.errors}
        assert paths <= {*value.keys(), ""}


runner = CliRunner()
WORDS = st.sampled_from(
    ["--set", "--file", "--json", "--wait", "--timeout", "=", "a=b", "topics=[]", "x", "-1", ""]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(["configure", "run", "runs", "users", "plugins", "dlq", "status"]),
    args=st.lists(WORDS | st.text(max_size=12), max_size=5),
)
def test_cli_arguments_never_crash(db, redis_client, command: str, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    from app.cli import cli

    result = runner.invoke(cli, [command, *args])
    # Typer/click usage errors exit 2, ours exit 1 or 2; an uncaught exception would be a bug.
    assert result.exit_code in (0, 1, 2), (command, args, result.output)
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=JSON)
def test_configure_never_damages_stored_settings(db, redis_client, value: Any) -> None:  # type: ignore[no-untyped-def]
    from app import api
    from app.db.engine import session_scope
    from app.plugins.sync import sync_plugins
    from tests.conftest import unique_email

    with session_scope() as session:
        sync_plugins(session, discover(ROOT / "plugins"))
    user = api.create_user(unique_email())
    api.configure_plugin(user.id, "daily-news-digest", {"topics": ["science"]})
    try:
        api.configure_plugin(
            user.id, "daily-news-digest", value if isinstance(value, dict) else {"topics": value}
        )
    except SettingsValidationError:
        assert api.get_config(user.id, "daily-news-digest").settings == {"topics": ["science"]}
    else:
        stored = api.get_config(user.id, "daily-news-digest").settings
        assert json.dumps(stored, sort_keys=True)
